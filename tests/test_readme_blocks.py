"""README.md's code blocks as a new user meets them right after the setup block (``make test``,
then ``source .venv/bin/activate``): every fenced block is classified in :data:`BLOCKS`, and the
cheap ones run in a fresh copy of the repository's files (what git tracks, no outputs), with bash
and ``set -e``, with ``python`` the interpreter running these tests.

* run as written: the by-hand stages on the digits; the numbers the sentence below the block
  quotes are the numbers the run prints (read from the README, never written here);
* run with ``--dry_run`` appended to each ``reproduce_table.py`` command: it plans the grid and
  prints every stage command without training (the exit status and the printed commands checked);
* flags parsed, not run: the CIFAR-100 stage commands (the data cannot be downloaded here) go
  through the scripts' own flag layer (:meth:`utils.cli.flags.FlagSet.parse_argv`, then
  :meth:`~utils.cli.flags.FlagSet.settings` with its cross-flag checks), so a renamed or mistyped
  flag fails. A ``...`` placeholder is replaced by the file :data:`PLACEHOLDERS` names for its
  flag (the file the block above makes), so its value is checked like any other; a ``...`` after
  any other flag, or on its own, fails until it gets an entry;
* not run, with the reason.

A block the table does not know fails the test: classify it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from utils.cli.reference import SCRIPTS
from utils.errors import UserError

README = os.path.join(REPO, "README.md")

RUN = "run as written"
DRY_RUN = "run with --dry_run appended to each reproduce_table.py command"
PARSE = "flags parsed, not run"
NOT_RUN = "not run"

# A distinctive piece of each fenced block -> (class, why).
BLOCKS: dict[str, tuple[str, str]] = {
    "make demo": (NOT_RUN, "the whole demo grid (460 trainings), minutes on a CPU"),
    "python get_loss_values.py --dataset digits": (RUN, "the three stages on the embedded digits, under a minute"),
    "make test": (NOT_RUN, "the setup block: see NOT_RUN_COMMANDS"),
    "python get_loss_values.py --dataset CIFAR100": (PARSE, "CIFAR-100 would be downloaded and trained for hours"),
    "--method forgetting": (PARSE, "reads the CIFAR-100 files of the block above"),
    "--methods cld,el2n,": (DRY_RUN, "the CIFAR-100 grid of every baseline, on CUDA"),
    "--results_dir Results/cld_orders": (DRY_RUN, "the CIFAR-100 grid of Figure 1, on CUDA"),
    "rec = LossRecorder(": (NOT_RUN, "a sketch: train_one_epoch, model and the loaders are the reader's; "
                                     "docs/integration.md's complete loops run in tests/test_integration_docs.py"),
    "bench/ docs/ tests/": (NOT_RUN, "the Layout's file tree, not commands"),
}
# Every command of a NOT_RUN shell block, by how it begins, and why it is not run here.
NOT_RUN_COMMANDS = {
    "make test": "the test suite itself, which this test is part of",
    "make demo": "the whole demo grid, minutes on a CPU",
    "source .venv/bin/activate": "the harness does its equivalent: PATH starts with this interpreter's folder",
}
# A `...` in a PARSE block, by the flag before it -> the value checked in its place.
PLACEHOLDERS = {"--score_path": "Scores/CLD_CIFAR100_resnet18_seed1234_scores.pickle"}
SHELL = ("bash", "sh", "shell", "console")
STAGE_SCRIPTS = {script: flags for script, flags, _ in SCRIPTS if script != "reproduce_table.py"}
STAGE_OF = {"get_loss_values.py": 1, "compute_cld_scores.py": 2, "train_on_coresets.py": 3}


def _readme() -> str:
    return open(README, encoding="utf-8").read()


def _fenced(text: str) -> list[tuple[str, str, int]]:
    """Every fenced block: (language, code, offset of the line after its closing fence)."""
    fence = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$\n?", re.M | re.S)
    return [(m.group(1), m.group(2), m.end()) for m in fence.finditer(text)]


def _classify(code: str) -> str:
    """The key of :data:`BLOCKS` that ``code`` holds (exactly one)."""
    keys = [key for key in BLOCKS if key in code]
    assert len(keys) == 1, f"README block matches {keys or 'no entry'} of BLOCKS; classify it:\n{code}"
    return keys[0]


def _blocks() -> list[tuple[str, str, str, int]]:
    """(key, language, code, end) of every README block the table classifies (unclassified ones are left
    to :func:`test_every_readme_block_is_classified`)."""
    out = []
    for language, code, end in _fenced(_readme()):
        keys = [key for key in BLOCKS if key in code]
        if len(keys) == 1:
            out.append((keys[0], language, code, end))
    return out


def _of_class(cls: str) -> list[tuple[str, str]]:
    return [(key, code) for key, _, code, _ in _blocks() if BLOCKS[key][0] == cls]


def _commands(code: str) -> list[str]:
    """The block's commands as bash reads them: continuation lines joined, blanks and comments left out."""
    text = code.replace("\\\n", "")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _fresh_copy(dest) -> str:
    """The repository's files as a clone has them, copied into ``dest``: the tracked files as they are in
    the working tree, and new files git does not ignore (a module not yet added travels with the code
    that imports it)."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(REPO, ".git")):
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = os.path.join(REPO, rel)
        if not os.path.lexists(src):  # deleted in the working tree
            continue
        dst = os.path.join(str(dest), rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    return str(dest)


def _bash(script: str, cwd: str) -> subprocess.CompletedProcess:
    """``script`` run by bash with ``set -e`` in ``cwd``, as a user's fresh shell after the setup block:
    ``python`` is this interpreter, and nothing of the test run's own settings leaks in (no PYTHONPATH;
    no OMP_NUM_THREADS, so the scripts choose their threads as the README describes; no GPU, since the
    README's numbers are a CPU run)."""
    bindir = os.path.dirname(sys.executable)
    assert os.path.exists(os.path.join(bindir, "python")), f"no `python` beside {sys.executable}"
    assert shutil.which("bash"), "bash is needed to run the README's shell blocks"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "OMP_NUM_THREADS")}
    env.update(PATH=bindir + os.pathsep + os.environ.get("PATH", ""), CUDA_VISIBLE_DEVICES="")
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _with_flag(command: str, flag: str) -> str:
    """``command`` with ``flag`` appended (before a trailing comment, which would swallow it)."""
    words = shlex.split(command, comments=True)
    return command + " " + flag if words == shlex.split(command) else shlex.join(words + [flag])


