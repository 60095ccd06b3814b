"""Stage 3: train on the selected examples of each class of a score file and report test accuracy.

Implements the coreset evaluation of *Coresets from Trajectories: Selecting Data via Correlation
of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025). The model trained here may differ from
the one that produced the scores (the paper's transfer experiments). Every flag is listed by
``--help``.
"""
import sys

from utils.cpu_kernels import pin_from_argv

pin_from_argv(sys.argv[1:])  # first: numpy and torch choose their CPU kernels when they load

from utils.cli.config import STAGE3
from utils.cli.entry import run_cli
from utils.cli.stages import run_stage3


@STAGE3.command(__doc__.split("\n\n")[0])
def main(**flags) -> dict:
    """Returns the run's result (also written to ``{results_dir}/runs/<name>.json``)."""
    return run_stage3(STAGE3.settings(flags))  # torch is imported when the stage runs, after the flags are checked


if __name__ == "__main__":
    sys.exit(run_cli(main))
