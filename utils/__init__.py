"""Shared library of the CLD coreset scripts: data, splits, training, file formats.

Modules are imported by name (``from utils import formats``); nothing is re-exported here so that
importing one piece never drags in torch where it is not needed (stage 2 runs without torch).
"""
