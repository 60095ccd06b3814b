"""Stage 1: train a model and record every training and validation example's loss after every epoch.

Implements the trajectory collection of *Coresets from Trajectories: Selecting Data via
Correlation of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025). Run it, then the command it
prints (stage 2, ``compute_cld_scores.py``). Every flag is listed by ``--help``.
"""
import sys

from utils.cpu_kernels import pin_from_argv

pin_from_argv(sys.argv[1:])  # first: numpy and torch choose their CPU kernels when they load

from utils.cli.config import STAGE1
from utils.cli.entry import run_cli
from utils.cli.stages import run_stage1


@STAGE1.command(__doc__.split("\n\n")[0])
def main(**flags) -> str:
    """Returns the path of the loss file (or sums file; '' with --evaluate_only)."""
    return run_stage1(STAGE1.settings(flags))  # torch is imported when the stage runs, after the flags are checked


if __name__ == "__main__":
    sys.exit(run_cli(main))
