"""Stage 1 (``get_loss_values.py``): train a model and record every training and validation
example's loss after every epoch (:mod:`~utils.collect.collect_losses`), through the row store
that writes those rows to disk as they are made (:mod:`~utils.collect.row_store`).

Takes :class:`~utils.collect.options.CollectOptions`; imports ``train``, ``data``, ``core``, ``files``
and ``cld_recorder.py`` (the row store and CLD sums it records through), nothing of the other stages. Called by the command line and the grid.
"""
