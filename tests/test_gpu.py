"""The compiled, CUDA-graph, bf16 fast path of stages 1 and 3 on a GPU (every test skipped without CUDA).

Run them with ``pytest -m gpu tests/test_gpu.py`` (``bench/gpu_check.py`` does, first). They use a
small fake CIFAR (tens of images) and a small batch-norm network, so that compilation takes
seconds, and emulate stage 1's epoch with the project's :class:`utils.train.engine.Trainer`: train in
bf16 (``compile=True``: inductor with CUDA graphs, ``reduce-overhead``, on one GPU), evaluate the
test set in the training precision, then record the per-example losses of the training split in
fp32 with TF32 off. The same run is repeated eagerly from the same initialisation and the same
batches, and the two are compared:

(a) batch-norm running statistics after every epoch's training steps, to bf16 tolerance;
(b) per-example fp32 losses (and margins, EL2N) of the compiled evaluation against the eager
    evaluation of the same weights, to fp32 tolerance;
(c) nothing compiles after the first epoch, no graph breaks, no CUDA-graph fallbacks;
(d) the fp32 collection pass runs with both TF32 flags off (and restores them), while bf16
    autocast training still runs in bf16;
(e) an ImageFolder of JPEGs decoded on the GPU (``utils.data.jpeg``) gives the batches' shapes of the CPU
    decoder.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.nn as nn
from torch._dynamo.utils import counters

from bench.fake_cifar import fake_images
from utils.data import jpeg
from utils.data.batches import TensorBatches
from utils.data.sources import make_batches
from utils.data.datasets import ArrayDataset, DATASETS, load_dataset
from utils.train.engine import Trainer, build_optimizer
from utils.train.options import Recipe

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
NUM_CLASSES = 10
TRAIN_N, TEST_N = 40, 12      # tens of images
BATCH, EVAL_BATCH = 16, 32    # 16 + 16 + 8: a partial last batch, as in stage 1; eval batches padded to 32
EPOCHS = 3                    # 3 training steps per epoch: N = 3, 6, 9 steps compared
LEARNING_RATE = 0.02          # small enough that two runs differ by rounding, not by chaos

# (a) Batch-norm running statistics, compiled vs eager, both trained in bf16 autocast. The two
# runs round differently (inductor fuses the batch-norm and keeps fp32 intermediates inside its
# kernels where eager rounds each op's output to bf16; bf16 keeps 8 significant bits, a relative
# error of up to 2^-8 = 0.4% per rounding), so their weights drift apart by a few bf16 ulps over N
# SGD steps and their batch statistics with them. The running statistics start at 0 / 1 and move
# towards the batch statistics (momentum 0.1: by 1 - 0.9^N of the way): the two runs must agree to
# 5% of that movement (13 times bf16's unit roundoff, far above rounding), plus 0.1% of their size for
# channels that hardly move. A step whose update of the buffers is lost or applied twice (a
# CUDA-graph replay that does not write the in-place update back, a recording run that applies
# it again) moves them by 7% (one early step of nine) up to 100% of that movement, and changes
# num_batches_tracked (compared exactly) by a step.
BN_RTOL, BN_ATOL = 5e-2, 1e-3
# (b) The same weights evaluated compiled and eagerly in fp32, TF32 off: both run cuDNN
# convolutions and cuBLAS matmuls in full fp32; inductor's fused batch-norm, pooling and
# log-softmax differ from eager's kernels by a few fp32 ulps (1e-7 relative). 1e-4 leaves a
# thousandfold margin while a bf16 or TF32 leak (errors of 1e-3 to 1e-2) fails.
FP32_RTOL, FP32_ATOL = 1e-4, 1e-4
TIE_MARGIN = 1e-3  # correctness may flip between the two only where the top two logits tie


def _net() -> nn.Module:
    """A small convolutional network with two batch-norm layers (compiles in seconds)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, NUM_CLASSES))


def _source(n: int, seed: int) -> TensorBatches:
    """n fake CIFAR images (a colour per class plus noise) resident on the GPU."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % NUM_CLASSES
    images = fake_images(labels, NUM_CLASSES, rng).reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return TensorBatches(ArrayDataset(np.ascontiguousarray(images), labels), DATASETS["CIFAR100"], CUDA)


def _on_gpu(model: nn.Module) -> nn.Module:
    """The model as stage 1 places it (utils.train.session.build_model): on the GPU, channels_last."""
    return model.to(CUDA).to(memory_format=torch.channels_last)


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every batch-norm buffer (running_mean, running_var, num_batches_tracked), copied to the host."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _compile_counts() -> dict[str, int]:
    c = counters
    return {"frames": c["frames"]["total"], "graphs": c["stats"]["unique_graphs"],
            "graph_breaks": sum(c["graph_break"].values()), "cudagraph_skips": c["inductor"]["cudagraph_skips"]}


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def _tf32(enabled: bool):
    """Both TF32 flags set for the duration (a user who enabled TF32 globally), then restored."""
    saved = _tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _RecordingTrainer(Trainer):
    """A Trainer that notes, at every call of an evaluation step, its precision and the TF32 flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, bool, bool]] = []

    def _eval_step(self, precision: str):
        step = super()._eval_step(precision)

        def observed(*args):
            self.seen.append((precision, *_tf32_flags()))
            return step(*args)

        return observed


