"""Evaluation: the segmentation metrics over a split (:mod:`~dakd.evaluation.segmentation`: one
confusion matrix, per-class IoU, mIoU), a run's evaluation and the metric names it reports
(:mod:`~dakd.evaluation.run_metrics`), prediction panels (:mod:`~dakd.evaluation.panels`) and a
network's deployment figures (:mod:`~dakd.evaluation.deploy`). Imports the method and
:mod:`dakd.runtime`."""