def _check_flags(command: str) -> dict:
    """A stage command's flags read and checked by its script's flag set, as its entry point does
    before any work; returns the checked settings. Raises AssertionError naming the command."""
    words = shlex.split(command, comments=True)
    assert words[:1] == ["python"] and len(words) > 1 and words[1] in STAGE_SCRIPTS, \
        f"not a stage command; classify its block: {command}"
    assert os.path.exists(os.path.join(REPO, words[1])), command
    args = words[2:]
    for i, word in enumerate(args):
        if word == "...":
            assert i > 0 and args[i - 1] in PLACEHOLDERS, \
                f"`...` after {args[i - 1] if i else 'the script'}: add the flag to PLACEHOLDERS: {command}"
            args[i] = PLACEHOLDERS[args[i - 1]]
    flags = STAGE_SCRIPTS[words[1]]
    try:
        return dict(flags.settings(flags.parse_argv(args)))
    except UserError as exc:
        raise AssertionError(f"{command}\nerror: {exc}") from None


# ----------------------------------------------------------------------------- the table


def test_every_readme_block_is_classified():
    blocks = _fenced(_readme())
    assert blocks, "no fenced blocks found in README.md"
    used = [_classify(code) for _, code, _ in blocks]
    unused = sorted(set(BLOCKS) - set(used))
    assert not unused, f"BLOCKS entries that match no README block (remove or rekey them): {unused}"
    for language, code, _ in blocks:
        key = _classify(code)
        cls = BLOCKS[key][0]
        if cls != NOT_RUN:
            assert language in SHELL, (key, language)
        if cls == NOT_RUN and language in SHELL:
            for command in _commands(code):
                known = [c for c in NOT_RUN_COMMANDS if command == c or command.startswith(c + " ")]
                assert known, f"command {command!r} of a block that is not run: classify it"
        if cls == DRY_RUN:
            for command in _commands(code):
                assert shlex.split(command)[:2] == ["python", "reproduce_table.py"], \
                    f"{command!r} is no reproduce_table.py command; classify its block"


def test_a_block_the_table_does_not_know_and_a_mistyped_flag_fail():
    with pytest.raises(AssertionError, match="classify it"):
        _classify("python get_loss_values.py --epochs 3\n")
    with pytest.raises(AssertionError, match="did you mean --samples_per_class"):
        _check_flags("python train_on_coresets.py --score_path ... --samples_per_clas 50")
    with pytest.raises(AssertionError, match="PLACEHOLDERS"):
        _check_flags("python compute_cld_scores.py --loss_path ...")