@dataclass
class Run:
    """What one emulated stage-1 run recorded."""
    model: nn.Module
    trainer: _RecordingTrainer
    bn: list[dict[str, torch.Tensor]] = field(default_factory=list)  # after each epoch's training
    fit: list[tuple[float, float]] = field(default_factory=list)      # (mean loss, accuracy) per epoch
    counts: list[dict[str, int]] = field(default_factory=list)        # compile counters after each epoch
    flags_after_eval: list[tuple[bool, bool]] = field(default_factory=list)
    final: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # precision -> training-split signals


def _stage1_run(compile: bool, init: dict, train: TensorBatches, test: TensorBatches) -> Run:
    """EPOCHS epochs of stage 1's loop (train bf16, test bf16, collect fp32); then both precisions'
    training-split signals of the final weights."""
    model = _on_gpu(_net())
    model.load_state_dict(init)
    trainer = _RecordingTrainer(model, build_optimizer(model, Recipe(learning_rate=LEARNING_RATE), CUDA), CUDA,
                                "bf16", compile=compile, eval_batch_size=EVAL_BATCH)
    run = Run(model, trainer)
    train_idx, test_idx = np.arange(TRAIN_N), np.arange(TEST_N)
    for epoch in range(EPOCHS):
        run.fit.append(trainer.train_epoch(train.train_epoch(train_idx, BATCH, seed=1, epoch=epoch)))
        run.bn.append(_bn_buffers(model))
        trainer.evaluate(test.eval_batches(test_idx, EVAL_BATCH), TEST_N)  # the training precision
        run.flags_after_eval.append(_tf32_flags())
        trainer.evaluate(train.eval_batches(train_idx, EVAL_BATCH), TRAIN_N, signals=True, precision="fp32")
        run.flags_after_eval.append(_tf32_flags())
        run.counts.append(_compile_counts())
    for precision in ("fp32", "bf16"):
        out = trainer.evaluate(train.eval_batches(train_idx, EVAL_BATCH), TRAIN_N, signals=True, precision=precision)
        run.final[precision] = {k: v.detach().cpu().clone() for k, v in out.items()}
    return run


@dataclass
class Runs:
    init: dict[str, torch.Tensor]
    compiled: Run
    eager: Run
    train: TensorBatches


@pytest.fixture(scope="module")
def runs():
    """The compiled run and the eager run from one initialisation, with TF32 enabled globally."""
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in _net().state_dict().items()}
    train, test = _source(TRAIN_N, seed=0), _source(TEST_N, seed=1)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as utils.train.session.build_model sets it on CUDA
    torch._dynamo.reset()
    counters.clear()
    try:
        with _tf32(True):
            compiled = _stage1_run(True, init, train, test)  # first: the compile counters are its alone
            eager = _stage1_run(False, init, train, test)
            yield Runs(init, compiled, eager, train)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        torch._dynamo.reset()  # frees the CUDA-graph memory pool


def test_compiled_run_uses_cuda_graphs(runs):
    spec = runs.compiled.trainer.compile_spec
    assert spec is not None and spec.backend == "inductor" and spec.mode == "reduce-overhead" and spec.cudagraphs


