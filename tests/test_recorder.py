"""cld_recorder.py: stage 1 from a user's own loop. A plain loop killed and continued, the eval-mode
losses of a model with dropout, bad input refused, folders of other runs refused, string ids and
groups, one group without labels, running sums, checkpoints replayed, two processes under
torch.distributed, and the installable package."""
from __future__ import annotations

import os
import re
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from cld_recorder import LossRecorder, RecordError, hf_checkpoints
from conftest import REPO, run_script
from utils.files.losses import load_losses, load_sums
from utils.files.scores import load_scores

N_TRAIN, N_VAL, EPOCHS = 60, 18, 8


def _labels():
    return np.arange(N_TRAIN) % 3, np.arange(N_VAL) % 3


def _epoch_arrays(epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded losses of one epoch: falling, each example at its own pace, with noise."""
    rng = np.random.default_rng(100 + epoch)
    pace = np.random.default_rng(7).uniform(0.1, 0.6, N_TRAIN + N_VAL)
    values = np.exp(-pace * epoch) * 2 + 0.05 * rng.random(N_TRAIN + N_VAL)
    return values[:N_TRAIN], values[N_TRAIN:]


LOOP = """
import os, sys
import numpy as np
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from cld_recorder import LossRecorder
from test_recorder import _epoch_arrays, _labels, EPOCHS
train, val = _labels()
rec = LossRecorder({folder!r}, train, val, epochs=EPOCHS)
for epoch in range(rec.epochs_recorded, EPOCHS):
    rec.add_epoch(*_epoch_arrays(epoch))
    if epoch + 1 == {kill_after}:
        os.kill(os.getpid(), 9)
print(rec.finish())
"""


def _loop(folder: str, kill_after: int = -1) -> subprocess.CompletedProcess:
    code = LOOP.format(repo=REPO, tests=os.path.join(REPO, "tests"), folder=folder, kill_after=kill_after)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _cld_by_definition(d: dict) -> np.ndarray:
    """The paper's CLD, recomputed independently: Pearson correlation of each example's loss differences
    with the differences of its class's mean validation loss."""
    out = np.empty(len(d["tr_lbl"]))
    for i, c in enumerate(d["tr_lbl"]):
        v = d["val_loss"][:, d["val_lbl"] == c].astype(np.float64).mean(axis=1)
        out[i] = np.corrcoef(np.diff(d["tr_loss"][:, i].astype(np.float64)), np.diff(v))[0, 1]
    return out


def test_a_plain_loop_killed_after_5_epochs_continues_and_stage_2_ranks_by_the_papers_definition(tmp_path):
    killed = _loop(str(tmp_path / "run"), kill_after=5)
    assert killed.returncode == -9
    progress = __import__("json").load(open(tmp_path / "run" / "recording.json"))
    assert progress["epochs_recorded"] == 5
    resumed = _loop(str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    whole = _loop(str(tmp_path / "whole"))
    loss_file = resumed.stdout.strip()
    d, ref = load_losses(loss_file), load_losses(whole.stdout.strip())
    for key in ("tr_loss", "val_loss", "tr_lbl", "val_lbl", "train_ids", "epoch"):
        np.testing.assert_array_equal(d[key], ref[key])
    assert d["tr_loss"].shape == (EPOCHS, N_TRAIN) and d["source"] == "recorder"

    proc = run_script("compute_cld_scores.py", "--loss_path", loss_file, "--output_path", str(tmp_path / "s.pickle"))
    assert proc.returncode == 0, proc.stderr
    scores = load_scores(str(tmp_path / "s.pickle"))
    cld = _cld_by_definition(d)
    for c in range(3):
        members = np.flatnonzero(d["tr_lbl"] == c)
        expected = members[np.lexsort((members, -cld[members]))]  # highest CLD first, ties to the lower index
        np.testing.assert_array_equal(scores["indices"][c], d["train_indices"][expected])
        np.testing.assert_allclose(scores["scores"][c], cld[expected], atol=1e-9)


def _dropout_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))


def _loaders(with_ids: bool = False):
    g = torch.Generator().manual_seed(1)
    x, xv = torch.randn(N_TRAIN, 5, generator=g), torch.randn(N_VAL, 5, generator=g)
    y, yv = (torch.as_tensor(a) for a in _labels())
    parts = ((x, y), (xv, yv))
    if with_ids:  # ids in a shuffled order: the recorder places each value by its id
        parts = ((x, y, torch.arange(N_TRAIN)), (xv, yv, torch.arange(N_VAL)))
    return [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*p), batch_size=7, shuffle=with_ids,
                                        generator=torch.Generator().manual_seed(2)) for p in parts], (x, y, xv, yv)


