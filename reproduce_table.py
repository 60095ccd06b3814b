"""Reproduce a table of *Coresets from Trajectories: Selecting Data via Correlation of Loss
Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025) with one command.

Runs the three stages over a grid, then writes ``{results_dir}/table.csv``, ``table.md`` and
``accuracy_vs_size.png``. Finished runs are skipped and killed runs continue from their
checkpoints, so rerunning the same command after an interruption finishes the grid. Every flag of
the stages can be set here (stage 1's recipe as --score_<flag>); ``--help`` lists them.

    python reproduce_table.py --dataset digits --score_model_arch resnet20 --model_archs resnet20 \\
        --samples_per_class 5,10,20 --seeds 0,1,2 --epochs 8 --device cpu
    python reproduce_table.py ... --dry_run             # print the commands, run nothing
    python reproduce_table.py ... --emit_script grid.sh # write them for a cluster
"""
import sys

from utils.cpu_kernels import pin_from_argv

pin_from_argv(sys.argv[1:])  # first: numpy and torch choose their CPU kernels when they load

from utils.cli.config import GRID
from utils.cli.entry import run_cli


@GRID.command(__doc__.split("\n\n")[0])
def main(**flags) -> list:
    """Returns the rows of table.csv (empty with --dry_run or --emit_script)."""
    g = GRID.settings(flags)
    from utils.grid import plan as grid, runner, table  # imported after the flags are checked

    steps = grid.plan(g)
    n = grid.stage_counts(steps)
    if g.emit_script:
        table_cmd = GRID.render("reproduce_table.py", {k: v for k, v in g.items() if k != "emit_script"})
        grid.write_script(g.emit_script, steps, table_cmd, g.launcher)
        print(f"wrote {g.emit_script}: {n[1]} stage-1, {n[2]} stage-2 and {n[3]} stage-3 commands, then the table")
        return []
    grid_runner = runner.Runner(steps, g.launcher, g.jobs)
    if g.dry_run:
        print(f"# grid: {n[1]} stage-1, {n[2]} stage-2, {n[3]} stage-3 runs; commands that would run now:")
        grid_runner.dry_run()
        return []
    counts = grid_runner.run()
    print(f"\ngrid done: ran {sum(counts['ran'].values())} runs, skipped {sum(counts['skipped'].values())} "
          f"finished ones")
    return table.write_outputs(g, steps)


if __name__ == "__main__":
    sys.exit(run_cli(main))
