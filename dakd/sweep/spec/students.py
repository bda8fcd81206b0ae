"""The students a sweep spec can give, checked before Ray starts: the weights each starts from
and the deployment resolution each is measured at.

A spec's base student and every option of a search axis that changes it (``models.student.*``,
or a group of settings that sets it) are built as :class:`~dakd.config.ModelConfig` values; an
explicit ``pretrained`` file a searched student does not fit, or a ``deploy.size`` a student
cannot take, is one ConfigError naming the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from dakd.config import ExperimentConfig, fail
from dakd.paradigms import AUTO
from dakd.sweep.spec.settings import section
from dakd.sweep.spec.space import Distribution
from dakd.sweep.spec.tree import assignments, config_path


def students_of(base: ExperimentConfig, axes: dict[str, Distribution]) -> list[tuple[str, Any]]:
    """(key, student config) for the base student and for every option of a search axis that
    changes it (other keys as in the base)."""
    students = [("experiment.models.student", base.models.student)]
    for axis, dist in axes.items():
        for label, value in dist.options if dist.categorical else ():
            found = assignments("" if config_path(axis) is None else axis, value)
            given = {
                k.removeprefix("models.student."): v
                for k, v in found.items()
                if k.startswith("models.student.") and k.count(".") == 2
            }
            if given:
                student = copy.deepcopy(base.models.student)
                for name, item in given.items():
                    setattr(student, name, item)
                students.append((f"search.{axis}: {label}", student))
    return students


def check_students(students: list[tuple[str, Any]], root: Path) -> None:
    """A searched student that its ``pretrained`` file does not fit (another name or width)
    stops here; ``auto`` picks each student's shipped weights, or none."""
    from dakd.models.checkpoint import CheckpointError
    from dakd.models.pretrained import check_manifest, network_of

    for key, student in students:
        if student.pretrained in ("", AUTO):
            continue
        path = Path(student.pretrained)
        path = path if path.is_absolute() or path.is_file() else root / path
        if not path.is_file():
            continue  # the plan names a missing file
        try:
            check_manifest(path, network_of(student), key, backbone=True)
        except CheckpointError as err:
            fail(
                key,
                f"{err}; set models.student.pretrained: auto (each student's shipped weights, "
                "or random initialisation where none are shipped)",
            )


def deploy_settings(raw: Any, students: list[tuple[str, Any]]):
    """The ``deploy`` section, checked against every student the search can give: a resolution
    a network cannot take (not divisible by its stride) stops here, not in a trial."""
    if raw is None:
        return None
    from dakd.evaluation.deploy import DeployError, DeploySettings, check_size

    deploy = section(raw, DeploySettings, "deploy", DeploySettings(size=[1024, 2048]))
    for _, student in students:
        try:
            check_size(student, deploy.size)
        except DeployError as err:
            fail("deploy.size", str(err))
    return deploy
