"""Every scoring method of stage 2, one module each, listed here (as ``models/`` lists the networks).

A method module holds its record (:class:`utils.methods.record.Method`), its math and its adapter
to what stage 2 hands it; this registry only lists the modules. Adding a method is one new module
and its name in the registry's import and in :data:`MODULES` (docs/methods.md, "Add a method"). Torch-free: the method modules
import torch inside the functions that compute.
"""
from __future__ import annotations

from utils.errors import UserError
from utils.methods import (aum, cal, cld, contextual_diversity, craig, deepfool, dyn_unc, el2n, entropy,
                           facility_location, forgetting, glister, gradmatch, grand, graph_cut, herding, kcenter,
                           least_confidence, log_determinant, loss, margin, moderate, random)
from utils.methods.record import Method

MODULES = (
    # CLD and the training-dynamics baselines: they score the loss trajectories (numpy only)
    cld, random, loss, el2n, forgetting, aum, dyn_unc,
    # DeepCore's uncertainty baselines (Coleman et al. 2020)
    least_confidence, entropy, margin,
    # geometry of the embeddings or probabilities
    herding, kcenter, contextual_diversity, cal, moderate,
    # last-layer gradients
    grand, craig, gradmatch, glister, facility_location, graph_cut, log_determinant,
    # the network itself
    deepfool,
)

METHODS: dict[str, Method] = {module.METHOD.name: module.METHOD for module in MODULES}
# The groups of the README's methods table: the grid's plot draws one panel per group (beside CLD
# and the random baseline) when there are too many lines for one.
GROUPS: dict[str, tuple[str, ...]] = {
    "training dynamics": ("loss", "el2n", "forgetting", "aum", "dyn_unc"),
    "uncertainty and boundary": ("least_confidence", "entropy", "margin", "deepfool"),
    "geometry": ("herding", "kcenter", "contextual_diversity", "cal", "moderate"),
    "gradients": ("grand", "craig", "gradmatch", "glister", "facility_location", "graph_cut", "log_determinant"),
}
ALIASES = {"uniform": "random"}  # DeepCore's name for the random baseline


def names() -> tuple[str, ...]:
    """Every ``--method`` value, aliases included."""
    return tuple(METHODS) + tuple(ALIASES)


def readers(option: str) -> tuple[str, ...]:
    """The methods that read the stage-2 flag ``option`` (none: it is no method's option)."""
    return tuple(name for name, method in METHODS.items() if option in method.options)


def readers_words(option: str) -> str:
    """:func:`readers` in words: a whole family by its name, else the methods' names."""
    found = set(readers(option))
    for family in ("model", "trajectory"):
        if found == {name for name, method in METHODS.items() if method.family == family}:
            return f"the {family} methods"
    return ", ".join(readers(option))


def get(name: str) -> Method:
    """A method by name (case-insensitive; aliases resolved), or a user error listing the names."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(names())}")
    return METHODS[key]
