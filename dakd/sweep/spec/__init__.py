"""A sweep's spec: the YAML file and its experiment (:mod:`~dakd.sweep.spec.sweep_spec`), the
search space (:mod:`~dakd.sweep.spec.space`), the tune/resources/tracking/storage sections
(:mod:`~dakd.sweep.spec.settings`), dotted values and labels (:mod:`~dakd.sweep.spec.values`),
the students a spec can give (:mod:`~dakd.sweep.spec.students`) and how a trial's config is made
from it (:mod:`~dakd.sweep.spec.context`). Read by the driver and inside Ray alike."""
