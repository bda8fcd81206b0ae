"""One typed configuration tree for an experiment, loaded from YAML with dotted overrides.

Every sweep axis is a dotted path into this tree (``loss.kl``, ``distill.levels``, ``paradigm``,
``seed``). Unknown keys, wrong types and impossible values raise :class:`ConfigError` naming the
key, before any work starts: the builder checks keys and types, each section checks its own
values, and the experiment what spans sections.

* :mod:`dakd.config.build`: plain data to typed dataclasses, dotted keys, YAML files, errors.
* :mod:`dakd.config.data`: the data section (domains, real-dataset folders and recipe).
* :mod:`dakd.config.sections`: networks, loss weights, distillation, optimiser, training loop,
  teacher-output cache.
* :mod:`dakd.config.experiment`: the whole tree, its fingerprint, :func:`from_dict` and
  :func:`load_config`.
* :mod:`dakd.config.renamed`: keys renamed since runs were first stored, still read under
  their old names.

The vocabulary the checks use (stages, paradigms, levels, ``auto``) lives in
:mod:`dakd.paradigms`.
"""

from dakd.config.build import (
    ConfigError,
    build,
    coerce,
    fail,
    flatten,
    not_text,
    parse_override,
    path_kind,
    read_yaml,
    reject_unknown,
    require,
    set_dotted,
    within,
)
from dakd.config.data import DATASETS, SCENARIOS, DataConfig
from dakd.config.experiment import (
    FINGERPRINT_NEUTRAL,
    ExperimentConfig,
    from_dict,
    load_config,
    shipped_content,
    validate,
)
from dakd.config.renamed import RENAMED_KEYS, current_key, current_tree, stored_names
from dakd.config.sections import (
    AMP_MODES,
    BN_MODES,
    DistillConfig,
    LossConfig,
    ModelConfig,
    ModelsConfig,
    OptimConfig,
    TeacherCacheConfig,
    TrainConfig,
)

__all__ = [
    "AMP_MODES",
    "BN_MODES",
    "DATASETS",
    "FINGERPRINT_NEUTRAL",
    "RENAMED_KEYS",
    "SCENARIOS",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "ModelsConfig",
    "OptimConfig",
    "TeacherCacheConfig",
    "TrainConfig",
    "build",
    "coerce",
    "current_key",
    "current_tree",
    "fail",
    "flatten",
    "from_dict",
    "load_config",
    "not_text",
    "parse_override",
    "path_kind",
    "read_yaml",
    "reject_unknown",
    "require",
    "set_dotted",
    "shipped_content",
    "stored_names",
    "validate",
    "within",
]
