"""Reproduce a table of *Coresets from Trajectories: Selecting Data via Correlation of Loss
Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025) with one command.

Runs the three stages over a grid, then writes ``{results_dir}/table.csv``, ``table.md`` and
``accuracy_vs_size.png``. Finished runs are skipped and killed runs continue from their
checkpoints, so rerunning the same command after an interruption finishes the grid.

    python reproduce_table.py --dataset digits --score_model_arch resnet20 --model_archs resnet20 \\
        --samples_per_class 5,10,20 --seeds 0,1,2 --score_epochs 8 --epochs 8 --device cpu
    python reproduce_table.py ... --dry_run             # print the commands, run nothing
    python reproduce_table.py ... --emit_script grid.sh # write them for a cluster
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from utils import grid
from utils.cli import is_int, require, run_cli


def main(
        dataset: str = 'CIFAR100',
        score_model_arch: str | Sequence[str] = 'resnet18',
        model_archs: str | Sequence[str] = ('resnet18',),
        methods: str | Sequence[str] = ('cld',),
        orders: str | Sequence[str] = ('top', 'random'),
        samples_per_class: int | Sequence[int] | None = None,
        fractions: float | Sequence[float] | None = None,
        seeds: int | Sequence[int] = (1234,),
        score_seed: int | None = None,
        score_epochs: int = 164,
        epochs: int = 164,
        score_schedule: int | Sequence[int] | None = None,
        schedule: int | Sequence[int] = (81, 121),
        data_path: str = './Data',
        device: str = 'auto',
        precision: str = 'auto',
        batch_size: int = 128,
        test_batch_size: int = 256,
        learning_rate: float = 0.1,
        workers: int = 4,
        compile: bool = False,
        scores_dir: str = './Scores',
        splits_dir: str = './Splits',
        checkpoint_path: str = './Data/Checkpoint',
        logpath: str = './Logs',
        results_dir: str = './Results',
        tag: str = '',
        launcher: str = 'python',
        dry_run: bool = False,
        emit_script: str = '',
) -> list[dict]:
    """Run stage 1 per scoring model, stage 2 per method, stage 3 per (method, order, size,
    training model, seed), and tabulate the test accuracies.

    Lists are given as ``a,b`` or ``[a,b]``; a single value is a list of one.

    Args:
        dataset: CIFAR10, CIFAR100, ImageNet or digits (embedded; no download).
        score_model_arch: model(s) trained in stage 1 to record the loss trajectories.
        model_archs: models trained on the coresets in stage 3 (a model other than the scoring
            one is the paper's transfer experiment).
        methods: scores of stage 2: cld, random, loss, el2n, forgetting, aum, dyn_unc. The
            random baseline is best run as order 'random' (uniform within each class, drawn anew
            for every training seed); method 'random' is one fixed draw made by the scoring seed.
        orders: what stage 3 keeps of each ranking: top (the end each method's authors keep),
            middle, bottom, random, ccs. Order 'random' (uniform within each class's pool) does
            not depend on the method, so it runs once, over the first method's score file.
        samples_per_class: budgets k per class (give this or fractions).
        fractions: budgets as a share of each class (give this or samples_per_class).
        seeds: stage-3 seeds (initialisation, batches, random draws); the table averages over them.
        score_seed: seed of stage 1 (and so of the scores); default the first of seeds.
        score_epochs: stage-1 epochs (the trajectory length).
        epochs: stage-3 epochs.
        score_schedule: stage-1 LR milestones; default the same as schedule.
        schedule: stage-3 LR milestones (multiplied by 0.1 at each).
        data_path, device, precision, batch_size, test_batch_size, learning_rate, workers,
        compile: passed to stages 1 and 3.
        scores_dir, splits_dir: stage 1's output folders (stage 2 writes beside the loss file).
        checkpoint_path, logpath: checkpoints and per-epoch logs of stages 1 and 3.
        results_dir: stage 3's run JSONs and results.csv; the table, markdown and plot go here.
        tag: appended to every stage-3 run name, to keep grids with other recipes apart.
        launcher: how the commands of stages 1 and 3 start: python (they run inside this
            process) or e.g. 'torchrun --nproc_per_node 8' (each is started as that command).
            Stage 2 always runs as python.
        dry_run: print the commands that would run now and run nothing.
        emit_script: write every command of the grid to this bash script (one per line, each
            skipping a finished run) and run nothing.

    Returns:
        The rows of table.csv (empty with dry_run or emit_script).
    """
    config = {k: v for k, v in locals().items() if k not in ("dry_run", "emit_script")}
    spec = _spec(**{k: v for k, v in config.items() if k != "launcher"})
    require(isinstance(launcher, str) and launcher.strip(), "--launcher must be a command such as python or torchrun")
    steps = grid.plan(spec)
    n = {s: sum(1 for x in steps if x.stage == s) for s in (1, 2, 3)}
    if emit_script:
        table_cmd = grid.command("reproduce_table.py", grid.drop_defaults(main, _as_flags(config), "reproduce_table.py"))
        grid.write_script(emit_script, steps, table_cmd, launcher)
        print(f"wrote {emit_script}: {n[1]} stage-1, {n[2]} stage-2 and {n[3]} stage-3 commands, then the table")
        return []
    if dry_run:
        print(f"# grid: {n[1]} stage-1, {n[2]} stage-2, {n[3]} stage-3 runs; commands that would run now:")
        grid.execute(steps, launcher, dry_run=True)
        return []
    counts = grid.execute(steps, launcher)
    print(f"\ngrid done: ran {sum(counts['ran'].values())} runs, skipped {sum(counts['skipped'].values())} "
          f"finished ones")
    return grid.write_outputs(spec, steps)


def _as_flags(config: dict) -> dict:
    """The grid's flags with list values as lists (how the emitted table command spells them)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}


def _spec(**flags: Any) -> grid.GridSpec:
    """Validate the flags and build the grid."""
    from utils.data import dataset_info
    from utils.scores import METHODS
    from utils.selection import ORDERS

    info = dataset_info(flags["dataset"])
    lists = {key: grid.as_list(flags[key], key) for key in
             ("score_model_arch", "model_archs", "methods", "orders", "samples_per_class", "fractions", "seeds")}
    import models

    valid = models.model_names(info.name)
    for key in ("score_model_arch", "model_archs"):
        require(lists[key], f"--{key} needs at least one model")
        for arch in lists[key]:
            require(arch in valid, f"unknown model {arch!r} in --{key}; choose from {', '.join(valid)}")
    require(lists["methods"], "--methods needs at least one method")
    for method in lists["methods"]:
        require(isinstance(method, str) and method.lower() in METHODS,
                f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    require(lists["orders"], "--orders needs at least one order")
    for order in lists["orders"]:
        require(order in ORDERS, f"unknown order {order!r}; choose from {', '.join(ORDERS)}")
    require(bool(lists["samples_per_class"]) != bool(lists["fractions"]),
            "give the subset sizes as --samples_per_class K1,K2,... or as --fractions F1,F2,... (one of them)")
    for k in lists["samples_per_class"]:
        require(is_int(k) and k > 0, f"--samples_per_class values must be positive integers, got {k!r}")
    for f in lists["fractions"]:
        require(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1,
                f"--fractions values must lie in (0, 1], got {f!r}")
    require(lists["seeds"], "--seeds needs at least one seed")
    for s in lists["seeds"]:
        require(is_int(s) and s >= 0, f"--seeds values must be non-negative integers, got {s!r}")
    score_seed = lists["seeds"][0] if flags["score_seed"] is None else flags["score_seed"]
    require(is_int(score_seed) and score_seed >= 0, f"--score_seed must be a non-negative integer, got {score_seed!r}")
    for key in ("score_epochs", "epochs"):
        require(is_int(flags[key]) and flags[key] >= 1, f"--{key} must be a positive integer, got {flags[key]!r}")
    require(flags["score_epochs"] >= 3, "--score_epochs must be at least 3 (CLD correlates 2+ loss differences)")
    schedule = _schedule(flags["schedule"], "schedule")
    score_schedule = schedule if flags["score_schedule"] is None else _schedule(flags["score_schedule"], "score_schedule")
    for key in ("data_path", "device", "precision", "scores_dir", "splits_dir", "checkpoint_path", "logpath",
                "results_dir", "tag"):
        require(isinstance(flags[key], str), f"--{key} must be a string, got {flags[key]!r}")
    require(flags["tag"] == "" or flags["tag"].replace("-", "").replace("_", "").isalnum(),
            f"--tag may hold letters, digits, '-' and '_' only, got {flags['tag']!r}")
    common = {k: flags[k] for k in ("data_path", "workers", "batch_size", "test_batch_size", "learning_rate",
                                    "device", "precision", "compile")}
    return grid.GridSpec(
        dataset=info.name, score_model_archs=tuple(lists["score_model_arch"]), model_archs=tuple(lists["model_archs"]),
        methods=tuple(m.lower() for m in lists["methods"]), orders=tuple(lists["orders"]),
        samples_per_class=tuple(int(k) for k in lists["samples_per_class"]) or None,
        fractions=tuple(float(f) for f in lists["fractions"]) or None, seeds=tuple(int(s) for s in lists["seeds"]),
        score_seed=int(score_seed), score_epochs=int(flags["score_epochs"]), epochs=int(flags["epochs"]),
        score_schedule=score_schedule, schedule=schedule, common=common,
        scores_dir=flags["scores_dir"], splits_dir=flags["splits_dir"], checkpoint_path=flags["checkpoint_path"],
        logpath=flags["logpath"], results_dir=flags["results_dir"], tag=flags["tag"])


def _schedule(value: Any, key: str) -> tuple[int, ...]:
    items = grid.as_list(value, key)
    for m in items:
        require(is_int(m) and m >= 0, f"--{key} must be a list of epochs such as [81,121], got {value!r}")
    return tuple(sorted(int(m) for m in items))


if __name__ == "__main__":
    sys.exit(run_cli(main))
