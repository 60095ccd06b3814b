"""The training step and the per-example evaluation pass shared by stages 1 and 3.

Device, precision and compilation are resolved once (:mod:`utils.train.device`) and passed
down. On CUDA the fast path is bf16 autocast, channels_last, fused SGD and optionally ``torch.compile``; per-step results stay
on the device and the host synchronises once per epoch. fp32 keeps the paper's numerics and
makes CPU runs bit-for-bit repeatable.

Compilation (``compile=True`` or a mode; see :func:`resolve_compile`) compiles two small modules
around the model, each with static shapes (``dynamic=False``):

* the training step's forward pass and loss (AOTAutograd compiles its backward too); the
  optimizer step stays outside (fused SGD is one kernel launch already);
* the evaluation forward pass with every per-example signal. Its batches are padded to the
  evaluation batch size (padding rows are dropped; eval-mode batch norm treats rows
  independently), so every evaluation pass - train split, validation split, test set - runs one
  graph.

The training step gets one graph for full batches and one for the epoch's last, partial batch
(its size is the same every epoch); nothing recompiles after the first epoch. With CUDA graphs
(the ``reduce-overhead`` mode, the default on a single GPU) each step starts a new CUDA-graph
generation (``cudagraph_mark_step_begin``): a replay may reuse the memory of the previous
step's outputs, so every output is consumed (accumulated, indexed into the preallocated result
tensors) before the next step, gradients are set to None before the forward pass, and the
optimizer updates parameters in place (they are static graph inputs). Batch-norm running
statistics are module buffers, which dynamo marks as static inputs, so their in-place update
does not make CUDA graphs fall back.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.train.device import AUTOCAST_DTYPES, CompileSpec, exact_fp32, resolve_compile
from utils.train.options import Recipe


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """SGD as in the paper; the fused CUDA kernel where available (one launch for all parameters)."""
    return torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, nesterov=recipe.nesterov,
                           fused=device.type == "cuda" or None)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.schedule), gamma=recipe.gamma)


class _LossStep(nn.Module):
    """The part of a training step that is compiled: forward pass, loss and the step's totals.

    Returns the mean loss (to back-propagate) and ``[loss sum, correct]`` of the batch (float64),
    so that nothing of the forward pass is read after the backward pass.
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype | None):
        super().__init__()
        self.model = model
        self.device_type, self.dtype = device_type, dtype

    def forward(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            logits = self.model(x)
            if w is None:
                loss = F.cross_entropy(logits, y)
                total = loss.detach().double() * y.shape[0]
            else:  # DeepCore's weighted subsets: a weighted mean of the per-example losses
                each = F.cross_entropy(logits, y, reduction="none")
                # A batch whose examples all weigh 0 (exact duplicates' CRAIG weights) contributes no
                # step, instead of 0/0 = NaN; any other batch divides by its own total, unchanged.
                loss = (each * w).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
                total = each.detach().double().sum()  # the log keeps the plain mean loss
        totals = torch.stack([total, (logits.argmax(1) == y).sum().double()])
        return loss, totals


class _EvalStep(nn.Module):
    """The evaluation forward pass and per-example signals (fp32 logits) of one batch."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype | None):
        super().__init__()
        self.model = model
        self.device_type, self.dtype = device_type, dtype

    def forward(self, x: torch.Tensor, y: torch.Tensor, signals: bool = True) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            logits = self.model(x)
        return example_signals(logits.float(), y, signals)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with zero rows appended up to ``rows``, in ``t``'s memory format (static graph strides)."""
    channels_last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    out = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    out[:t.shape[0]] = t
    return out


class Trainer:
    """Runs training epochs and per-example evaluation passes of one model.

    Args:
        model: the model (already on ``device``; may be DDP-wrapped).
        optimizer: its optimizer.
        device: where the batches live.
        precision: 'bf16', 'fp16' or 'fp32' (resolved): training and, by default, evaluation.
        compile: False, True, a mode or a :class:`CompileSpec` (see :func:`resolve_compile`).
        all_reduce: sums a tensor over processes (identity without DDP).
        eval_batch_size: the evaluation batch size; compiled evaluation pads every batch to it
            (default: to the largest batch seen so far).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 precision: str, compile: bool | str | CompileSpec | None = False,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                 eval_batch_size: int | None = None):
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.precision = precision
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.all_reduce = all_reduce
        distributed = isinstance(model, nn.parallel.DistributedDataParallel)
        self.compile_spec = resolve_compile(compile, device, distributed)
        self._loss_step: Callable = self._compiled(_LossStep(model, device.type, AUTOCAST_DTYPES.get(precision)))
        self._eval_steps: dict[str, Callable] = {}  # one (compiled) evaluation step per precision
        self._eval_rows = int(eval_batch_size or 0)  # compiled evaluation pads smaller batches to this

    def _compiled(self, step: nn.Module) -> Callable:
        if self.compile_spec is None:
            return step
        options = dict(backend=self.compile_spec.backend, dynamic=False)
        if self.compile_spec.backend == "inductor":
            options["mode"] = self.compile_spec.mode
        return torch.compile(step, **options)

    def _eval_step(self, precision: str) -> Callable:
        if precision not in self._eval_steps:
            step = _EvalStep(self.model, self.device.type, AUTOCAST_DTYPES.get(precision))
            self._eval_steps[precision] = self._compiled(step)
        return self._eval_steps[precision]

    @property
    def compiled(self) -> bool:
        return self.compile_spec is not None

    def _new_step(self) -> None:
        """Start a CUDA-graph generation: the previous step's graph outputs are dead from here on."""
        if self.compile_spec is not None and self.compile_spec.cudagraphs and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()

    def train_epoch(self, batches: Iterable[tuple[torch.Tensor, ...]]) -> tuple[float, float]:
        """One epoch of SGD over ``(x, y)`` batches, or ``(x, y, w)`` with per-example weights;
        returns (mean training loss, accuracy in %) over the batches seen."""
        self.model.train()
        totals = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss sum, correct
        count = 0
        for x, y, *w in batches:
            self.optimizer.zero_grad(set_to_none=True)  # before the forward: no graph output outlives its step
            self._new_step()
            loss, step_totals = self._loss_step(x, y, *w)
            # Accumulate on the device: no .item() per step, one synchronisation per epoch.
            totals += step_totals
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # fused SGD takes the fp16 scaler's state on the device
            self.scaler.update()
            count += y.shape[0]
        totals = torch.cat([totals, totals.new_tensor([float(count)])])
        loss_sum, correct, count = self.all_reduce(totals).tolist()
        return loss_sum / max(count, 1.0), 100.0 * correct / max(count, 1.0)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], n: int,
                 signals: bool = False, precision: str | None = None) -> dict[str, torch.Tensor]:
        """Per-example results of an eval-mode pass, written into preallocated device tensors.

        Returns ``loss`` (float32) and ``correct`` (bool) of shape (n,), and with ``signals`` also
        ``margin`` (z_y - max_{c != y} z_c) and ``el2n`` (||softmax - onehot||_2), all from the same
        logits (in fp32, whatever the autocast precision of the forward pass). ``precision`` is the
        forward pass's (default the training precision); fp32 runs with TF32 off.
        """
        precision = precision or self.precision
        step = self._eval_step(precision)
        self.model.eval()
        out = {"loss": torch.zeros(n, device=self.device), "correct": torch.zeros(n, dtype=torch.bool, device=self.device)}
        if signals:
            out["margin"] = torch.zeros(n, device=self.device)
            out["el2n"] = torch.zeros(n, device=self.device)
        with exact_fp32(self.device) if precision == "fp32" else contextlib.nullcontext():
            for x, y, slots in batches:
                b = x.shape[0]
                if self.compiled:
                    # One static graph for every pass: all signals, batches padded to one size.
                    self._eval_rows = max(self._eval_rows, b)
                    if b < self._eval_rows:
                        x, y = _pad_rows(x, self._eval_rows), _pad_rows(y, self._eval_rows)
                    self._new_step()
                    values = step(x, y)
                else:
                    values = step(x, y, signals)
                for key in out:
                    # Consumed at once (before the next step may replay over a CUDA graph's outputs).
                    out[key][slots] = values[key][:b]
        return out


def example_signals(logits: torch.Tensor, y: torch.Tensor, signals: bool) -> dict[str, torch.Tensor]:
    """Per-example loss and correctness (and margin, EL2N) from fp32 logits."""
    loss = F.cross_entropy(logits, y, reduction="none")
    result = {"loss": loss, "correct": logits.argmax(1) == y}
    if signals:
        true_logit = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], float("-inf"))
        result["margin"] = true_logit - others.max(1).values
        onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        result["el2n"] = torch.linalg.vector_norm(logits.softmax(1) - onehot, dim=1)
    return result
