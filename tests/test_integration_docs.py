"""docs/integration.md runs as written: its Python blocks in order in one namespace (as a reader
pastes them into one session), its shell commands as commands, in a fresh folder."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

DOC = os.path.join(REPO, "docs", "integration.md")


def _blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", open(DOC, encoding="utf-8").read(), re.S)


def _shell(line: str, cwd: str) -> subprocess.CompletedProcess:
    words = shlex.split(line)
    assert words[0] == "python" and os.path.exists(os.path.join(REPO, words[1])), line
    return subprocess.run([sys.executable, os.path.join(REPO, words[1]), *words[2:]], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPO})


# Lightning's own use of a torch API that torch deprecates; not this project's.
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
def test_every_snippet_of_the_integration_guide_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc__"}
    printed = []
    for language, code in _blocks():
        if language == "bash":
            for line in (l for l in code.splitlines() if l.strip() and not l.startswith("#")):
                proc = _shell(line, str(tmp_path))
                assert proc.returncode == 0, (line, proc.stderr)
                printed.append(proc.stdout)
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, DOC, "exec"), namespace)
        printed.append(out.getvalue())
    # What the guide says happened, happened: a loss file, a coreset of 20% of each class, replayed checkpoints.
    assert printed[0].strip() == str(tmp_path / "runs" / "cancer" / "losses.pickle")
    keep = np.load(tmp_path / "runs" / "cancer" / "keep.npy")
    y_train = namespace["y_train"]
    for c in (0, 1):
        members = int((y_train == c).sum())
        assert int((y_train[keep] == c).sum()) == max(1, int(np.floor(0.2 * members + 0.5)))
    assert keep.dtype == np.int64 and np.all(np.diff(keep) > 0)
    assert f"{len(keep)} of {len(y_train)} examples" in "".join(printed)
    assert os.path.exists(tmp_path / "runs" / "replayed" / "losses.pickle")
    for run in ("text", "lightning"):  # the framework callbacks wrote their loss files when training ended
        assert str(tmp_path / "runs" / run / "losses.pickle") in "".join(printed)
