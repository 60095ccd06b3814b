"""Model registry for CLD coreset selection ("Coresets from Trajectories", TMLR 2025).

CIFAR-size (32x32) models are looked up by name in ``MODELS``; each entry takes
``num_classes`` and returns an untrained ``nn.Module``. For ImageNet, any
torchvision classification model is built by its torchvision name, untrained.

The names the paper's code accepts (resnet18/34/50/101/152, vgg19_bn, densenet,
alexnet) mean the same architectures here; unlike the paper's factory,
``get_model`` raises on an unknown name and honours ``num_classes`` everywhere.
"""

import numbers
from collections.abc import Callable
from functools import partial

import torch.nn as nn
import torchvision

from . import densenet, resnet, resnet_cifar, small, vgg
from .alexnet import AlexNet

__all__ = ["MODELS", "final_linear", "get_model", "model_names"]

MODELS: dict[str, Callable[[int], nn.Module]] = {
    **{name: partial(resnet.build, name) for name in resnet.CONFIGS},
    **{name: partial(resnet_cifar.build, name) for name in resnet_cifar.CONFIGS},
    **{name: partial(vgg.build, name) for name in vgg.CONFIGS},
    **{name: partial(densenet.build, name) for name in densenet.CONFIGS},
    **{name: partial(small.build, name) for name in small.CONFIGS},
    "alexnet": AlexNet,
}


def _is_imagenet(dataset: str) -> bool:
    return dataset.lower() == "imagenet"


def model_names(dataset: str = "CIFAR100") -> list[str]:
    """Sorted names that ``get_model`` accepts for ``dataset``.

    Args:
        dataset: ``"imagenet"`` (any case) for torchvision's classification models;
            anything else for the CIFAR-size registry ``MODELS``.
    """
    if _is_imagenet(dataset):
        # module= restricts the list to classification models (no detection,
        # segmentation, video or quantized ones).
        return sorted(torchvision.models.list_models(module=torchvision.models))
    return sorted(MODELS)


def get_model(name: str, num_classes: int, dataset: str = "CIFAR100") -> nn.Module:
    """Build an untrained model.

    Args:
        name: a key of ``MODELS``, or for ImageNet a torchvision model name.
        num_classes: number of output logits; a positive int.
        dataset: ``"imagenet"`` (any case) selects torchvision's models at their
            native resolution; any other value selects the 32x32 models.

    Raises:
        ValueError: ``num_classes`` is not a positive int, or ``name`` is not a
            valid name for ``dataset`` (the message lists the valid ones).
    """
    # bool is an int subclass; True classes is a caller's bug, not 1 class.
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    num_classes = int(num_classes)
    valid = model_names(dataset)
    if name not in valid:
        raise ValueError(f"unknown model {name!r} for dataset {dataset!r}; valid names: {', '.join(valid)}")
    if _is_imagenet(dataset):
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return MODELS[name](num_classes)


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer: the last ``nn.Linear`` registered in ``model``.

    Its input is the model's penultimate embedding and its output the logits, for every model of
    the registry and for torchvision's classifiers (their classifier is their last linear layer).

    Raises:
        ValueError: the model has no linear layer.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer, so it has no penultimate embedding")
    return linears[-1]