def test_record_stores_the_eval_mode_losses_and_gives_the_model_back_in_train_mode(tmp_path):
    model = _dropout_model()
    (train, val), (x, y, xv, yv) = _loaders()
    rec = LossRecorder(str(tmp_path / "r"), *_labels(), epochs=3)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model.train()
        for xb, yb in train:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            optimiser.step()
        rec.record(model, train, val)
        assert model.training
    d = load_losses(rec.finish())
    model.eval()
    with torch.no_grad():
        logits = model(x)
        expected = torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy()
        expected_val = torch.nn.functional.cross_entropy(model(xv), yv, reduction="none").numpy()
    np.testing.assert_allclose(d["tr_loss"][-1], expected, atol=1e-5)
    np.testing.assert_allclose(d["val_loss"][-1], expected_val, atol=1e-5)
    np.testing.assert_array_equal(d["tr_correct"][-1], (logits.argmax(1) == y).numpy())
    # The same epoch from loaders that shuffle but yield ids: the same rows.
    (train_ids, val_ids), _ = _loaders(with_ids=True)
    again = LossRecorder(str(tmp_path / "ids"), *_labels(), epochs=3)
    for _ in range(3):
        again.record(model, train_ids, val_ids)
    np.testing.assert_allclose(load_losses(again.finish())["tr_loss"][-1], expected, atol=1e-5)


@pytest.mark.parametrize("train,val,message", [
    (np.full(N_TRAIN, np.nan), np.ones(N_VAL), "train_losses of epoch 1 holds nan for example 0"),
    (np.ones(N_TRAIN - 1), np.ones(N_VAL), f"train_losses must hold one value per example ({N_TRAIN})"),
    (np.ones(N_TRAIN), np.ones(N_VAL + 2), f"val_losses must hold one value per example ({N_VAL})"),
    (np.ones(N_TRAIN), np.full(N_VAL, np.inf), "val_losses of epoch 1 holds inf"),
])
def test_bad_arrays_are_refused_with_a_value_error_and_nothing_recorded(tmp_path, train, val, message):
    rec = LossRecorder(str(tmp_path / "r"), *_labels(), epochs=4)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rec.add_epoch(train, val)
    assert rec.epochs_recorded == 0 and not os.path.exists(tmp_path / "r" / "recording.json")


def test_a_folder_of_other_examples_and_misuse_are_refused(tmp_path):
    folder = str(tmp_path / "r")
    rec = LossRecorder(folder, *_labels(), epochs=3)
    for epoch in range(3):
        rec.add_epoch(*_epoch_arrays(epoch))
    with pytest.raises(RecordError, match="more than the 3 epochs declared"):
        rec.add_epoch(*_epoch_arrays(3))
    rec.finish()
    with pytest.raises(RecordError, match="add_epoch after finish"):
        rec.add_epoch(*_epoch_arrays(3))
    train, val = _labels()
    with pytest.raises(RecordError, match="its training labels differ"):
        LossRecorder(folder, (train + 1) % 3, val, epochs=3)
    with pytest.raises(RecordError, match="its train_ids differ"):
        LossRecorder(folder, train, val, epochs=3, train_ids=np.arange(N_TRAIN) + 1000)
    with pytest.raises(RecordError, match="its sizes differ"):
        LossRecorder(folder, train[:-1], val, epochs=3)
    with pytest.raises(RecordError, match="trajectories='full'"):
        LossRecorder(folder, train, val, epochs=3, trajectories="sums")
    more = LossRecorder(folder, train, val, epochs=4)  # the same examples, more epochs: continues
    assert more.epochs_recorded == 3
    more.add_epoch(*_epoch_arrays(3))
    assert load_losses(more.finish())["tr_loss"].shape == (4, N_TRAIN)
    with pytest.raises(RecordError, match="epochs must be a positive integer"):
        LossRecorder(str(tmp_path / "new"), train, val)
    with pytest.raises(RecordError, match="lists an id twice"):
        LossRecorder(str(tmp_path / "new"), train, val, epochs=3, train_ids=np.zeros(N_TRAIN, int))


def test_string_ids_and_groups_and_one_group_without_labels(tmp_path):
    groups = np.array(["news", "code", "chat"])[np.arange(N_TRAIN) % 3]
    val_groups = np.array(["news", "code", "chat"])[np.arange(N_VAL) % 3]
    ids = [f"doc-{i:03d}" for i in range(N_TRAIN)]
    rec = LossRecorder(str(tmp_path / "s"), groups, val_groups, epochs=4, train_ids=ids,
                       val_ids=[f"v{i}" for i in range(N_VAL)], name="my corpus")
    for epoch in range(4):
        rec.add_epoch(*_epoch_arrays(epoch))
    d = load_losses(rec.finish())
    assert d["group_names"] == ["chat", "code", "news"] and d["num_classes"] == 3 and d["dataset"] == "my_corpus"
    assert d["train_ids"].tolist() == ids and d["tr_lbl"][0] == 2  # "news" is group 2 of the sorted names
    single = LossRecorder(str(tmp_path / "one"), epochs=4, n_train=N_TRAIN, n_val=N_VAL)
    for epoch in range(4):
        single.add_epoch(*_epoch_arrays(epoch))
    d = load_losses(single.finish())
    assert d["num_classes"] == 1 and d["group_names"] == ["all"] and not d["tr_lbl"].any()


