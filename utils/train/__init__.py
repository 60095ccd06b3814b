"""The training engine both training stages run on: devices and precisions, processes under
torchrun, the session (model, data, optimiser), the compiled train and evaluation steps, and a
run's state, checkpoints and resume; the torch-free option records they take.

Imports ``data``, ``files`` and the model registry ``models/``; called by stages 1 and 3 (and stage 2's
evaluation pass).
"""
