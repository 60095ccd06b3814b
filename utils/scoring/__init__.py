"""Stage 2 (``compute_cld_scores.py``): a loss file -> a score file ranking every class best first,
by CLD or a baseline (:mod:`~utils.scoring.compute_scores`); the evaluation pass of a weight
snapshot for the model-based methods (:mod:`~utils.scoring.snapshot`); CLD's overview figure; the
coreset's ids written for the user's own loop, and the ids of a recorded loss file
(:mod:`~utils.scoring.export`).

Takes :class:`~utils.scoring.options.ScoreOptions`; imports ``methods``, ``core``, ``train``,
``data``, ``files``, ``models/`` and ``cld_recorder.py`` (CLD's running sums), nothing of the other
stages. Called by the command line, the grid and
:mod:`utils.api`.
"""
