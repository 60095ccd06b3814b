"""--cpu_kernels: portable kernels give the same bits whatever the libraries would pick for this CPU,
native ones do not; the choice is read before numpy and torch load, and every run records it."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from utils import cpu_kernels
from utils.train.options import Recipe, recipe_identity


@pytest.mark.parametrize("argv, mode", [
    ([], "portable"),
    (["--epochs", "3"], "portable"),
    (["--cpu_kernels", "native"], "native"),
    (["--cpu_kernels=native"], "native"),
    (["--cpu-kernels", "native"], "native"),
    (["--cpu_kernels", "native", "--cpu_kernels", "portable"], "portable"),
    (["--cpu_kernels"], ""),  # a missing value: the flag parser refuses it afterwards
])
def test_the_mode_is_read_from_the_command_line_ahead_of_the_parser(argv, mode):
    assert cpu_kernels.mode_in(argv) == mode


def test_portable_environment_names_each_library_and_spares_cpus_without_avx2():
    env = cpu_kernels.portable_environment({"avx2", "fma"})
    if env.keys() == {"ATEN_CPU_CAPABILITY"}:
        pytest.skip("not an x86-64 machine")
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == "COMPATIBLE"
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and "X86_V4" in env["NPY_DISABLE_CPU_FEATURES"]
    assert "OPENBLAS_CORETYPE" not in cpu_kernels.portable_environment({"sse4_2"})


def test_a_resumed_run_keeps_its_cpu_kernels():
    assert recipe_identity(Recipe(), "fp32", "portable") != recipe_identity(Recipe(), "fp32", "native")


# A short stage 1 on the embedded digits: its loss trajectories show any difference in the kernels.
STAGE1 = ["get_loss_values.py", "--dataset", "digits", "--model_arch", "digits_cnn", "--epochs", "3",
          "--schedule", "[2]", "--batch_size", "64", "--augment", "false", "--workers", "0"]


def _stage1(folder, mode: str, **env) -> tuple[np.ndarray, dict]:
    """Stage 1 in a fresh process with ``env`` added (what the libraries would otherwise pick)."""
    environ = {k: v for k, v in os.environ.items() if k not in cpu_kernels.portable_environment()}
    environ.update(env, PYTHONPATH=REPO)
    folder.mkdir()
    out = str(folder)
    proc = subprocess.run([sys.executable, os.path.join(REPO, STAGE1[0]), *STAGE1[1:], "--cpu_kernels", mode,
                           "--scores_dir", out, "--splits_dir", out, "--checkpoint_path", out, "--logpath", out,
                           "--data_path", out], cwd=out, env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from utils.files.losses import load_losses

    losses = load_losses(os.path.join(out, "digits_digits_cnn_seed1234_losses.pickle"))
    return np.concatenate([losses["tr_loss"].ravel(), losses["val_loss"].ravel()]), losses["config"]["machine"]


def _has(*flags: str) -> bool:
    return set(flags) <= cpu_kernels.cpu_flags()


@pytest.mark.skipif(not _has("avx2"), reason="needs an x86-64 CPU with AVX2")
def test_portable_kernels_give_the_same_bits_whatever_this_cpu_offers_them(tmp_path):
    plain, machine = _stage1(tmp_path / "plain", "portable")
    # What an AVX2-only machine would offer the libraries, and values a user may have set: portable
    # mode replaces or outranks them all.
    capped, _ = _stage1(tmp_path / "capped", "portable", MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2",
                        ONEDNN_MAX_CPU_ISA="AVX2", MKL_CBWR="AUTO")
    assert plain.tobytes() == capped.tobytes()
    assert machine["cpu_kernels"] == "portable" and machine["aten"] == "DEFAULT" and machine["onednn"] is False
    assert machine["mkl_cbwr"] == "COMPATIBLE" and machine["threads"] == 1 and machine["cpu"]


@pytest.mark.skipif(not _has("avx2", "avx512f"), reason="needs a CPU with AVX-512")
def test_native_kernels_differ_between_avx2_and_avx512(tmp_path):
    """The problem portable mode solves, on this machine: the same command, other kernels, other bits."""
    wide, machine = _stage1(tmp_path / "avx512", "native")
    narrow, _ = _stage1(tmp_path / "avx2", "native", ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2",
                        MKL_ENABLE_INSTRUCTIONS="AVX2")
    assert machine["cpu_kernels"] == "native" and machine["aten"] == "AVX512" and machine["onednn"] is True
    assert wide.tobytes() != narrow.tobytes()


def test_a_stage3_result_and_the_table_say_which_kernels_computed_them():
    from utils.grid.labels import machine_note

    m = {"cpu_kernels": "portable", "cpu": "Some CPU", "aten": "DEFAULT", "onednn": False, "mkl_cbwr": "COMPATIBLE",
         "threads": 1, "torch": "2.14.1", "numpy": "2.4.6", "device": "cpu", "gpu": ""}
    note = machine_note([{"machine": m}, {"machine": m}])
    assert note == ("Computed with portable CPU kernels (ATen default, oneDNN off, MKL_CBWR=COMPATIBLE), 1 thread "
                    "per run, on Some CPU; torch 2.14.1, numpy 2.4.6.")
    other = {**m, "cpu_kernels": "native", "aten": "AVX2", "onednn": True, "mkl_cbwr": ""}
    mixed = machine_note([{"machine": m}, {"machine": other}, {}])
    assert "native CPU kernels (ATen AVX2, oneDNN on, MKL_CBWR=unset)" in mixed
    assert "an earlier version that recorded no machine (1 run)" in mixed
