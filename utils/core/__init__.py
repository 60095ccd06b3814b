"""The torch-free core that the stages share: CLD and the arithmetic of loss trajectories (stages 1
and 2), per-class ranking, the selection rules of a coreset (budgets and orders; stages 2 and 3),
and the stability of a ranking over epochs (stage 1's early stop, stage 2's table).

numpy only; imports ``cld_recorder.py`` (CLD's per-class means, correlation and running sums, which
a user's own loop records with), ``files`` (the loss-file keys) and ``errors``. Used by every stage, the
methods and :mod:`utils.api`.
"""