def test_batch_norm_statistics_of_compiled_training_match_eager(runs):
    init_bn = {k: v for k, v in runs.init.items() if k in runs.eager.bn[0]}  # 0 / 1 / 0
    steps_per_epoch = -(-TRAIN_N // BATCH)
    for epoch in range(EPOCHS):
        compiled, eager = runs.compiled.bn[epoch], runs.eager.bn[epoch]
        assert compiled.keys() == eager.keys() and len(compiled) == 6
        for name, e in eager.items():
            c = compiled[name]
            if name.endswith("num_batches_tracked"):
                assert int(c) == int(e) == steps_per_epoch * (epoch + 1), (name, int(c), int(e))
                continue
            moved = (e - init_bn[name]).norm()
            error = (c - e).norm()
            assert moved > 0, name
            assert error <= BN_RTOL * moved + BN_ATOL * e.norm(), \
                f"epoch {epoch + 1} {name}: |compiled - eager| = {error:.3g}, the statistics moved {moved:.3g}"
    for fit_c, fit_e in zip(runs.compiled.fit, runs.eager.fit):
        assert np.isfinite(fit_c[0]) and fit_c[0] == pytest.approx(fit_e[0], rel=5e-2)


def test_compiled_fp32_losses_equal_eager_evaluation_of_the_same_weights(runs):
    run = runs.compiled
    compiled = run.final["fp32"]
    eager_trainer = Trainer(run.model, run.trainer.optimizer, CUDA, "bf16", compile=False)
    with _tf32(True):
        eager = eager_trainer.evaluate(runs.train.eval_batches(np.arange(TRAIN_N), EVAL_BATCH), TRAIN_N,
                                       signals=True, precision="fp32")
    eager = {k: v.cpu() for k, v in eager.items()}
    for key in ("loss", "margin", "el2n"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=FP32_RTOL, atol=FP32_ATOL, msg=key)
    clear = eager["margin"].abs() > TIE_MARGIN
    assert torch.equal(compiled["correct"][clear], eager["correct"][clear])


def test_nothing_compiles_after_the_first_epoch(runs):
    first, *later = runs.compiled.counts
    # Epoch 1 compiles the training step for the full and the last, partial batch, and one
    # evaluation step per precision (bf16 test set, fp32 collection; short batches padded).
    assert first["graphs"] == 4, first
    for counts in later:
        assert counts == first, (first, counts)
    assert first["graph_breaks"] == 0, dict(counters["graph_break"])
    assert first["cudagraph_skips"] == 0, "a CUDA graph fell back to eager; run with TORCH_LOGS=cudagraphs"


def test_fp32_collection_runs_with_tf32_off_and_restores_the_flags(runs):
    seen = runs.compiled.trainer.seen + runs.eager.trainer.seen
    fp32 = [flags for precision, *flags in seen if precision == "fp32"]
    bf16 = [flags for precision, *flags in seen if precision == "bf16"]
    assert fp32 and bf16
    assert all(flags == [False, False] for flags in fp32), "TF32 was on during an fp32 collection pass"
    assert all(flags == [True, True] for flags in bf16), "a bf16 pass ran with the user's TF32 flags changed"
    assert all(flags == (True, True) for flags in runs.compiled.flags_after_eval + runs.eager.flags_after_eval)


def test_bf16_autocast_training_still_runs_in_bf16(runs):
    model = _on_gpu(_net())
    model.load_state_dict(runs.init)
    seen: list[tuple[bool, torch.dtype]] = []
    model[-1].register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
    trainer = Trainer(model, build_optimizer(model, Recipe(learning_rate=LEARNING_RATE), CUDA), CUDA, "bf16")
    before = [p.detach().clone() for p in model.parameters()]
    loss, _ = trainer.train_epoch(runs.train.train_epoch(np.arange(TRAIN_N), BATCH, seed=1, epoch=0))
    training = [dtype for is_training, dtype in seen if is_training]
    assert len(training) == -(-TRAIN_N // BATCH) and all(d == torch.bfloat16 for d in training), training
    assert np.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights fp32
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        seen.clear()
        trainer.evaluate(runs.train.eval_batches(np.arange(TRAIN_N), EVAL_BATCH), TRAIN_N, precision=precision)
        assert seen and all(not t and d == dtype for t, d in seen), (precision, seen)
    # The compiled run: bf16 losses of the same weights differ from fp32 ones (bf16 really ran),
    # by bf16 rounding only.
    low, ref = runs.compiled.final["bf16"]["loss"].double(), runs.compiled.final["fp32"]["loss"].double()
    assert all(np.isfinite(fit[0]) for fit in runs.compiled.fit)
    assert (low - ref).abs().max() > 0
    assert (low - ref).abs().mean() <= 2e-2 * ref.abs().mean() + 1e-3


# ------------------------------------------------------------------------------- GPU JPEG decoding


def _write_jpegs(root, classes: int = 2, per_class: int = 5) -> None:
    """An ImageFolder ({root}/imagenet/{train,val}/<class>/*.jpg) of noise JPEGs of several sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(48, 40), (64, 64), (100, 60), (37, 81), (256, 300)]
    for part in ("train", "val"):
        for c in range(classes):
            folder = root / "imagenet" / part / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[(c + i) % len(sizes)]
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.jpg", quality=90)


def test_gpu_jpeg_decoding_gives_the_cpu_shapes(tmp_path):
    _write_jpegs(tmp_path)
    data = load_dataset("ImageNet", str(tmp_path), download=False)
    cpu = make_batches(data.train, data.info, CUDA, workers=0, decode="cpu")
    gpu = make_batches(data.train, data.info, CUDA, workers=0, decode="gpu")
    assert isinstance(gpu, jpeg.DeviceJpegBatches), f"--decode gpu gave a {type(gpu).__name__}"
    indices = np.arange(len(data.train))
    batches = {"cpu": list(cpu.eval_batches(indices, 4)), "gpu": list(gpu.eval_batches(indices, 4))}
    assert len(batches["cpu"]) == len(batches["gpu"]) == 3  # 4 + 4 + 2 images
    for (xc, yc, sc), (xg, yg, sg) in zip(batches["cpu"], batches["gpu"]):
        assert xg.shape == xc.shape and xg.dtype == xc.dtype == torch.float32
        assert xg.device.type == "cuda" and torch.isfinite(xg).all()
        assert torch.equal(yg.cpu(), yc.cpu()) and torch.equal(sg.cpu(), sc.cpu())
    train_cpu = [x.shape for x, _ in cpu.train_epoch(indices, 4, seed=0, epoch=0)]
    train_gpu = [(x.shape, x.device.type) for x, _ in gpu.train_epoch(indices, 4, seed=0, epoch=0)]
    assert [s for s, _ in train_gpu] == train_cpu and all(d == "cuda" for _, d in train_gpu)
