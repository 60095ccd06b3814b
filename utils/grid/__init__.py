"""``reproduce_table.py``'s grid: the plan of stage-1, stage-2 and stage-3 runs of a comparison, the
runner that executes or emits them, and the table, plot and figures of its results.

The top floor: it imports the command line (each step is a script's flags, run through
:mod:`utils.cli.stages`), and reads the stages' files (score files, results) to draw its table
and figures. Nothing imports it but the script.
"""
