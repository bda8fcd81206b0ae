"""The training engine: the loop (:mod:`~dakd.engine.trainer`: ``Trainer`` and ``train()``), the
state it steps (:mod:`~dakd.engine.state`: ``TrainState``, the networks, optimisers and the DAKD
objective) and the hooks at the loop's points (:mod:`~dakd.engine.hooks`). Never imports the
recipes, tracking or the sweep."""
