"""Stage 3 (``train_on_coresets.py``): train on the coreset a score file selects and report test
accuracy (:mod:`~utils.coreset_training.train_on_coreset`); every run's JSON and the
``results.csv`` rebuilt from them (:mod:`~utils.coreset_training.results`).

Takes :class:`~utils.coreset_training.options.CoresetOptions`; imports ``core`` (the selection
rules), the method registry, ``train``, ``data`` and ``files``, nothing of the other stages.
Called by the command line and the grid.
"""
