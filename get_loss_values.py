"""Stage 1: train a model and record every training and validation example's loss after every epoch.

Implements the trajectory collection of *Coresets from Trajectories: Selecting Data via
Correlation of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025). Run it, then the command it
prints (stage 2, ``compute_cld_scores.py``). Every flag is listed by ``--help``.
"""
import sys

from utils.cli.config import STAGE1
from utils.cli.entry import run_cli


@STAGE1.command(__doc__.split("\n\n")[0])
def main(**flags) -> str:
    """Returns the path of the loss file (or sums file; '' with --evaluate_only)."""
    s = STAGE1.settings(flags)
    from utils.collect.stage import collect_losses  # torch is imported here, after the flags are checked

    return collect_losses(s)


if __name__ == "__main__":
    sys.exit(run_cli(main))
