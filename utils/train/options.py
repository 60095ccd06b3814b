"""The typed option records that the stages pass down to the engine, and the choices they take.

Torch-free: the command line checks flag values against these choices before torch is imported.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from utils.errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COLLECT_PRECISIONS = ("fp32", "same", "bf16", "fp16")
# torch.compile's inductor modes, and two debugging backends (no code generation: they check
# graph capture and recompilation cheaply, e.g. on a CPU in the tests).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("eager", "aot_eager")


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
    augment: bool = True

    @classmethod
    def from_options(cls, s) -> "Recipe":
        """The recipe from a training stage's options (the paper's names: ``disable_nesterov``, a
        ``schedule`` list)."""
        return cls(epochs=s.epochs, batch_size=s.batch_size, test_batch_size=s.test_batch_size,
                   learning_rate=s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay,
                   nesterov=not s.disable_nesterov, schedule=tuple(sorted(s.schedule)), gamma=s.gamma,
                   augment=s.augment)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["schedule"] = [int(m) for m in self.schedule]
        return d


def recipe_identity(recipe: Recipe, precision: str, cpu_kernels: str) -> dict:
    """What a resumed run must keep of its recipe: everything but the number of epochs (which may
    grow) and the evaluation batch size (which does not change training); its CPU kernels too (a run
    continued on others would not equal the uninterrupted one)."""
    fields = recipe.as_dict()
    del fields["epochs"], fields["test_batch_size"]
    return {**fields, "precision": precision, "cpu_kernels": cpu_kernels}


@dataclass(frozen=True)
class SessionOptions:
    """Where and how a training stage runs: device, precisions, compilation, data, seed.

    Values are the stage options of the same names; ``collect_precision``
    'same' means the training precision (stage 3 records no per-example losses); ``threads`` 0
    lets :func:`utils.train.device.cpu_threads` choose.
    """
    data_path: str = "./Data"
    download: bool = True
    workers: int = 4
    decode: str = "cpu"
    device: str = "auto"
    precision: str = "auto"
    collect_precision: str = "same"
    compile: bool | str = False
    manual_seed: int = 1234
    threads: int = 0
    cpu_kernels: str = "portable"
    skip_bad_images: bool = False

    @classmethod
    def from_options(cls, s) -> "SessionOptions":
        """From a training stage's options (stage 3 has no ``collect_precision``)."""
        return cls(data_path=s.data_path, download=s.download, workers=s.workers, decode=s.decode, device=s.device,
                   precision=s.precision, collect_precision=getattr(s, "collect_precision", "same"), compile=s.compile,
                   manual_seed=s.manual_seed, threads=s.threads, cpu_kernels=s.cpu_kernels,
                   skip_bad_images=s.skip_bad_images)


def check_model(model_arch: str, dataset: str) -> str:
    """A registry name for ``dataset`` (imports the model registry, hence torch)."""
    import models

    valid = models.model_names(dataset)
    if model_arch not in valid:
        raise UserError(f"unknown model {model_arch!r} for {dataset}; choose one of {', '.join(valid)}")
    return model_arch


# Fewer optimizer steps than this rarely fit a model to anything: stage 3 warns, and the stage-3
# command that stage 2 prints is scaled to reach it (130 examples at batch 128 for 8 epochs is 8
# SGD steps, after which the digits CNN is at chance).
MIN_STEPS = 100


def optimizer_steps(examples: int, batch_size: int, epochs: int, world: int = 1) -> int:
    """SGD steps of a run: per epoch, the batches of one process's share (shards padded equal)."""
    per_process = -(-examples // world)
    return epochs * -(-per_process // batch_size)


def recipe_for_steps(examples: int, batch_size: int, epochs: int, steps: int = MIN_STEPS) -> tuple[int, int]:
    """(batch size, epochs) that give at least ``steps`` optimizer steps on ``examples`` examples: the
    batch size lowered first (no larger than asked, no smaller than 1), then the epochs raised."""
    if optimizer_steps(examples, batch_size, epochs) >= steps:
        return batch_size, epochs
    batch = max(1, min(batch_size, examples * epochs // steps))
    while batch > 1 and optimizer_steps(examples, batch, epochs) < steps:
        batch -= 1
    per_epoch = -(-examples // batch)
    return batch, max(epochs, -(-steps // per_epoch))
