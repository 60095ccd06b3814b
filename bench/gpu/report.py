"""The GPU check's report: a JSON file rewritten after every step, the targets checked against it."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from bench.gpu.config import LABEL_NOISE, SCHEMA, STEPS, TARGETS, Mode, say
from utils.cli.flags import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_pytest_summary(text: str) -> dict[str, Any]:
    """Counts and seconds from pytest's final summary line (``3 passed, 2 skipped in 4.1s``).

    Args:
        text: pytest's output.

    Returns:
        {"passed", "failed", "skipped", "errors", "xfailed", "xpassed", "deselected": int,
        "seconds": float | None}.
    """
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors", "xfailed", "xpassed", "deselected"), 0)
    summary = next((line for line in reversed(text.splitlines()) if re.search(r"\bin [\d.]+s\b", line)), "")
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", summary):
        counts["errors" if word.startswith("error") else word] += int(number)
    seconds = re.search(r"\bin ([\d.]+)s\b", summary)
    return {**counts, "seconds": float(seconds.group(1)) if seconds else None}

def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain and NaN/inf made None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

def write_json(path: str, record: dict) -> None:
    """Write ``record`` to ``path`` atomically (readers see the old file or the new one)."""
    from utils.files.atomic import atomic_write

    text = json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))

def read_json(path: str) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (None when git is missing)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": None if status is None else bool(status)}

def _bench_value(steps: dict, name: str) -> float | None:
    """A bench target's value from the compiled configuration's stage records."""
    compiled = steps.get("bench", {}).get("configs", {}).get("compiled", {})
    s1, s3 = compiled.get("stage1") or {}, compiled.get("stage3") or {}
    if name == "stage1_epoch_s":
        return s1.get("epoch_s")
    if name == "stage3_epoch_s":
        return s3.get("epoch_s")
    if name == "compile_warmup_s":
        warmups = [w for w in (s1.get("warmup_s"), s3.get("warmup_s")) if w is not None]
        return max(warmups) if warmups else None
    return compiled.get("stage1_164_epochs_s")

def target_value(steps: dict, name: str) -> Any:
    """The measured value of target ``name`` from the steps' records (None when not measured).

    Args:
        steps: the report's ``steps``.
        name: a key of :data:`TARGETS`.

    Returns:
        The value, or None when its step did not succeed.
    """
    step = TARGETS[name][0]
    record = steps.get(step) or {}
    if record.get("status") != "ok":
        return None
    if step == "bench":
        return _bench_value(steps, name)
    if name == "fidelity_jaccard_mean":
        return record.get("default_jaccard_mean")
    if name == "fp32_collect_extra_s":
        return record.get("extra_s")
    if name == "gpu_tests_failed":
        return record["failed"] + record["errors"] if record.get("passed") else None
    return record.get("ok")

def _meets(value: Any, rule: str, threshold: Any) -> bool:
    if value is None:
        return False
    return {"<=": value <= threshold, "<": value < threshold, ">=": value >= threshold,
            "==": value == threshold}[rule]

def check_targets(steps: dict, enforce: bool) -> dict[str, dict]:
    """Every target's value, threshold and verdict.

    Args:
        steps: the report's ``steps``.
        enforce: False in CPU mode: verdicts are None (the thresholds are for one H200).

    Returns:
        {name: {"value", "target", "rule", "ok", "what"}}.
    """
    out = {}
    for name, (_, rule, threshold, what) in TARGETS.items():
        value = target_value(steps, name)
        out[name] = {"value": value, "target": threshold, "rule": rule,
                     "ok": _meets(value, rule, threshold) if enforce else None, "what": what}
    return out

def overall_ok(report: dict, enforce: bool) -> bool | None:
    """True when every step succeeded and every target is met; None when targets are not enforced."""
    if not enforce:
        return None
    steps_ok = all(report["steps"].get(name, {}).get("status") == "ok" for name in STEPS)
    return steps_ok and all(t["ok"] for t in report["targets"].values())

def previous_report(path: str, mode: Mode) -> dict | None:
    """The report a rerun may take skipped steps from: ``path``'s, if it is one of this mode."""
    old = read_json(path)
    if old and old.get("schema") == SCHEMA and old.get("mode") == mode.name and isinstance(old.get("steps"), dict):
        return old
    return None

def skipped_steps(skip: list[str], previous: dict | None) -> list[str]:
    """Step names to skip: the named ones, and with ``done`` those the previous report has as ok."""
    names = set(skip) - {"done"}
    if "done" in skip and previous:
        names |= {n for n, r in previous["steps"].items() if isinstance(r, dict) and r.get("status") == "ok"}
    return [n for n in STEPS if n in names]

def new_report(mode: Mode, args: Settings, previous: dict | None) -> dict:
    commit = git_commit()
    base = previous or {}
    return {"schema": SCHEMA, "mode": mode.name, "device": base.get("device"), "torch": base.get("torch"),
            "commit": commit["commit"], "dirty": commit["dirty"], "env": base.get("env"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": None, "settings": asdict(mode),
            "data": "fake CIFAR-100" if not args.data_path else os.path.abspath(args.data_path),
            "label_noise": LABEL_NOISE if not args.data_path else 0.0, "steps": {}, "targets": {}, "ok": None}

def print_summary(report: dict) -> None:
    say("targets:")
    for name, t in report["targets"].items():
        value = t["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        verdict = {True: "ok", False: "MISSED", None: "-"}[t["ok"]]
        print(f"  {name:28s} {shown:>10s} {t['rule']:>2s} {t['target']!s:<6s} {verdict}", flush=True)
    say(f"ok: {report['ok']}; {report['seconds']:.1f} s")
