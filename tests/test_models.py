"""Tests for the model registry (models/): every CIFAR model, golden parameter counts,
the ImageNet path and the factory's errors. Runs in about 20 s on 2 CPU cores."""

import pytest
import torch
import torch.nn as nn
import torchvision

from models import MODELS, get_model, model_names

# Odd and unlike any dataset's class count, so a hard-wired classifier shows up.
NUM_CLASSES = 7
# Names the paper's code (Utils/model_utils.py) accepts for CIFAR; they must keep working.
PAPER_NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg19_bn", "densenet", "alexnet"]


@pytest.fixture(autouse=True)
def _seeded_two_threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward(name: str) -> None:
    # Train mode (batch-norm on batch statistics) and a batch of 2 at 32x32:
    # the largest model (ResNet-152) takes about a second here.
    model = get_model(name, NUM_CLASSES).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, NUM_CLASSES - 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


# One model per family: layout handling is per-family code, and float64 CPU
# convolutions are slow (ResNet-152 alone took up to 17 s on a loaded machine).
FAMILY_REPRESENTATIVES = ["resnet18", "resnet20", "vgg11_bn", "densenet_bc100", "alexnet"]


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_channels_last_matches(name: str) -> None:
    # float64: in float32 the two layouts' kernels round differently and deep
    # ResNets amplify that to ~1e-3; in float64 they agree to ~1e-12, so a tight
    # tolerance still catches a real layout bug. Train mode keeps activations O(1)
    # (with fresh running statistics, eval-mode outputs reach 1e8).
    model = get_model(name, NUM_CLASSES).train().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_compiles_without_graph_breaks(name: str) -> None:
    # fullgraph=True fails on any graph break, i.e. on
    # Python-side control flow that depends on tensor data. The "eager" backend
    # checks the capture without paying for code generation.
    torch._dynamo.reset()
    model = get_model(name, NUM_CLASSES).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize(
    ("name", "num_classes", "expected"),
    [
        # The CLD paper's CIFAR-100 ResNet-18 (the value its code prints).
        ("resnet18", 100, 11_220_132),
        # He et al. ResNet-20, option-A shortcuts (no parameters), 10 classes.
        # Convs have no bias; each BN has 2 * channels.
        #   stem     3*16*9 + 2*16                                        =     464
        #   stage 1  3 blocks * (2 * 16*16*9 + 2 * 2*16)                  =  14,016
        #   stage 2  (16*32*9 + 32*32*9 + 128) + 2 * (2 * 32*32*9 + 128)  =  51,072
        #   stage 3  (32*64*9 + 64*64*9 + 256) + 2 * (2 * 64*64*9 + 256)  = 203,520
        #   linear   64*10 + 10                                           =     650
        #   total                                                         = 269,722  (paper: 0.27M)
        ("resnet20", 10, 269_722),
        # CIFAR AlexNet, 10 classes (convs with bias, weights = in*out*k*k):
        #   3*64*121 + 64 = 23,296;  64*192*25 + 192 = 307,392;  192*384*9 + 384 = 663,936;
        #   384*256*9 + 256 = 884,992;  256*256*9 + 256 = 590,080;  256*10 + 10 = 2,570
        #   total = 2,472,266
        ("alexnet", 10, 2_472_266),
        # DenseNet-BC-100, k = 12, 10 classes. A bottleneck layer on c channels has
        # BN 2c + conv 48c + BN 96 + conv 48*9*12 = 50c + 5,280; a block of 16 layers
        # starting at c0 sums to 800*c0 + 156,480 and ends at c0 + 192 channels.
        #   stem 3*24*9 = 648
        #   block 1 (c0 = 24)  175,680;  transition 216 -> 108: 2*216 + 216*108 = 23,760
        #   block 2 (c0 = 108) 242,880;  transition 300 -> 150: 2*300 + 300*150 = 45,600
        #   block 3 (c0 = 150) 276,480;  final BN 2*342 = 684;  linear 342*10 + 10 = 3,430
        #   total = 769,162  (Huang et al. 2017, Table 2: 0.8M)
        ("densenet_bc100", 10, 769_162),
    ],
)
def test_golden_parameter_counts(name: str, num_classes: int, expected: int) -> None:
    assert _num_params(get_model(name, num_classes)) == expected


def test_paper_names_are_registered() -> None:
    assert set(PAPER_NAMES) <= set(MODELS)


def test_densenet_alias_is_bc100() -> None:
    assert _num_params(get_model("densenet", 100)) == _num_params(get_model("densenet_bc100", 100))


def test_model_names() -> None:
    assert model_names("CIFAR100") == sorted(MODELS)
    imagenet = model_names("ImageNet")
    assert imagenet == sorted(imagenet)
    assert {"resnet18", "mobilenet_v3_small"} <= set(imagenet)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet20") as info:
        get_model("resnet9000", 10)
    assert ", ".join(sorted(MODELS)) in str(info.value)


def test_unknown_imagenet_name_raises() -> None:
    # resnet20 is a CIFAR-only model; torchvision has no such name.
    with pytest.raises(ValueError, match="mobilenet_v3_small"):
        get_model("resnet20", 10, dataset="imagenet")


@pytest.mark.parametrize("bad", [0, -3, 2.0, "10", True, None])
def test_num_classes_must_be_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet20", bad)  # type: ignore[arg-type]


def test_imagenet_returns_torchvision_model() -> None:
    model = get_model("resnet18", NUM_CLASSES, dataset="ImageNet")
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == NUM_CLASSES
    # A small network, so one forward at ImageNet resolution stays cheap (~0.05 s).
    small = get_model("mobilenet_v3_small", NUM_CLASSES, dataset="imagenet").eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 224, 224)).shape == (1, NUM_CLASSES)


def test_models_are_independent_instances() -> None:
    # The registry holds constructors, not modules: two calls share no weights.
    a, b = get_model("resnet20", 10), get_model("resnet20", 10)
    assert all(pa is not pb for pa, pb in zip(a.parameters(), b.parameters()))


def test_checkpoint_weights_load_with_one_torch_load(tmp_path, monkeypatch) -> None:
    # Validating a checkpoint of this project reuses the state already read: the file is read,
    # CRC-checked and unpickled once.
    from utils.files import checkpoint

    model = get_model("resnet20", NUM_CLASSES)
    path = str(tmp_path / "run_best.pth")
    checkpoint.save_checkpoint(path, {"kind": "best", "epoch": 3, "identity": {"model_arch": "resnet20"},
                                      "model": model.state_dict()})
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    weights, epoch, identity = checkpoint.load_model_weights(path)
    assert len(calls) == 1
    assert (epoch, identity) == (3, {"model_arch": "resnet20"})
    get_model("resnet20", NUM_CLASSES).load_state_dict(weights)