def test_running_sums_give_the_cld_of_the_full_trajectories(tmp_path):
    full = LossRecorder(str(tmp_path / "full"), *_labels(), epochs=EPOCHS)
    sums = LossRecorder(str(tmp_path / "sums"), *_labels(), epochs=EPOCHS, trajectories="sums")
    for epoch in range(EPOCHS):
        if epoch == 4:  # a new recorder mid-run continues the sums from their saved state
            sums = LossRecorder(str(tmp_path / "sums"), *_labels(), epochs=EPOCHS, trajectories="sums")
            assert sums.epochs_recorded == 4
        for rec in (full, sums):
            rec.add_epoch(*_epoch_arrays(epoch))
    d, s = load_losses(full.finish()), load_sums(sums.finish())
    assert sorted(os.listdir(tmp_path / "sums" / "rows")) == [f"cld_sums_epoch{EPOCHS}.npz"]
    from cld_recorder import CLDSums

    restored = CLDSums(s["tr_lbl"], s["val_lbl"], 3)
    restored.restore(s["sums"])
    np.testing.assert_allclose(restored.scores(), _cld_by_definition(d), atol=1e-9)
    assert s["source"] == "recorder" and s["train_ids"].tolist() == list(range(N_TRAIN))
    ranked = {}
    for name, path in (("full", os.path.join(full.folder, "losses.pickle")), ("sums", os.path.join(sums.folder, "cld_sums.npz"))):
        proc = run_script("compute_cld_scores.py", "--loss_path", path, "--output_path", str(tmp_path / f"{name}.pickle"))
        assert proc.returncode == 0, proc.stderr
        ranked[name] = load_scores(str(tmp_path / f"{name}.pickle"))["indices"]
    assert all(np.array_equal(ranked["full"][c], ranked["sums"][c]) for c in ranked["full"])


def test_checkpoints_replayed_in_order_equal_recording_each_epoch(tmp_path):
    model = _dropout_model()
    (train, val), _ = _loaders()
    live = LossRecorder(str(tmp_path / "live"), *_labels(), epochs=3)
    paths = []
    for epoch in range(3):
        with torch.no_grad():
            model[0].weight.add_(0.1)  # "training"
        torch.save(model.state_dict(), tmp_path / f"epoch{epoch}.pt")
        paths.append(str(tmp_path / f"epoch{epoch}.pt"))
        live.record(model, train, val)

    def make_model(path):
        fresh = _dropout_model()
        fresh.load_state_dict(torch.load(path, weights_only=True))
        return fresh

    replay = LossRecorder(str(tmp_path / "replay"), *_labels(), epochs=3)
    replayed = load_losses(replay.record_checkpoints(make_model, paths, train, val))
    np.testing.assert_array_equal(replayed["tr_loss"], load_losses(live.finish())["tr_loss"])
    for step in (500, 20, 1000):
        os.makedirs(tmp_path / "hf" / f"checkpoint-{step}")
    assert [os.path.basename(p) for p in hf_checkpoints(str(tmp_path / "hf"))] == [
        "checkpoint-20", "checkpoint-500", "checkpoint-1000"]


DDP = """
import os, sys
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from cld_recorder import LossRecorder
from test_recorder import _dropout_model, _labels
dist.init_process_group("gloo", rank=int(sys.argv[1]), world_size=2, init_method="tcp://127.0.0.1:{port}")
g = torch.Generator().manual_seed(1)
x, xv = torch.randn({n}, 5, generator=g), torch.randn({m}, 5, generator=g)
y, yv = (torch.as_tensor(a) for a in _labels())
loaders = [torch.utils.data.DataLoader(ds, batch_size=7, sampler=torch.utils.data.DistributedSampler(ds, shuffle=False))
           for ds in (torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(xv, yv))]
model = _dropout_model()
rec = LossRecorder({folder!r}, *_labels(), epochs=3)
for _ in range(3):
    rec.record(model, *loaders)
print(rec.finish())
dist.destroy_process_group()
"""


