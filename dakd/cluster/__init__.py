"""Clusters the sweeps run on. :mod:`dakd.cluster.local` brings up one made of the real parts on
one machine (PostgreSQL, an MLflow server on it, Ray nodes started with ``ray start``), for trying
a cluster set-up before renting one and for the tests that inflict a cluster's faults on it."""
