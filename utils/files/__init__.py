"""Everything written to or read from disk, safely: atomic writes, locks, the restricted unpickler,
checkpoints, the loss, score and ``.npz`` formats (docs/formats.md), and PNG output.

Imports ``errors``, ``paths`` and ``cld_recorder.py`` (whose writers of the loss and sums formats
stage 1 shares with a user's own loop), nothing else of the project; used by every other folder.
"""
