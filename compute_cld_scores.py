"""Stage 2: loss file -> per-class rankings (CLD by default; baselines via --method).

Reads what get_loss_values.py recorded, scores every training example and writes a score file
that ranks each class best first by original dataset index (docs/formats.md). Implements CLD of
*Coresets from Trajectories: Selecting Data via Correlation of Loss Differences* (Nagaraj,
Ravikumar, Roy, TMLR 2025) and the baselines of docs/methods.md. CLD and the trajectory baselines
need numpy only; the model-based baselines evaluate a weight snapshot of the stage-1 run.

    python compute_cld_scores.py                       # Scores/CIFAR100_resnet18_seed1234_losses.pickle
    python compute_cld_scores.py --loss_path L --method forgetting
"""
import sys

from utils.cpu_kernels import pin_from_argv

pin_from_argv(sys.argv[1:])  # first: numpy and torch choose their CPU kernels when they load

from utils.cli.config import STAGE2
from utils.cli.entry import run_cli
from utils.cli.stages import run_stage2


@STAGE2.command(__doc__.split("\n\n")[0])
def main(**flags) -> str:
    """Returns the path of the written score file."""
    return run_stage2(STAGE2.settings(flags))  # torch is imported when the stage runs, after the flags are checked


if __name__ == "__main__":
    sys.exit(run_cli(main))
