"""Tiny fake CIFAR datasets in torchvision's exact on-disk layout.

The writer lives in ``bench/fake_cifar.py`` (the training benchmark writes a full-size one with
it); this module re-exports it under the name the tests have always imported.
"""
from bench.fake_cifar import LAYOUT, fake_images, write_fake_cifar  # noqa: F401

__all__ = ["LAYOUT", "fake_images", "write_fake_cifar"]