def test_two_processes_under_torch_distributed_record_what_one_process_records(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = DDP.format(repo=REPO, tests=os.path.join(REPO, "tests"), port=port, n=N_TRAIN, m=N_VAL,
                      folder=str(tmp_path / "ddp"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for rank in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    model = _dropout_model()
    (train, val), _ = _loaders()
    one = LossRecorder(str(tmp_path / "one"), *_labels(), epochs=3)
    for _ in range(3):
        one.record(model, train, val)
    ddp, single = load_losses(outs[0][0].strip()), load_losses(one.finish())
    for key in ("tr_loss", "val_loss", "tr_margin", "tr_correct"):
        np.testing.assert_allclose(ddp[key].astype(np.float64), single[key].astype(np.float64), atol=1e-6)


def test_the_package_installs_the_recorder_and_nothing_named_utils_or_models(tmp_path):
    import shutil

    clone, target = tmp_path / "clone", tmp_path / "site"  # a copy: the build leaves build/ and egg-info behind
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info",
                                                               "demo", "Data", "Scores", "Results", "Logs", "Splits"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(clone)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    installed = {name for name in os.listdir(target) if not name.endswith((".dist-info", "__pycache__"))}
    assert "cld_recorder.py" in installed and not {"utils", "models", "tests", "bench"} & installed, installed
    check = subprocess.run([sys.executable, "-c", "import sys, cld_recorder; print(cld_recorder.__file__); "
                            "assert 'torch' not in sys.modules"], cwd=str(tmp_path), capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(target)})
    assert check.returncode == 0 and check.stdout.startswith(str(target)), check.stderr


def test_the_recorder_benchmark_runs_and_prints_its_table():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_recorder.py"), "--small"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    from bench.bench_recorder import COLUMNS

    assert lines[0].split() == [w for c in COLUMNS for w in c.split()]
    mlp = lines[1].split()
    assert mlp[0] == "mlp" and int(mlp[-1]) == 300 * (4 + 1 + 2 + 2) + 30 * 4  # the rows of one epoch, in bytes


def test_loaders_and_inputs_the_recorder_cannot_place_are_refused_before_a_wrong_row_is_written(tmp_path):
    model = _dropout_model()
    (train, val), (x, y, xv, yv) = _loaders()
    labels = _labels()
    rec = LossRecorder(str(tmp_path / "r"), *labels, epochs=3)
    dataset = torch.utils.data.TensorDataset(x, y)
    cases = {
        "SubsetRandomSampler visits the examples in an order of its own": torch.utils.data.DataLoader(
            dataset, batch_size=7, sampler=torch.utils.data.SubsetRandomSampler(range(N_TRAIN))),
        "batch_sampler (BatchSampler) chooses the order": torch.utils.data.DataLoader(
            dataset, batch_sampler=torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(dataset), 7, False)),
        "targets differ from the labels given (first at position 0": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x.flip(0), y.flip(0)), batch_size=7),
        "yields an example twice": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y, torch.arange(N_TRAIN) // 2), batch_size=7),
    }
    for message, loader in cases.items():
        with pytest.raises(RecordError, match=re.escape(message)):
            rec.record(model, loader, val)
    assert rec.epochs_recorded == 0 and not os.path.exists(tmp_path / "r" / "recording.json")

    class Stream(torch.utils.data.IterableDataset):  # a streaming dataset read in order
        def __iter__(self):
            return iter(zip(x, y))

    rec.record(model.double(), torch.utils.data.DataLoader(Stream(), batch_size=7), val)  # a float64 model
    assert rec.epochs_recorded == 1


@pytest.mark.parametrize("kwargs,message", [
    ({"train_ids": np.arange(N_TRAIN) + 0.5}, "train_ids must be integers or strings"),
    ({"train_ids": np.arange(N_TRAIN, dtype=np.uint64) + np.uint64(2**63)}, "beyond the int64 range"),
    ({"train_labels": np.arange(N_TRAIN) * 10**6}, "integer labels are class numbers below 1,000,000"),
    ({"val_labels": np.zeros(N_VAL, int)}, "group 1, 2 has training examples but no validation example"),
])
def test_ids_and_groups_the_files_cannot_hold_are_refused_at_once(tmp_path, kwargs, message):
    train, val = _labels()
    args = {"train_labels": train, "val_labels": val, **kwargs}
    with pytest.raises(RecordError, match=re.escape(message)):
        LossRecorder(str(tmp_path / "r"), args.pop("train_labels"), args.pop("val_labels"), epochs=3, **args)


def test_a_binary_model_with_one_output_is_asked_for_its_loss_and_finish_ends_recording(tmp_path):
    (train, val), (x, y, xv, yv) = _loaders()
    one_output = torch.nn.Linear(5, 1)
    rec = LossRecorder(str(tmp_path / "r"), *_labels(), epochs=3)
    with pytest.raises(RecordError, match="pass loss_fn="):
        rec.record(one_output, train, val)
    for epoch in range(3):
        rec.add_epoch(*_epoch_arrays(epoch))
    rec.finish()
    with pytest.raises(RecordError, match=r"record after finish\(\)"):
        rec.record(one_output, train, val)
