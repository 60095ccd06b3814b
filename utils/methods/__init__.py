"""The scoring methods, one module each: its record, its math and its adapter to what stage 2 hands
it (the loss trajectories, one class's features, or the network), listed by
:mod:`~utils.methods.registry`. Adding a method is one module, and its name in the registry (an
import and an entry of ``MODULES``).

Torch-free at import: a method imports torch, and the shared tensor helpers and feature records
of this package, inside the functions that compute. Imports ``core``, ``errors`` and (DeepFool's
evaluation pass) ``train``'s precision context. Used by stage 2 (to score), stage 3 and the
command line (the records).
"""
