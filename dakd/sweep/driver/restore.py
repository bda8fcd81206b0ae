"""Restoring a sweep's Tune experiment written by an older layout of the package.

Tune pickles the Tuner of a sweep (``tuner.pkl``: its callbacks and the trial folder namer), and
pickles name classes and functions by their module. When the sweep modules moved into
``dakd.sweep.{spec,remote,driver}``, a sweep interrupted before could not be resumed: unpickling
asked for ``dakd.sweep.tuner``. :func:`old_module_paths` answers those names with the modules'
new homes while the state is read, so ``--resume`` continues such a sweep where it stopped. State
that still cannot be read (written by a dakd whose objects no longer exist at all) is one line,
:class:`TuneStateError`, naming the folder and what to do; finished trials, MLflow runs, stages
and caches are untouched by it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator

#: Where each sweep module of the flat layout lives now (objects of these modules can be in
#: Tune's pickled state). ``dakd.sweep.spec`` is not among them: the name is the spec's package
#: now, and Tune's state holds nothing of the old module.
MOVED_MODULES = {
    "dakd.sweep.space": "dakd.sweep.spec.space",
    "dakd.sweep.settings": "dakd.sweep.spec.settings",
    "dakd.sweep.students": "dakd.sweep.spec.students",
    "dakd.sweep.context": "dakd.sweep.spec.context",
    "dakd.sweep.trial": "dakd.sweep.remote.trial",
    "dakd.sweep.stage_tasks": "dakd.sweep.remote.stages",
    "dakd.sweep.hooks": "dakd.sweep.remote.hooks",
    "dakd.sweep.deployment": "dakd.sweep.remote.deployment",
    "dakd.sweep.run": "dakd.sweep.driver.run",
    "dakd.sweep.plan": "dakd.sweep.driver.plan",
    "dakd.sweep.stages": "dakd.sweep.driver.stages",
    "dakd.sweep.tuner": "dakd.sweep.driver.tuner",
    "dakd.sweep.parent": "dakd.sweep.driver.parent",
    "dakd.sweep.state": "dakd.sweep.driver.state",
    "dakd.sweep.summary": "dakd.sweep.driver.summary",
    "dakd.sweep.cluster": "dakd.sweep.driver.cluster",
    "dakd.sweep.cost": "dakd.sweep.driver.cost",
    "dakd.sweep.interrupt": "dakd.sweep.driver.interrupt",
    "dakd.sweep.objectives": "dakd.sweep.driver.objectives",
    "dakd.sweep.front": "dakd.sweep.driver.front",
}


class TuneStateError(RuntimeError):
    """A sweep's Tune state that this version of dakd cannot read."""


@contextlib.contextmanager
def old_module_paths() -> Iterator[None]:
    """While inside, ``import dakd.sweep.tuner`` (and the other old names) gives the module at its
    new path; afterwards the old names are gone again from ``sys.modules``."""
    aliased = [old for old in MOVED_MODULES if old not in sys.modules]
    for old in aliased:
        sys.modules[old] = importlib.import_module(MOVED_MODULES[old])
    try:
        yield
    finally:
        for old in aliased:
            sys.modules.pop(old, None)


def restore_tuner(previous: str, trainable):
    """Tune's ``Tuner.restore`` of the experiment in ``previous`` (errored trials retried), read
    with the old module names answered; state that still cannot be read is a
    :class:`TuneStateError`."""
    from ray import tune

    try:
        with old_module_paths():
            return tune.Tuner.restore(previous, trainable=trainable, resume_errored=True)
    except (ModuleNotFoundError, AttributeError) as err:
        raise TuneStateError(
            f"the Tune state in {previous} was written by another version of dakd and cannot be "
            f"read ({type(err).__name__}: {err}); its finished trials, MLflow runs, stages and "
            "caches are kept: run the sweep again without --resume (stages and caches are reused)"
        ) from err
