"""Stage 2: loss file -> per-class rankings (CLD by default; baselines via --method).

Reads the loss trajectories that get_loss_values.py recorded, scores every training example and
writes a score file that ranks each class best first by original dataset index (DESIGN.md).
Implements CLD of *Coresets from Trajectories: Selecting Data via Correlation of Loss
Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025); the scoring itself lives in utils/scores.py.

    python compute_cld_scores.py                       # Scores/CIFAR100_resnet18_seed1234_losses.pickle
    python compute_cld_scores.py --loss_path L --method forgetting
"""
from __future__ import annotations

import os
import re
import time

import numpy as np

from utils import paths, scores as S
from utils.cli import UserError, is_int, require, run_cli
from utils.formats import check_output_free, load_losses, save_scores

LEGACY_DEFAULT_SEED = 1234  # the paper code's default manual_seed



def _validate_flags(method: str, first_epochs: int, epoch_stride: int, el2n_epochs: int,
                    dyn_unc_window: int, seed: int | None) -> None:
    require(isinstance(method, str) and method.lower() in S.METHODS,
            f"unknown --method {method!r}; choose one of {', '.join(S.METHODS)}")
    require(is_int(first_epochs) and first_epochs >= 0,
            f"--first_epochs must be a non-negative integer (0 = all epochs), got {first_epochs!r}")
    require(is_int(epoch_stride) and epoch_stride >= 1,
            f"--epoch_stride must be a positive integer, got {epoch_stride!r}")
    require(is_int(el2n_epochs) and el2n_epochs >= 1,
            f"--el2n_epochs must be a positive integer, got {el2n_epochs!r}")
    require(is_int(dyn_unc_window) and dyn_unc_window >= 2,
            f"--dyn_unc_window must be an integer >= 2, got {dyn_unc_window!r}")
    require(seed is None or (is_int(seed) and seed >= 0),
            f"--seed must be a non-negative integer, got {seed!r}")


def _run_metadata(losses: dict, loss_path: str, dataset: str, model_arch: str) -> tuple[str, str, int, int]:
    """dataset, model_arch, manual_seed, num_classes: from the file; flags only fill the gaps of
    legacy files (whose split file may carry them)."""
    ds = losses.get("dataset") or dataset
    arch = losses.get("model_arch") or model_arch
    seed = losses.get("manual_seed")
    if seed is None:
        found = re.search(r"_seed(\d+)_", os.path.basename(loss_path))
        seed = int(found.group(1)) if found else LEGACY_DEFAULT_SEED
    n_cls = losses.get("num_classes")
    if n_cls is None:
        n_cls = int(max(losses["tr_lbl"].max(initial=-1), losses["val_lbl"].max(initial=-1))) + 1
    require(is_int(seed), f"loss file {loss_path}: manual_seed {seed!r} is not an integer")
    require(is_int(n_cls) and n_cls > 0, f"loss file {loss_path}: num_classes {n_cls!r} is not a positive integer")
    return str(ds), str(arch), int(seed), int(n_cls)


def _summary(record: dict, out: str, seconds: float) -> str:
    sizes = np.array([v.size for v in record["indices"].values()])
    all_scores = np.concatenate(list(record["scores"].values()))
    ep = record["epochs_used"]
    k = max(1, int(np.floor(0.1 * sizes.min() + 0.5)))
    lines = [
        f"method        {record['method']}  (top of each ranking = {S.TOP_MEANS[record['method']]})",
        f"run           {record['dataset']} / {record['model_arch']} / seed {record['manual_seed']}",
        f"classes       {sizes.size} ranked (of {record['num_classes']}); examples per class "
        f"min {sizes.min()} / median {int(np.median(sizes))} / max {sizes.max()}",
        f"epochs used   {ep.size}: {ep[0]} .. {ep[-1]}"
        + (f" (stride {record['options']['epoch_stride']})" if record['options']['epoch_stride'] > 1 else ""),
        f"score range   {all_scores.min():.4g} .. {all_scores.max():.4g}",
    ]
    if record["method"] == "cld":
        lines.append(f"positive CLD  {100.0 * np.mean(all_scores > 0):.1f}% of examples")
    lines += [
        f"wrote         {out}  ({seconds:.1f} s)",
        "",
        f"next (k = {k} is 10% of the smallest class; choose your own budget):",
        f"  python train_on_coresets.py --score_path {out} --dataset {record['dataset']} "
        f"--model_arch {record['model_arch']} --samples_per_class {k}",
    ]
    return "\n".join(lines)


