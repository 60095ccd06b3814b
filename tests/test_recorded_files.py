"""Stage 2 on loss files recorded from the user's own loop (``source == 'recorder'``): CLD and the
trajectory baselines with no other flag, scores named by the user's ids, the coreset exported as
those ids (``--export_coreset``), the figure without images, and the refusals."""
from __future__ import annotations

import os
import shlex

import numpy as np
import pytest

import compute_cld_scores
from conftest import assert_user_error, cli
from utils.core.selection import class_budgets, fraction_k, select_coreset
from utils.files.losses import load_losses, save_losses
from utils.files.scores import load_scores

N_TRAIN, N_VAL, N_EP = 40, 10, 6
SIZES = (23, 17)  # training examples of groups 0 and 1: 20% of them rounds up (4.6 -> 5) and down (3.4 -> 3)


def recorded(ids: str = "int", groups: int = 2, seed: int = 0, signals: bool = False) -> dict:
    """A loss file as cld_recorder.py writes it (docs/formats.md, "Recorded loss file")."""
    rng = np.random.default_rng(seed)
    t = np.arange(N_EP)[:, None]
    if groups == 1:
        tr_lbl, val_lbl = np.zeros(N_TRAIN, np.int64), np.zeros(N_VAL, np.int64)
    else:
        tr_lbl = rng.permutation(np.repeat([0, 1], SIZES))
        val_lbl = np.arange(N_VAL) % 2
    if ids == "int":  # stable ids of the user's, in no particular order
        train_ids, val_ids = rng.choice(10**6, N_TRAIN, replace=False), np.arange(N_VAL) + 10**7
    else:
        train_ids = np.array([f"doc-{i:03d}" for i in rng.permutation(N_TRAIN)])
        val_ids = np.array([f"val-{i}" for i in range(N_VAL)])
    d = {
        "source": "recorder", "dataset": "mytab", "model_arch": "recorded", "manual_seed": 0, "num_classes": groups,
        "train_indices": np.arange(N_TRAIN), "val_indices": np.arange(N_TRAIN, N_TRAIN + N_VAL),
        "train_ids": np.asarray(train_ids, dtype=np.int64) if ids == "int" else train_ids, "val_ids": val_ids,
        "group_names": ["spam", "ham"] if ids == "str" and groups == 2 else None,
        "config": {"epochs": N_EP, "trajectories": "full"},
        "epoch": np.arange(N_EP),
        "tr_loss": (np.exp(-0.3 * t) * rng.uniform(1, 3, N_TRAIN)
                    + 0.3 * rng.random((N_EP, N_TRAIN))).astype(np.float32),
        "val_loss": (np.exp(-0.3 * t) * rng.uniform(1, 3, N_VAL) + 0.3 * rng.random((N_EP, N_VAL))).astype(np.float32),
        "tr_lbl": tr_lbl, "val_lbl": val_lbl,
    }
    if signals:
        d["tr_correct"] = rng.random((N_EP, N_TRAIN)) < 0.7
        d["tr_margin"] = rng.normal(size=(N_EP, N_TRAIN)).astype(np.float32)
        d["tr_el2n"] = rng.random((N_EP, N_TRAIN)).astype(np.float32)
    return d


def write(tmp_path, **kwargs) -> tuple[str, dict]:
    path = str(tmp_path / "mytab_losses.pickle")
    d = recorded(**kwargs)
    save_losses(path, d)
    return path, d


def independent_cld(d: dict) -> np.ndarray:
    """CLD by its definition (docs/methods.md): per example, Pearson's r (population std) of its
    loss differences with those of its group's mean validation loss."""
    out = np.empty(N_TRAIN)
    for j in range(N_TRAIN):
        dx = np.diff(d["tr_loss"][:, j].astype(np.float64))
        dv = np.diff(d["val_loss"][:, d["val_lbl"] == d["tr_lbl"][j]].astype(np.float64).mean(axis=1))
        out[j] = np.corrcoef(dx, dv)[0, 1]
    return out


def ranked_ids(d: dict, scores: np.ndarray, group: int) -> list:
    """The group's ids, highest score first, ties to the lower position."""
    cols = np.flatnonzero(d["tr_lbl"] == group)
    return d["train_ids"][cols[np.lexsort((cols, -scores[cols]))]].tolist()


def test_the_recorded_additions_survive_the_loss_file(tmp_path):
    path, d = write(tmp_path, ids="str")
    back = load_losses(path)
    assert back["source"] == "recorder" and back["group_names"] == ["spam", "ham"]
    assert back["train_ids"].dtype.kind == "U" and back["train_ids"].tolist() == d["train_ids"].tolist()


