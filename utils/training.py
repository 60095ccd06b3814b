"""The training step and the per-example evaluation pass shared by stages 1 and 3.

Device and precision are resolved once (:func:`resolve_device`, :func:`resolve_precision`) and
passed down. On CUDA the fast path is bf16 autocast, channels_last, fused SGD and optionally
``torch.compile``; per-step results stay on the device and the host synchronises once per
epoch. fp32 keeps the paper's numerics and makes CPU runs bit-for-bit repeatable.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.cli import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Recipe:
    """The optimisation recipe; defaults are the paper's (SGD + Nesterov, MultiStep [81, 121])."""
    epochs: int = 164
    batch_size: int = 128
    test_batch_size: int = 256
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: tuple[int, ...] = (81, 121)
    gamma: float = 0.1

    @classmethod
    def from_flags(cls, *, epochs, batch_size, test_batch_size, learning_rate, momentum, weight_decay,
                   disable_nesterov, schedule, gamma) -> "Recipe":
        """The recipe from the scripts' flags (the paper's names), validated."""
        recipe = cls(epochs=int(epochs), batch_size=int(batch_size), test_batch_size=int(test_batch_size),
                     learning_rate=float(learning_rate), momentum=float(momentum), weight_decay=float(weight_decay),
                     nesterov=not disable_nesterov, schedule=parse_schedule(schedule), gamma=float(gamma))
        recipe.validate()
        return recipe

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be positive, got {self.batch_size}"),
            (self.test_batch_size >= 1, f"test_batch_size must be positive, got {self.test_batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}"),
            (0 <= self.momentum < 1 and (self.momentum > 0 or not self.nesterov),
             f"momentum must lie in [0, 1) and be positive with Nesterov, got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be non-negative, got {self.weight_decay}"),
            (all(int(m) >= 0 for m in self.schedule), f"schedule milestones must be epochs >= 0, got {list(self.schedule)}"),
            (self.gamma > 0, f"gamma must be positive, got {self.gamma}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["schedule"] = [int(m) for m in self.schedule]
        return d


def parse_schedule(schedule) -> tuple[int, ...]:
    """Fire passes ``[81,121]`` as a list, ``81`` as an int, ``'81,121'`` as a tuple or string."""
    if isinstance(schedule, (int, float)):
        schedule = [schedule]
    if isinstance(schedule, str):
        schedule = [s for s in schedule.replace("[", "").replace("]", "").split(",") if s.strip()]
    try:
        return tuple(sorted(int(m) for m in schedule))
    except (TypeError, ValueError):
        raise UserError(f"schedule must be a list of epochs such as [81,121], got {schedule!r}") from None


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


def autocast(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the precision context: autocast for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """SGD as in the paper; the fused CUDA kernel where available (one launch for all parameters)."""
    return torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, nesterov=recipe.nesterov,
                           fused=device.type == "cuda" or None)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.schedule), gamma=recipe.gamma)


class Trainer:
    """Runs training epochs and per-example evaluation passes of one model.

    Args:
        model: the model (already on ``device``; may be DDP-wrapped).
        optimizer: its optimizer.
        device: where the batches live.
        precision: 'bf16', 'fp16' or 'fp32' (resolved).
        compile: compile the model with ``torch.compile``.
        all_reduce: sums a tensor over processes (identity without DDP).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 precision: str, compile: bool = False,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t):
        self.model = model
        self.forward = torch.compile(model) if compile else model
        self.optimizer = optimizer
        self.device = device
        self.autocast = autocast(precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.all_reduce = all_reduce

    def train_epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """One epoch of SGD; returns (mean training loss, accuracy in %) over the batches seen."""
        self.model.train()
        totals = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss sum, correct
        count = 0
        for x, y in batches:
            with self.autocast():
                logits = self.forward(x)
                loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # Accumulate on the device: no .item() per step, one synchronisation per epoch.
            totals += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])
            count += len(y)
        totals = torch.cat([totals, totals.new_tensor([float(count)])])
        loss_sum, correct, count = self.all_reduce(totals).tolist()
        return loss_sum / max(count, 1.0), 100.0 * correct / max(count, 1.0)

    @torch.no_grad()
    def evaluate(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], n: int,
                 signals: bool = False) -> dict[str, torch.Tensor]:
        """Per-example results of an eval-mode pass, written into preallocated device tensors.

        Returns ``loss`` (float32) and ``correct`` (bool) of shape (n,), and with ``signals`` also
        ``margin`` (z_y - max_{c != y} z_c) and ``el2n`` (||softmax - onehot||_2), all from the same
        logits (in fp32, whatever the autocast precision of the forward pass).
        """
        self.model.eval()
        out = {"loss": torch.zeros(n, device=self.device), "correct": torch.zeros(n, dtype=torch.bool, device=self.device)}
        if signals:
            out["margin"] = torch.zeros(n, device=self.device)
            out["el2n"] = torch.zeros(n, device=self.device)
        for x, y, slots in batches:
            with self.autocast():
                logits = self.forward(x)
            values = example_signals(logits.float(), y, signals)
            for key, value in values.items():
                out[key][slots] = value
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