def main(loss_path: str = '', dataset: str = 'CIFAR100', model_arch: str = 'resnet18', split_path: str = '',
         method: str = 'cld', output_path: str = '', first_epochs: int = 0, epoch_stride: int = 1,
         el2n_epochs: int = S.DEFAULT_EL2N_EPOCHS, dyn_unc_window: int = S.DEFAULT_DYN_UNC_WINDOW,
         seed: int | None = None, overwrite: bool = False) -> str:
    """Score every training example and write the per-class rankings.

    Args:
        loss_path: loss file of stage 1; default Scores/{dataset}_{model_arch}_seed1234_losses.pickle.
            The paper code's legacy loss pickles are read too (with --split_path).
        dataset: dataset name; used only for the default loss_path and for legacy files (files of
            this project carry their dataset, model_arch, manual_seed and num_classes).
        model_arch: model name; same use as dataset.
        split_path: split file of a legacy loss file (maps its split positions to dataset indices);
            required for legacy files, ignored otherwise.
        method: cld (default) | random | loss | el2n | forgetting | aum | dyn_unc (SCORES.md).
        output_path: score file to write; default beside the loss file,
            {METHOD}_{dataset}_{arch}_seed{seed}_scores.pickle.
        first_epochs: score only the first N recorded epochs (0 = all).
        epoch_stride: then keep every s-th of those epochs, starting with the first (1 = all).
            At least 3 epochs must remain.
        el2n_epochs: el2n averages over the first this-many used epochs (all if fewer); default 20.
        dyn_unc_window: dyn_unc window J of consecutive epochs (default 10; all if fewer epochs).
        seed: seed of --method random; default the loss file's manual_seed.
        overwrite: replace an existing score file.

    Returns:
        The path of the written score file.
    """
    _validate_flags(method, first_epochs, epoch_stride, el2n_epochs, dyn_unc_window, seed)
    method = method.lower()
    for name, value in (("loss_path", loss_path), ("dataset", dataset), ("model_arch", model_arch),
                        ("split_path", split_path), ("output_path", output_path)):
        require(isinstance(value, str), f"--{name} must be a string, got {value!r}")
    if output_path:
        check_output_free(output_path, overwrite)  # before reading a possibly large loss file
    loss_path = loss_path or paths.loss_path("Scores", dataset, model_arch, LEGACY_DEFAULT_SEED)
    started = time.perf_counter()

    losses = load_losses(loss_path, split_path)
    ds, arch, run_seed, n_cls = _run_metadata(losses, loss_path, dataset, model_arch)
    out = output_path or paths.score_path(os.path.dirname(loss_path), method, ds, arch, run_seed)
    require(os.path.abspath(out) != os.path.abspath(loss_path),
            f"--output_path {out} is the loss file itself; choose another output path")
    check_output_free(out, overwrite)
    S.check_signals(losses, method)
    S.check_labels(losses, n_cls)
    used = S.select_epochs(losses, first_epochs, epoch_stride)

    options = {"first_epochs": first_epochs, "epoch_stride": epoch_stride, "el2n_epochs": el2n_epochs,
               "dyn_unc_window": dyn_unc_window, "seed": run_seed if seed is None else seed}
    values = S.compute_scores(used, method, **options)
    indices, per_class = S.rank_per_class(values, used["tr_lbl"], used["train_indices"])

    record = {
        "method": method, "dataset": ds, "model_arch": arch, "manual_seed": run_seed, "num_classes": n_cls,
        "loss_path": os.path.abspath(loss_path), "epochs_used": np.asarray(used["epoch"], dtype=np.int64),
        "options": options, "top_means": S.TOP_MEANS[method], "hard_end": S.HARD_END[method],
        "indices": indices, "scores": per_class,
    }
    try:
        save_scores(out, record)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror}); choose another --output_path") from None
    print(_summary(record, out, time.perf_counter() - started))
    return out


if __name__ == "__main__":
    run_cli(main)