@pytest.mark.parametrize("ids", ["int", "str"])
def test_stage2_with_no_flag_ranks_every_group_by_cld_named_by_ids(tmp_path, ids):
    path, d = write(tmp_path, ids=ids)
    proc = cli(compute_cld_scores, "--loss_path", path)
    assert proc.returncode == 0, proc.stderr
    out = str(tmp_path / "CLD_mytab_recorded_seed0_scores.pickle")
    rec = load_scores(out)
    assert (rec["dataset"], rec["model_arch"], rec["source"]) == ("mytab", "recorded", "recorder")
    assert rec["train_ids"].tolist() == d["train_ids"].tolist() and rec["group_names"] == d["group_names"]
    expected = independent_cld(d)
    for g in (0, 1):
        assert rec["train_ids"][rec["indices"][g]].tolist() == ranked_ids(d, expected, g)
        np.testing.assert_allclose(rec["scores"][g], np.sort(expected[d["tr_lbl"] == g])[::-1], rtol=0, atol=1e-9)
    # No dataset to train on: the next step writes the coreset's ids, and that command works as printed.
    assert "train_on_coresets.py" not in proc.stdout and "in your own loop" in proc.stdout
    command = next(line.strip() for line in proc.stdout.splitlines() if "--export_coreset" in line)
    words = shlex.split(command)
    assert words[:2] == ["python", "compute_cld_scores.py"] and "--fraction" in words
    again = cli(compute_cld_scores, *words[2:])
    assert again.returncode == 0, again.stderr
    written = words[words.index("--export_coreset") + 1]
    assert written.endswith(".npy" if ids == "int" else ".csv") and os.path.isfile(written)


def test_export_holds_the_top_fraction_of_each_group_as_ids_ascending(tmp_path):
    path, d = write(tmp_path)
    core = tmp_path / "core.npy"
    proc = cli(compute_cld_scores, "--loss_path", path, "--export_coreset", str(core), "--fraction", "0.2")
    assert proc.returncode == 0, proc.stderr
    kept = np.load(core, allow_pickle=False)
    scores = independent_cld(d)
    expected = sorted(i for g in (0, 1) for i in ranked_ids(d, scores, g)[:fraction_k(0.2, SIZES[g])])
    assert kept.dtype == np.int64 and kept.tolist() == expected and len(expected) == 5 + 3
    assert f"coreset       8 ids (0.2 of each group, order top) written to {core}: the examples to keep" in proc.stdout


def test_export_follows_stage_3s_rules_for_every_order(tmp_path):
    path, d = write(tmp_path)
    for order in ("bottom", "zero", "middle", "random", "ccs"):
        core = tmp_path / f"{order}.npy"
        proc = cli(compute_cld_scores, "--loss_path", path, "--output_path", str(tmp_path / f"{order}.pickle"),
                   "--export_coreset", str(core), "--samples_per_class", "3", "--order", order, "--ccs_beta", "0.1"
                   if order == "ccs" else "0")
        assert proc.returncode == 0, proc.stderr
        rec = load_scores(str(tmp_path / f"{order}.pickle"))
        chosen = select_coreset(rec["indices"], rec["scores"], class_budgets({0: 23, 1: 17}, 3), order, 0,
                                0.1 if order == "ccs" else 0.0, rec["hard_end"])
        assert np.load(core).tolist() == sorted(d["train_ids"][chosen].tolist()), order


def test_string_ids_are_exported_as_a_csv_with_a_header(tmp_path):
    path, d = write(tmp_path, ids="str")
    core = tmp_path / "core.csv"
    proc = cli(compute_cld_scores, "--loss_path", path, "--export_coreset", str(core), "--samples_per_class", "2")
    assert proc.returncode == 0, proc.stderr
    lines = core.read_text().splitlines()
    scores = independent_cld(d)
    assert lines[0] == "id"
    assert lines[1:] == sorted(i for g in (0, 1) for i in ranked_ids(d, scores, g)[:2])


def test_a_npy_export_of_string_ids_is_refused_before_any_work(tmp_path):
    path, _ = write(tmp_path, ids="str")
    before = sorted(os.listdir(tmp_path))
    proc = cli(compute_cld_scores, "--loss_path", path, "--export_coreset", str(tmp_path / "core.npy"),
               "--fraction", "0.2")
    assert_user_error(proc, "ids are text", "give a .csv path")
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("args,fragments", [
    (["--export_coreset", "core.npy"], ["--export_coreset needs one budget"]),
    (["--export_coreset", "core.npy", "--fraction", "0.2", "--samples_per_class", "2"], ["needs one budget"]),
    (["--fraction", "0.2"], ["give --export_coreset PATH"]),
    (["--export_coreset", "core.txt", "--fraction", "0.2"], ["must name a .npy file", ".csv"]),
    (["--export_coreset", "core.npy", "--samples_per_class", "18"], ["class 1 has only 17"]),
    (["--method", "herding"], ["method 'herding' scores from the model's weights", "trajectory method"]),
    (["--method", "aum"], ["needs the signal 'tr_margin'", "cld_recorder.py"]),
])
def test_requests_that_cannot_work_are_refused_in_one_line_and_write_nothing(tmp_path, args, fragments):
    path, _ = write(tmp_path)
    before = sorted(os.listdir(tmp_path))
    args = [str(tmp_path / a) if a.startswith("core.") else a for a in args]
    assert_user_error(cli(compute_cld_scores, "--loss_path", path, *args), *fragments)
    assert sorted(os.listdir(tmp_path)) == before


