"""The library of the CLD coreset scripts, one subpackage per floor of the house (README, Layout):
the command line and the grid on top, the three stages beneath them, the scoring methods, the
training engine and the data, the torch-free core, the files, and at the ground the errors, the
paths and ``cld_recorder.py`` at the repository's root.

Modules are imported by name (``from utils.files import atomic``); nothing is re-exported here, so
that importing one piece never drags in torch where it is not needed (stage 2's trajectory
methods run without torch, and every flag is checked before torch is imported).
"""
