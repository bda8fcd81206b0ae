"""What runs inside Ray: the Tune trainable (:mod:`~dakd.sweep.remote.trial`), the stage and
cache tasks and a trial's way to its stages (:mod:`~dakd.sweep.remote.stages`), the sweep's
hooks of the loop (:mod:`~dakd.sweep.remote.hooks`) and a trial's deployment figures
(:mod:`~dakd.sweep.remote.deployment`). Never imports the driver."""