def test_an_existing_export_is_replaced_only_with_overwrite(tmp_path):
    path, _ = write(tmp_path)
    core = tmp_path / "core.npy"
    core.write_bytes(b"precious")
    proc = cli(compute_cld_scores, "--loss_path", path, "--export_coreset", str(core), "--fraction", "0.2")
    assert_user_error(proc, str(core), "already exists; pass --overwrite")
    assert core.read_bytes() == b"precious" and not os.path.exists(tmp_path / "CLD_mytab_recorded_seed0_scores.pickle")
    proc = cli(compute_cld_scores, "--loss_path", path, "--export_coreset", str(core), "--fraction", "0.2",
               "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert np.load(core).size == 8


def test_the_figure_draws_the_loss_panels_without_images(tmp_path):
    from PIL import Image

    path, _ = write(tmp_path, ids="str")
    figure = tmp_path / "f.png"
    proc = cli(compute_cld_scores, "--loss_path", path, "--figure", str(figure))
    assert proc.returncode == 0, proc.stderr
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size[0] >= 800


def test_stability_and_every_trajectory_baseline_work(tmp_path):
    path, _ = write(tmp_path, signals=True)
    proc = cli(compute_cld_scores, "--loss_path", path, "--stability")
    assert proc.returncode == 0, proc.stderr
    assert "stability of cld" in proc.stdout
    assert os.path.isfile(tmp_path / "CLD_mytab_recorded_seed0_scores_stability.csv")
    for method in ("loss", "dyn_unc", "random", "el2n", "forgetting", "aum"):
        window = ["--dyn_unc_window", "3"] if method == "dyn_unc" else []  # another method refuses it
        proc = cli(compute_cld_scores, "--loss_path", path, "--method", method, *window)
        assert proc.returncode == 0, (method, proc.stderr)
        rec = load_scores(str(tmp_path / f"{method.upper()}_mytab_recorded_seed0_scores.pickle"))
        assert sorted(np.concatenate(list(rec["indices"].values())).tolist()) == list(range(N_TRAIN))


def test_without_labels_cld_correlates_with_the_whole_validation_set(tmp_path):
    path, d = write(tmp_path, groups=1)
    core = tmp_path / "core.npy"
    proc = cli(compute_cld_scores, "--loss_path", path, "--export_coreset", str(core), "--fraction", "0.1")
    assert proc.returncode == 0, proc.stderr
    rec = load_scores(str(tmp_path / "CLD_mytab_recorded_seed0_scores.pickle"))
    whole = np.diff(d["val_loss"].astype(np.float64).mean(axis=1))
    expected = np.array([np.corrcoef(np.diff(d["tr_loss"][:, j].astype(np.float64)), whole)[0, 1]
                         for j in range(N_TRAIN)])
    assert list(rec["indices"]) == [0] and rec["group_names"] is None
    assert rec["train_ids"][rec["indices"][0]].tolist() == ranked_ids(d, expected, 0)
    assert np.load(core).tolist() == sorted(ranked_ids(d, expected, 0)[:4])


def test_a_stage1_file_exports_the_dataset_indices_stage_3_would_train_on(tmp_path):
    from test_compute_cld_scores import run_losses

    path = str(tmp_path / "CIFAR10_resnet18_seed7_losses.pickle")
    save_losses(path, run_losses())
    core = tmp_path / "core.npy"
    proc = cli(compute_cld_scores, "--loss_path", path, "--export_coreset", str(core), "--samples_per_class", "3",
               "--order", "random")
    assert proc.returncode == 0, proc.stderr
    rec = load_scores(str(tmp_path / "CLD_CIFAR10_resnet18_seed7_scores.pickle"))
    assert "train_ids" not in rec and "python train_on_coresets.py" in proc.stdout
    budget = class_budgets({c: len(v) for c, v in rec["indices"].items()}, 3)
    assert np.load(core).tolist() == select_coreset(rec["indices"], rec["scores"], budget, "random", 7).tolist()


def test_a_score_file_whose_ids_do_not_name_every_ranked_index_is_refused(tmp_path):
    import pickle

    from utils.errors import UserError

    path, _ = write(tmp_path, ids="str")
    assert cli(compute_cld_scores, "--loss_path", path).returncode == 0
    out = tmp_path / "CLD_mytab_recorded_seed0_scores.pickle"
    rec = pickle.loads(out.read_bytes())
    for bad in ({"train_ids": rec["train_ids"][:-1]}, {"group_names": ["spam"]}):
        (tmp_path / "bad.pickle").write_bytes(pickle.dumps({**rec, **bad}))
        with pytest.raises(UserError, match="train_ids|group_names"):
            load_scores(str(tmp_path / "bad.pickle"))
