"""Datasets and batches: the datasets the scripts know (CIFAR, ImageNet folders, the embedded
digits), the stratified split, image checks, and the batch sources that feed the engine (resident
tensors, DataLoader workers, GPU JPEG decoding).

Imports ``files`` and ``errors``; called by ``train`` and the stages.
"""
