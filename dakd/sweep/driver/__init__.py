"""What runs in the sweep's driver process: the phases of a sweep (:mod:`~dakd.sweep.driver.run`),
what it trains and reads (:mod:`~dakd.sweep.driver.plan`), the waves of stage and cache tasks
(:mod:`~dakd.sweep.driver.stages`), the Tuner (:mod:`~dakd.sweep.driver.tuner`) and its searchers
(:mod:`~dakd.sweep.driver.objectives`), the cluster's checks (:mod:`~dakd.sweep.driver.cluster`),
the cost before launch (:mod:`~dakd.sweep.driver.cost`), SIGTERM
(:mod:`~dakd.sweep.driver.interrupt`), the parent run, the state file, the summary and the Pareto
front."""
