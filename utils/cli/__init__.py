"""The command line: every flag of every script (their kinds, defaults and help), Fire's entry point,
and the mapping of checked flags onto each stage's option record (:mod:`utils.cli.stages`).

Imported only by the scripts and the grid; it imports the stages (to run them), the method
registry and the torch-free option modules beneath them, never the reverse.
"""
