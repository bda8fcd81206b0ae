"""Where and with what a run computes: the device, threads, seeding and speed switches
(:mod:`~dakd.runtime.device`), the data-parallel world (:mod:`~dakd.runtime.distributed`), the
datasets, networks and frozen teacher a run is built from (:mod:`~dakd.runtime.builders`), what
its steps cost (:mod:`~dakd.runtime.performance`) and the step times measured on GPUs
(:mod:`~dakd.runtime.step_times`). Below the teacher, the evaluation and the engine, which all
build on it; it imports only the method (config, data, models, paradigms)."""
