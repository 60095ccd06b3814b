"""Everything written to or read from disk, safely: atomic writes, locks, the restricted unpickler,
checkpoints, the loss, score and ``.npz`` formats (docs/formats.md), and PNG output.

The ground floor with ``errors`` and ``paths``: imports nothing else of the project.
"""
