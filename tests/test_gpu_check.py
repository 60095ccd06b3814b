"""bench/gpu_check.py: its tiny CPU mode end to end (every step runs, the report's layout, --skip)
and its helpers against independent computations."""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

from bench.gpu import config, fidelity, report as reports
from conftest import assert_user_error, run_script

SCRIPT = "bench/gpu_check.py"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One ``--cpu`` run; returns (finished process, report, its folder, seconds)."""
    base = tmp_path_factory.mktemp("gpu_check")
    out = base / "x.json"
    started = time.perf_counter()
    proc = run_script(SCRIPT, "--cpu", "--out", str(out), "--workdir", str(base / "work"), cwd=str(base))
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out) as f:
        return proc, json.load(f), base, seconds


def test_cpu_mode_runs_every_step_and_writes_the_report(cpu_run):
    proc, report, base, seconds = cpu_run
    assert {"device", "torch", "commit", "steps", "targets", "ok"} <= set(report)
    assert report["schema"] == config.SCHEMA and report["mode"] == "cpu"
    assert report["device"].startswith("cpu") and report["torch"].split("+")[0].count(".") == 2
    assert report["commit"] is None or len(report["commit"]) == 40
    assert list(report["steps"]) == list(config.STEPS)
    for name, step in report["steps"].items():
        assert step["status"] == "ok", (name, step)
        assert step["seconds"] > 0 and "reused" not in step
    # Targets are reported with their values but not enforced in CPU mode.
    assert report["ok"] is None and set(report["targets"]) == set(config.TARGETS)
    for name, target in report["targets"].items():
        assert target["ok"] is None and target["target"] == config.TARGETS[name][2]
        if name != "gpu_tests_failed":  # no GPU test passed here: nothing to count
            assert target["value"] is not None, name
    # A progress line per step, with the elapsed time; the work folder's data is kept, the run's caches are not.
    for i, name in enumerate(config.STEPS, 1):
        assert f"step {i}/5 {name}: started" in proc.stdout and f"step {i}/5 {name}: ok in" in proc.stdout
    assert sorted(os.listdir(base / "work")) == ["data"]
    print(f"gpu_check --cpu took {seconds:.1f} s")


def test_gpu_tests_are_all_skipped_without_cuda(cpu_run):
    step = cpu_run[1]["steps"]["pytest"]
    assert step["passed"] == step["failed"] == step["errors"] == 0
    assert step["skipped"] >= 6 and step["returncode"] == 0 and "no CUDA" in step["note"]


def test_bench_step_records_both_configurations(cpu_run):
    bench = cpu_run[1]["steps"]["bench"]
    assert set(bench["configs"]) == {"compiled", "eager"}
    compiled = bench["configs"]["compiled"]
    assert compiled["compile"] == "aot_eager" and bench["configs"]["eager"]["compile"] is False
    for cfg in bench["configs"].values():
        s1, s3 = cfg["stage1"], cfg["stage3"]
        assert s1["epochs"] == s3["epochs"] == 2 and s1["train_n"] == 36 and s3["train_n"] == 4
        for stage in (s1, s3):
            assert stage["epoch_s"] > 0 and stage["wall_s"] > 0 and len(stage["per_epoch_s"]) == 2
            assert stage["warmup_s"] == pytest.approx(stage["first_s"] - stage["epoch_s"])
        assert s1["collect_s"] > 0 and s3["collect_s"] == 0
        assert cfg["stage1_164_epochs_s"] == pytest.approx(s1["warmup_s"] + 164 * s1["epoch_s"])
    for stage in (compiled["stage1"], compiled["stage3"]):
        assert stage["graphs"] >= 2 and stage["graph_breaks"] == 0 and stage["cudagraph_fallbacks"] == 0


def test_precision_and_collection_steps(cpu_run):
    steps = cpu_run[1]["steps"]
    precision = steps["precision"]
    assert precision["same_weights"]["n"] == precision["one_epoch"]["n"] == 36
    assert precision["ok"] is True and precision["same_weights"]["max_abs"] > 0  # bf16 really ran
    collection = steps["collection"]
    assert (collection["train_n"], collection["val_n"]) == (36, 4)
    assert collection["fp32_s"] > 0 and collection["bf16_s"] > 0
    assert collection["extra_s"] == pytest.approx(collection["fp32_s"] - collection["bf16_s"])


def test_fidelity_compares_cld_of_two_loss_matrices(cpu_run):
    fidelity = cpu_run[1]["steps"]["fidelity"]
    assert fidelity["loss_shape"] == [3, 36] and fidelity["val_n"] == 4 and fidelity["classes"] == 4
    assert 0.0 <= fidelity["jaccard_min"] <= fidelity["jaccard_mean"] <= 1.0
    assert fidelity["cld_corr"] is None or -1.0 <= fidelity["cld_corr"] <= 1.0
    assert fidelity["loss_bf16_vs_fp32"]["max_abs"] > 0  # the two matrices really differ
    assert fidelity["fp32_vs_stage1_max_abs"] < 1e-3  # the fp32 matrix is the losses stage 1 recorded
    target = cpu_run[1]["targets"]["fidelity_jaccard_mean"]
    assert target["value"] == fidelity["default_jaccard_mean"] and target["rule"] == ">="
    assert 0.0 <= fidelity["default_jaccard_min"] <= fidelity["default_jaccard_mean"] <= 1.0


def test_skip_reuses_earlier_results_and_reruns_the_others(cpu_run, tmp_path):
    report = cpu_run[1]
    out = tmp_path / "x.json"
    shutil.copy(cpu_run[2] / "x.json", out)
    started = time.perf_counter()
    proc = run_script(SCRIPT, "--cpu", "--out", str(out), "--skip", "done", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.perf_counter() - started < 30  # nothing ran
    again = json.loads(out.read_text())
    for name in config.STEPS:
        assert again["steps"][name]["reused"] is True and "skipped" in proc.stdout
        assert again["steps"][name]["status"] == "ok"
    assert again["steps"]["fidelity"]["jaccard_mean"] == report["steps"]["fidelity"]["jaccard_mean"]
    assert again["device"] == report["device"] and again["targets"] == report["targets"]
    # Skipping all but one step: that step runs again, the others are taken from the report.
    proc = run_script(SCRIPT, "--cpu", "--out", str(out), "--skip", "pytest,bench,collection,fidelity",
                      cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    third = json.loads(out.read_text())
    assert "reused" not in third["steps"]["precision"] and third["steps"]["precision"]["status"] == "ok"
    assert all(third["steps"][n]["reused"] for n in config.STEPS if n != "precision")
    # Without an earlier report a skipped step is recorded as skipped.
    fresh = tmp_path / "fresh.json"
    proc = run_script(SCRIPT, "--cpu", "--out", str(fresh), "--skip", ",".join(config.STEPS), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {s["status"] for s in json.loads(fresh.read_text())["steps"].values()} == {"skipped"}


def test_a_failing_or_late_step_is_recorded_and_the_next_step_still_runs(tmp_path):
    out = tmp_path / "failed.json"
    proc = run_script(SCRIPT, "--cpu", "--out", str(out), "--skip", "pytest,bench,collection", "--data_path", "missing",
                      cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = json.loads(out.read_text())["steps"]
    for name in ("precision", "fidelity"):  # the second ran in a fresh worker after the first failed
        assert steps[name]["status"] == "error" and str(tmp_path / "missing") in steps[name]["error"]
        assert steps[name]["traceback"]
    late = tmp_path / "late.json"
    proc = run_script(SCRIPT, "--cpu", "--out", str(late), "--skip", "pytest,collection,fidelity", "--timeout", "1",
                      cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(late.read_text())
    assert [report["steps"][n]["status"] for n in config.STEPS] == \
        ["skipped", "timeout", "timeout", "skipped", "skipped"]
    assert report["targets"]["stage1_epoch_s"]["value"] is None


def test_bad_flags_are_one_line_errors(tmp_path):
    proc = run_script(SCRIPT, "--cpu", "--skip", "fidelty", cwd=str(tmp_path))
    assert_user_error(proc, "fidelty", "fidelity")
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------- helpers


def _independent_jaccard(a: np.ndarray, b: np.ndarray, labels: np.ndarray, k: int) -> dict[int, float]:
    """Per class, the Jaccard index of the k highest-scoring positions under a and under b."""
    out = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        top_a = set(members[np.argsort(-a[members], kind="stable")[:k]])
        top_b = set(members[np.argsort(-b[members], kind="stable")[:k]])
        out[int(c)] = len(top_a & top_b) / len(top_a | top_b)
    return out


def test_top_fraction_jaccard_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    n_classes, per_class = 3, 50  # top 10%: 5 examples per class
    labels = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(labels)
    indices = rng.permutation(1000)[:labels.size]  # dataset indices need not be positions
    a = rng.normal(size=labels.size)
    b = a.copy()
    # Plant: in class 0 swap the 5th and 6th best (one member leaves, one enters: J = 4/6); in
    # class 1 reverse the order (the top 5 become the bottom 5: J = 0); class 2 unchanged (J = 1).
    c0 = np.flatnonzero(labels == 0)[np.argsort(-a[labels == 0])]
    b[c0[4]], b[c0[5]] = a[c0[5]], a[c0[4]]
    c1 = np.flatnonzero(labels == 1)
    b[c1] = -a[c1]
    got = fidelity.top_fraction_jaccard(a, b, labels, indices, 0.1)
    assert got == pytest.approx({0: 4 / 6, 1: 0.0, 2: 1.0})
    assert got == pytest.approx(_independent_jaccard(a, b, labels, 5))
    random_b = rng.normal(size=labels.size)
    assert fidelity.top_fraction_jaccard(a, random_b, labels, indices) == \
        pytest.approx(_independent_jaccard(a, random_b, labels, 5))
    assert fidelity.top_count(9) == 1 and fidelity.top_count(500 * 0.9) == 45 and fidelity.top_count(3) == 1


def test_pytest_summary_is_parsed():
    text = "ss..F\n==== 1 failed, 3 passed, 2 skipped, 1 error, 4 warnings in 41.27s ===="
    got = reports.parse_pytest_summary(text)
    assert (got["passed"], got["failed"], got["skipped"], got["errors"], got["seconds"]) == (3, 1, 2, 1, 41.27)
    assert reports.parse_pytest_summary("7 skipped in 2.32s")["skipped"] == 7
    assert reports.parse_pytest_summary("no summary")["seconds"] is None


def _steps(epoch: float, jaccard: float, failed: int = 0) -> dict:
    stage = {"epoch_s": epoch, "warmup_s": 40.0}
    return {"pytest": {"status": "ok", "passed": 6, "failed": failed, "errors": 0},
            "bench": {"status": "ok", "configs": {"compiled": {"stage1": stage, "stage3": {"epoch_s": 0.2,
                                                                                        "warmup_s": 50.0},
                                                               "stage1_164_epochs_s": 40.0 + 164 * epoch}}},
            "precision": {"status": "ok", "ok": True},
            "collection": {"status": "ok", "extra_s": 0.25},
            "fidelity": {"status": "ok", "default_jaccard_mean": jaccard, "jaccard_mean": 0.5}}


def test_targets_are_checked_against_their_thresholds():
    met = reports.check_targets(_steps(1.2, 0.97), enforce=True)
    assert all(t["ok"] for t in met.values()), met
    assert met["compile_warmup_s"]["value"] == 50.0  # the larger of the two stages' warm-ups
    missed = reports.check_targets(_steps(1.6, 0.9, failed=1), enforce=True)
    assert {n for n, t in missed.items() if not t["ok"]} == \
        {"stage1_epoch_s", "stage1_164_epochs_s", "fidelity_jaccard_mean", "gpu_tests_failed"}
    failed_step = {**_steps(1.2, 0.97), "fidelity": {"status": "error", "error": "boom"}}
    verdict = reports.check_targets(failed_step, enforce=True)["fidelity_jaccard_mean"]
    assert verdict["value"] is None and verdict["ok"] is False
    assert all(t["ok"] is None for t in reports.check_targets(_steps(1.6, 0.9), enforce=False).values())

