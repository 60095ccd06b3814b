"""Device, precision and compilation, each resolved once from its flag and passed down.

fp32 keeps the paper's numerics (TF32 off) and makes CPU runs bit-for-bit repeatable; bf16
autocast is the default on CUDA. See :mod:`utils.train.engine` for how compilation is used.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from utils import cpu_kernels, progress
from utils.errors import UserError
from utils.train.options import COMPILE_BACKENDS, COMPILE_MODES, PRECISIONS

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable choice is a user error."""
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for but no CUDA device is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cuda or cpu") from None


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA, fp32 elsewhere (bf16 autocast on a CPU is slow, not faster)."""
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device; use fp32 (or bf16) on the CPU")
    return precision


def resolve_collect_precision(collect: str, training: str, device: torch.device) -> str:
    """The precision of the per-example passes: fp32 by default whatever the training precision
    (bf16 rounding alone changes about one example in ten of a top-10% CLD coreset), 'same' for
    the training precision."""
    return training if collect == "same" else resolve_precision(collect, device)


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """TF32 off for the duration (fp32 matmuls and convolutions keep their 23-bit mantissa)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def precision_context(precision: str, device: torch.device):
    """The context of a forward pass in a resolved precision: exact fp32 (TF32 off, see
    :func:`exact_fp32`) for 'fp32', else autocast to bf16 or fp16."""
    if precision == "fp32":
        return exact_fp32(device)
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


_FALSE = ("", "0", "false", "no", "off", "none")
_TRUE = ("1", "true", "yes", "on", "auto")


@dataclass(frozen=True)
class CompileSpec:
    """How to compile: a torch.compile backend and, for inductor, its mode."""
    backend: str = "inductor"
    mode: str | None = "default"

    @property
    def cudagraphs(self) -> bool:
        """Whether the compiled code replays CUDA graphs (inductor's reduce-overhead / max-autotune)."""
        return self.backend == "inductor" and self.mode in ("reduce-overhead", "max-autotune")

    def __str__(self) -> str:
        return self.mode if self.backend == "inductor" else self.backend


def resolve_compile(compile, device: torch.device, distributed: bool = False) -> CompileSpec | None:
    """The ``--compile`` flag: False (eager), True/'auto', an inductor mode, or a debug backend.

    True picks ``reduce-overhead`` (inductor + CUDA graphs: one launch per graph instead of one
    per kernel, which is what a small model at batch 128 is bound by) on a single CUDA device,
    and ``default`` otherwise: on a CPU there are no CUDA graphs, and under DDP the graph is split
    at gradient-bucket boundaries with the all-reduces between the pieces, where CUDA graphs are
    not worth their risk. Any mode may still be asked for by name.
    """
    if isinstance(compile, CompileSpec) or compile is None:
        return compile
    if isinstance(compile, bool) or (isinstance(compile, int) and compile in (0, 1)):
        compile = "auto" if compile else ""
    name = str(compile).strip().lower()
    if name in _FALSE:
        return None
    if name in _TRUE:
        single_gpu = device.type == "cuda" and not distributed
        return CompileSpec("inductor", "reduce-overhead" if single_gpu else "default")
    if name == "inductor":
        return CompileSpec("inductor", "default")
    if name in COMPILE_MODES:
        return CompileSpec("inductor", name)
    if name in COMPILE_BACKENDS:
        return CompileSpec(name, None)
    raise UserError(f"unknown compile setting {compile!r}; use False, True (auto), one of the modes "
                    f"{', '.join(COMPILE_MODES)}, or a debug backend ({', '.join(COMPILE_BACKENDS)})")


# Below this many parameters a model's CPU kernels are too small to share among threads: more
# threads only contend (measured: 10 to 80 times slower per epoch when another process runs).
SMALL_MODEL_PARAMETERS = 1_000_000


def cpu_threads(requested: int, parameters: int, device: torch.device) -> int:
    """Set and return torch's CPU thread count: ``requested`` if given; else, on a CPU, one thread
    for a small model unless OMP_NUM_THREADS says otherwise; else torch's default."""
    if requested:
        torch.set_num_threads(requested)
    elif device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and parameters < SMALL_MODEL_PARAMETERS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def use_cpu_kernels(mode: str) -> None:
    """Compute with the CPU kernels of ``mode`` (:mod:`utils.cpu_kernels`) in this process. The
    scripts set the libraries' environment before loading them; this sets what torch decides at run
    time (oneDNN's convolutions), and the environment of the libraries not loaded yet."""
    cpu_kernels.pin(mode)
    torch.backends.mkldnn.enabled = mode == "native"
    aten = torch.backends.cpu.get_cpu_capability()
    if mode == "portable" and aten != "DEFAULT":
        progress.say(f"note: --cpu_kernels portable, but torch was loaded before its kernels could be chosen "
                     f"(ATen uses {aten}): the numbers may differ on another CPU; run the script itself")


def kernels_in_effect(mode: str) -> dict:
    """The CPU kernels a run computes with, and the machine, as its outputs record them."""
    return {"cpu_kernels": mode, "cpu": cpu_kernels.cpu_model(), "aten": torch.backends.cpu.get_cpu_capability(),
            "onednn": bool(torch.backends.mkldnn.enabled), "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
            "threads": torch.get_num_threads(), "torch": str(torch.__version__), "numpy": str(np.__version__)}
