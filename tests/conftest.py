"""Shared fixtures: tiny fake datasets in torchvision's layout, small stage-1 runs, a finished
stage 1 + 2 + 3 pipeline, and helpers that run the scripts as a user would."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest

from utils.cpu_kernels import pin

pin("portable")  # before torch loads, as the scripts do: the tests compute with the kernels users' runs use
import torch  # noqa: E402

from fakedata import write_fake_cifar  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(2)

# A small, fast stage-1 configuration on the CPU (fp32: bit-for-bit repeatable).
FAST = dict(model_arch="resnet20", device="cpu", precision="fp32", batch_size=32, test_batch_size=64,
            workers=0, download=False)


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory):
    """A fake CIFAR-100 (8 of its 100 classes populated, 20 training images each)."""
    root = tmp_path_factory.mktemp("data")
    labels = write_fake_cifar(str(root), "CIFAR100", per_class=20, test_per_class=4, num_classes=8)
    return str(root), labels


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> str:
    """A fake CIFAR-10: 4 training images per class (30 train / 10 validation), 2 test images per class."""
    root = str(tmp_path_factory.mktemp("tiny"))
    write_fake_cifar(root, "CIFAR10", per_class=4, test_per_class=2)
    return root


def out_dirs(base) -> dict:
    """Every output folder of a run under ``base`` (nothing lands in the working directory)."""
    base = str(base)
    return dict(checkpoint_path=os.path.join(base, "ckpt"), logpath=os.path.join(base, "logs"),
                scores_dir=os.path.join(base, "scores"), splits_dir=os.path.join(base, "splits"))


@pytest.fixture(scope="session")
def stage1_run(cifar100_root, tmp_path_factory):
    """One 3-epoch stage-1 run on the fake CIFAR-100; returns (loss path, run folder)."""
    import get_loss_values

    base = tmp_path_factory.mktemp("stage1")
    path = get_loss_values.main(data_path=cifar100_root[0], dataset="CIFAR100", epochs=3, **FAST, **out_dirs(base))
    return path, str(base)


# Stage 1 and 3's epochs in the tiny CIFAR-10 runs of s1_flags / s3_flags.
EPOCHS = 3


def flag_args(flags: dict) -> list[str]:
    """``flags`` as a command line: ``--name value`` for each."""
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def s1_flags(data: str, base, **extra) -> dict:
    """Stage 1 on the tiny CIFAR-10: 30 training images, batch 8 (4 steps an epoch), fp32 on the CPU."""
    return {**dict(data_path=data, dataset="CIFAR10", model_arch="resnet20", device="cpu", precision="fp32",
                   batch_size=8, test_batch_size=64, workers=0, download=False, epochs=EPOCHS),
            **out_dirs(base), **extra}


def s3_flags(data: str, score_path: str, base, **extra) -> dict:
    return {**dict(score_path=score_path, data_path=data, samples_per_class=2, device="cpu", precision="fp32",
                   batch_size=8, test_batch_size=64, workers=0, download=False, epochs=EPOCHS, name="run",
                   checkpoint_path=os.path.join(base, "ckpt"), logpath=os.path.join(base, "logs"),
                   results_dir=os.path.join(base, "res")), **extra}


@pytest.fixture(scope="session")
def reference(data, tmp_path_factory) -> dict:
    """Uninterrupted stage 1 on the tiny CIFAR-10, its CLD scores, and an uninterrupted stage 3 on them.

    Shared by every test that uses it: tests only read these files (a test that writes copies
    first, or writes under its own ``tmp_path``).
    """
    import compute_cld_scores
    import get_loss_values
    import train_on_coresets

    base = tmp_path_factory.mktemp("reference")
    with contextlib.redirect_stdout(io.StringIO()):
        loss = get_loss_values.main(**s1_flags(data, base / "s1"))
        scores = compute_cld_scores.main(loss_path=loss)
        result = train_on_coresets.main(**s3_flags(data, scores, str(base / "s3")))
    return {"loss": loss, "s1": str(base / "s1"), "scores": scores, "result": result, "s3": str(base / "s3")}


def cli(module, *args: str) -> subprocess.CompletedProcess:
    """Run a script's command line in this process (no interpreter start-up): exit status and output.

    The same path as ``python script.py ...``: Fire parses ``args`` and ``run_cli`` turns a user
    error into ``error: ...`` and exit 2; any other exception propagates and fails the test.
    """
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [module.__file__, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = module.run_cli(module.main)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_script(script: str, *args: str, cwd: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one of the scripts as a user would; returns the finished process (text output)."""
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one ``error:`` line on stderr naming ``fragments``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
