"""Which CPU kernels compute a run's numbers: ``--cpu_kernels portable`` (the default) gives one
result for one command on every x86-64 machine with AVX2, Intel or AMD; ``native`` the fastest.

PyTorch (ATen), oneDNN, oneMKL, NumPy and OpenBLAS each pick, when they load, the fastest kernels
the CPU offers (AVX2, AVX-512, AMX, a vendor's own path). Kernels add in different orders, so the
last bits of a sum differ from machine to machine, and a small model trained on a few hundred
examples turns those bits into points of test accuracy. Portable mode makes each library take one
code path that every such CPU runs alike:

* ATen's kernels without vector dispatch (``ATEN_CPU_CAPABILITY=default``);
* no oneDNN convolutions, whose loop blocking follows the CPU's caches: ATen's own convolution,
  over oneMKL's matrix products (set once torch is loaded, :func:`utils.train.device.use_cpu_kernels`),
  and any oneDNN primitive left capped at SSE4.1;
* oneMKL's conditional numerical reproducibility (``MKL_CBWR=COMPATIBLE``: the same results on
  Intel and AMD processors);
* NumPy's AVX2 kernels where the CPU also has AVX-512, and OpenBLAS's Haswell kernels.

The libraries read these settings once, when they load, so the scripts call :func:`pin_from_argv`
before anything imports numpy or torch. One thread per process (the default for a small model on a
CPU) keeps the order of every sum fixed too; the run records the settings in effect. Standard
library only: this module runs before everything else.
"""
from __future__ import annotations

import os
import platform
from typing import Sequence

MODES = ("portable", "native")
DEFAULT_MODE = "portable"
FLAG = "--cpu_kernels"

# NumPy's names of its AVX-512 dispatch targets (2.4 and later, then earlier releases); a name a
# release does not know is ignored by it.
_NUMPY_AVX512 = ("X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX "
                 "AVX512_CNL AVX512FP16")


def cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name, as the system reports it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def portable_environment(flags: set[str] | None = None) -> dict[str, str]:
    """The environment of portable mode on this machine."""
    env = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {"ATEN_CPU_CAPABILITY": "default"}  # the x86 libraries' settings mean nothing elsewhere
    flags = cpu_flags() if flags is None else flags
    env["NPY_DISABLE_CPU_FEATURES"] = _NUMPY_AVX512
    if "avx2" in flags:  # a Haswell kernel would stop an older CPU with an illegal instruction
        env["OPENBLAS_CORETYPE"] = "Haswell"
    return env


def pin(mode: str) -> None:
    """Set the environment of ``mode`` for the libraries of this process and its children (portable
    replaces any value of its variables; native leaves the environment as it is). It takes effect
    for each library that has not loaded yet."""
    if mode == "portable":
        os.environ.update(portable_environment())


def mode_in(argv: Sequence[str]) -> str:
    """The ``--cpu_kernels`` value of a command line, read ahead of the flag parser (which refuses a
    bad value later, with the other flags): the last one given, else the default."""
    mode = DEFAULT_MODE
    for i, word in enumerate(argv):
        name, eq, value = word.partition("=")
        if name.replace("-", "_") != FLAG.replace("-", "_"):  # --cpu_kernels or --cpu-kernels
            continue
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        mode = value.strip().lower()
    return mode


def pin_from_argv(argv: Sequence[str]) -> None:
    """What the scripts do first: pin the kernels their command line asks for."""
    pin(mode_in(argv))
