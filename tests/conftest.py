"""Shared fixtures: tiny fake datasets in torchvision's layout and one small stage-1 run."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fakedata import write_fake_cifar

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


def run_script(script: str, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run one of the scripts as a user would; returns the finished process (text output)."""
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one ``error:`` line on stderr naming ``fragments``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
