"""The library of the CLD coreset scripts, in subpackages by concern and by stage (docs/layout.md).

Modules are imported by name (``from utils.files import atomic``); nothing is re-exported here, so
that importing one piece never drags in torch where it is not needed (stage 2's trajectory
methods run without torch, and every flag is checked before torch is imported).
"""