# ----------------------------------------------------------------------------- run as written


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory):
    """The README's one RUN block, run once in a fresh copy: (its code, the finished bash, the copy)."""
    ((_, code),) = _of_class(RUN)
    copy = _fresh_copy(tmp_path_factory.mktemp("readme_by_hand"))
    return code, _bash(code, copy), copy


def test_the_by_hand_block_runs_as_written(by_hand):
    code, proc, copy = by_hand
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    commands = _commands(code)
    assert [shlex.split(c)[1] for c in commands] == ["get_loss_values.py", "compute_cld_scores.py",
                                                     "train_on_coresets.py"]
    # "The third command is the one stage 2 prints"
    printed = re.findall(r"^  (python train_on_coresets\.py .*)$", proc.stdout, re.M)
    assert printed == [commands[2]], printed
    runs = os.listdir(os.path.join(copy, "Results", "runs"))
    assert len(runs) == 1 and json.load(open(os.path.join(copy, "Results", "runs", runs[0])))["converged"]


def test_the_numbers_below_the_by_hand_block_are_the_ones_it_prints(by_hand):
    code, proc, _ = by_hand
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = _readme()
    (end,) = [end for _, _, c, end in _blocks() if c == code]
    below = " ".join(text[end:].split("\n## ", 1)[0].split())  # the rest of the section, one line
    said = re.search(r"Stage 1 reached (\d+(?:\.\d+)?)% test accuracy; stage 3 trained (\d+) SGD steps on (\d+) "
                     r"examples and reached (\d+(?:\.\d+)?)% \(final epoch\) with every coreset example fit", below)
    assert said, f"the sentence below the by-hand block no longer reads as this test expects: {below[:400]}"
    stage1, steps, examples, final = said.groups()
    got1 = re.findall(r"^best test accuracy (\d+(?:\.\d+)?)%;", proc.stdout, re.M)
    got3 = re.findall(r"^best test accuracy \d+(?:\.\d+)?%, final (\d+(?:\.\d+)?)%; accuracy on the coreset "
                      r"(\d+(?:\.\d+)?)%", proc.stdout, re.M)
    plan = re.findall(r"^training plan: (\d+) optimizer steps", proc.stdout, re.M)
    coreset = re.findall(r"^coreset of (\d+) ", proc.stdout, re.M)
    assert len(got1) == len(got3) == len(plan) == len(coreset) == 1, proc.stdout[-3000:]
    printed = dict(stage1=got1[0], steps=plan[0], examples=coreset[0], final=got3[0][0], fit=got3[0][1])
    readme = dict(stage1=stage1, steps=steps, examples=examples, final=final, fit="100.00")
    assert printed == readme, f"printed {printed}, README says {readme}"


# ----------------------------------------------------------------------------- cheap variants


@pytest.mark.parametrize("key,code", _of_class(DRY_RUN), ids=[k for k, _ in _of_class(DRY_RUN)])
def test_a_grid_block_runs_with_dry_run(key, code, tmp_path):
    commands = _commands(code)
    script = "\n".join(_with_flag(c, "--dry_run") for c in commands) + "\n"
    proc = _bash(script, _fresh_copy(tmp_path))
    assert proc.returncode == 0, (script, proc.stderr[-3000:])
    # One plan per command; in a fresh copy nothing is done, so every stage command of it is printed.
    sections = re.split(r"^# grid: ", proc.stdout, flags=re.M)[1:]
    assert len(sections) == len(commands), proc.stdout[:2000]
    for section in sections:
        counts = re.match(r"(\d+) stage-1, (\d+) stage-2, (\d+) stage-3 runs; commands that would run now:\n",
                          section)
        assert counts, section[:300]
        lines = section[counts.end():].splitlines()
        scripts = [shlex.split(line)[1] for line in lines]
        assert all(line.startswith("python ") for line in lines), lines[:5]
        assert [scripts.count(s) for s in STAGE_OF] == [int(n) for n in counts.groups()], counts.group(0)
        assert all(int(n) > 0 for n in counts.groups())
    assert not os.path.exists(tmp_path / "Scores") and not os.path.exists(tmp_path / "Results")


@pytest.mark.parametrize("key,code", _of_class(PARSE), ids=[k for k, _ in _of_class(PARSE)])
def test_a_cifar100_stage_block_has_only_flags_its_scripts_take(key, code):
    commands = _commands(code)
    assert commands
    for command in commands:
        _check_flags(command)
