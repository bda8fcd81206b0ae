"""Procedures that chain runs of the engine: stages trained once and reused
(:mod:`~dakd.recipes.stages`), the backbones' pretraining (:mod:`~dakd.recipes.pretrain`), the
shipped domain-adapted teachers (:mod:`~dakd.recipes.da_teacher`) and the embedded benchmark's
calibration study (:mod:`~dakd.recipes.calibration`, its targets in
:mod:`~dakd.recipes.calibration_targets`). Core: no Ray, MLflow or Arrow."""
