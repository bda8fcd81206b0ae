"""A sweep's spec: the YAML file and its experiment (:mod:`~dakd.sweep.spec.sweep_spec`), the
search space, its distributions and their labels (:mod:`~dakd.sweep.spec.space`), the
tune/resources/tracking/storage sections (:mod:`~dakd.sweep.spec.settings`), the experiment's
config tree edited by dotted keys (:mod:`~dakd.sweep.spec.tree`), the students a spec can give
(:mod:`~dakd.sweep.spec.students`) and how a trial's config is made from it
(:mod:`~dakd.sweep.spec.context`). Read by the driver and inside Ray alike."""
