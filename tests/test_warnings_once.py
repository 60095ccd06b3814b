"""Warnings are for the user's mistakes, each printed once: in a grid, a stage-3 model that did not fit
its coreset is one note at the end (the table marks its cell), not a warning per run; a warning the
grid's runs repeat (a foreign file in the results folder) is printed once and counted; and a
warning that can fire many times within one run is one line with its count."""
from __future__ import annotations

import json
import os

from conftest import s3_flags
from utils import paths
from utils.grid import runner
from utils.grid.plan import Step


def _steps(data: str, scores: str, base, seeds, **extra) -> list[Step]:
    """Stage-3 steps of a grid over ``seeds`` on the reference scores."""
    steps = []
    for seed in seeds:
        name = f"run_seed{seed}"
        flags = s3_flags(data, scores, base, manual_seed=seed, name=name, schedule=[], **extra)
        files = paths.RunFiles(flags["checkpoint_path"], flags["logpath"], name,
                               paths.run_json(flags["results_dir"], name))
        steps.append(Step(3, flags, files.output, files.lock, files.last, name))
    return steps


def _lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def test_a_grid_notes_its_unfit_runs_once_and_prints_a_repeated_warning_once(data, reference, tmp_path, capfd):
    # A learning rate of 1e-9 leaves the model untrained: it cannot fit 90% of its coreset. The
    # third run fits by definition (--fit_threshold 0).
    steps = _steps(data, reference["scores"], tmp_path, [0, 1], learning_rate=1e-9, epochs=1)
    steps += _steps(data, reference["scores"], tmp_path, [2], fit_threshold=0.0, epochs=1)
    runs_dir = tmp_path / "res" / "runs"
    os.makedirs(runs_dir)
    for i in range(4):  # not results of stage 3: each run would warn of all four
        (runs_dir / f"stray{i}.json").write_text("[1]")
    counts = runner.Runner(steps, jobs=1).run()
    out, err = capfd.readouterr()
    assert counts["ran"][3] == 3
    verdicts = [json.load(open(step.output))["converged"] for step in steps]
    assert verdicts == [False, False, True]
    warnings = _lines(err, "warning: ") + _lines(out, "warning: ")
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"warning: 4 files of {runs_dir} are not results of stage 3; results.csv leaves "
                                  "them out: ") and warnings[0].endswith("; and 1 more")
    assert warnings[1].startswith("warning: 3 runs of the grid gave the warning printed once above (4 files of")
    assert "fit only" not in err + out
    notes = [line for line in _lines(out, "note: ") if "did not fit" in line]
    assert notes == ["note: 2 of 3 runs did not fit their coreset (marked † in the table): cld top k=2 (2 runs)"]


def test_a_grid_in_worker_processes_prints_no_warning_for_unfit_runs(data, reference, tmp_path, capfd, monkeypatch):
    """--jobs 2: the workers' warnings come back to the grid, which keeps the unfit ones for its note;
    the workers keep OMP_NUM_THREADS (threads change the numbers), not their share of the cores."""
    threads = max(1, (os.cpu_count() or 1) // 2) + 2
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    steps = _steps(data, reference["scores"], tmp_path, [0, 1], learning_rate=1e-9, epochs=1)
    runner.Runner(steps, jobs=2).run()
    assert [json.load(open(step.output))["machine"]["threads"] for step in steps] == [threads, threads]
    out, err = capfd.readouterr()
    assert "warning" not in (out + err).lower(), err
    notes = [line for line in _lines(out, "note: ") if "did not fit" in line]
    assert notes == ["note: 2 of 2 runs did not fit their coreset (marked † in the table): cld top k=2 (2 runs)"]


def test_the_note_groups_unfit_runs_by_method_and_size_and_stays_short(tmp_path):
    steps = []
    for i, (method, k, converged) in enumerate([("craig", 5, False), ("craig", 5, False), ("craig", 40, True),
                                                ("gradmatch", 5, False), ("gradmatch", 40, False),
                                                *((f"m{j}", 5, False) for j in range(7))]):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps({"method": method, "order": "top", "samples_per_class": k, "fraction": None,
                                    "model_arch": "a", "score_model_arch": "a", "converged": converged}))
        steps.append(Step(3, {}, str(path), str(tmp_path / f"r{i}.lock")))
    steps.append(Step(3, {}, str(tmp_path / "missing.json"), str(tmp_path / "m.lock")))  # no result yet
    assert runner.unfit_note(steps) == ("note: 11 of 12 runs did not fit their coreset (marked † in the table): "
                                        "craig top k=5 (2 runs), gradmatch top k=5,40 (2 runs), m0 top k=5 (1 run), "
                                        "m1 top k=5 (1 run), m2 top k=5 (1 run), m3 top k=5 (1 run), and 3 more")
    assert runner.unfit_note(steps[2:3]) == ""
