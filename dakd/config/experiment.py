"""The whole experiment: its sections, its fingerprint (stage reuse), and loading it from YAML
with dotted overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dakd import loss_terms
from dakd.config.build import (
    ConfigError,
    build,
    flatten,
    lift_open_fields,
    parse_override,
    read_yaml,
    require,
    set_dotted,
)
from dakd.config.data import DataConfig
from dakd.config.plugins import load_plugins
from dakd.config.renamed import current_key, current_tree, stored_names
from dakd.config.sections import (
    DistillConfig,
    LossConfig,
    ModelConfig,
    ModelsConfig,
    OptimConfig,
    TeacherCacheConfig,
    TrainConfig,
)
from dakd.config.weights import file_sha256
from dakd.paradigms import AUTO, PARADIGMS, STAGES

#: Keys added after stages were first stored, at the values that reproduce the behaviour from
#: before they existed; left out of fingerprints while at those values, so stored stages stay valid.
FINGERPRINT_NEUTRAL = {
    "train.amp": "fp32",
    "train.channels_last": False,
    "train.compile": False,
    "train.cudnn_benchmark": False,
    "train.sync_bn": False,
    "train.ema_decay": 0.0,
    "train.ema_warmup": False,
    "train.self_training": 0.0,
    "train.self_training_threshold": 0.9,
    "train.self_training_start": 0,
    "train.self_training_class_share": 0.0,
    "train.self_training_refresh": 1,
    "distill.resolution": "image",
    "models.teacher.pretrained": "",
    "models.student.pretrained": "",
    "models.teacher.output_stride": 8,
    "models.student.output_stride": 8,
    "data.source_root": "",
    "data.target_root": "",
    "data.source_resize": [720, 1280],
    "data.source_crop": [512, 1024],
    "data.target_resize": [512, 1024],
    "data.target_crop": [512, 1024],
    "data.val_resize": [512, 1024],
    "data.random_scale": [1.0, 1.0],
    "data.check_sample": 8,
    "data.train_size": 0,
    "teacher_cache.mode": "auto",
    "teacher_cache.dtype": "float32",
    "teacher_cache.topk": 0,
    "teacher_cache.if_full": "stop",
}

#: The speed switches' ``auto`` as fingerprints read it: the CPU's setting, the behaviour from
#: before ``auto`` existed (as ``train.device: auto`` names the configuration, not the device a
#: run lands on), so stored stages stay valid.
FINGERPRINT_AUTO = {
    "train.amp": "fp32",
    "train.channels_last": False,
    "train.cudnn_benchmark": False,
    "train.deterministic": True,
}


@dataclass
class ExperimentConfig:
    """The whole experiment. ``stage`` picks what is trained (see ``dakd.paradigms``).

    ``init``: checkpoint whose weights start the trained network (DAKD starts from student-DA).
    ``teacher``: checkpoint of the frozen teacher (stage ``dakd``).
    ``network``: which of ``models.teacher``/``models.student`` the source-only and oracle stages train.
    ``plugins``: modules that register students and loss terms (``dakd.config.plugins``),
    imported before the config is built; not part of fingerprints (what they register is, by
    the names and weights the config uses).
    """

    name: str = "experiment"
    stage: str = "dakd"
    paradigm: str = "c"
    network: str = "student"
    seed: int = 0
    init: str = ""
    teacher: str = ""
    out_dir: str = "runs/experiments"
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_cache: TeacherCacheConfig = field(default_factory=TeacherCacheConfig)
    plugins: list[str] = field(default_factory=list)

    # -- derived --------------------------------------------------------------------------
    @property
    def domains(self) -> tuple[str, str]:
        """(source, target): embedded domains, or real dataset names when ``data.dataset`` is real."""
        return self.data.domains

    @property
    def trained_model(self) -> ModelConfig:
        if self.stage == "teacher_da" or (
            self.stage in ("source_only", "oracle") and self.network == "teacher"
        ):
            return self.models.teacher
        return self.models.student

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """The plain tree: registered loss terms' weights under ``loss`` beside the built-in
        ones; ``plugins`` only when there are some (so configs without keep their shape)."""
        tree = lift_open_fields(self, dataclasses.asdict(self))
        if not tree["plugins"]:
            del tree["plugins"]
        return tree

    def flat(self) -> dict[str, Any]:
        """``{"loss.kl": 0.1, ...}``: the dotted view used for sweep axes and tracking params."""
        return flatten(self.to_dict())

    def fingerprint(
        self,
        exclude: tuple[str, ...] = (
            "name",
            "out_dir",
            "data.cache_dir",
            "teacher_cache.dir",
            "train.progress",
            "train.log_interval",
            "data.prefetch",
            "plugins",
        ),
    ) -> str:
        """A short hash of everything that changes the trained weights (for stage reuse).

        ``train.threads`` is part of it: on CPU the thread count changes the order of float
        reductions, and a run with 1 thread does not reproduce a run with 2 bit for bit. So is
        the embedded renderer's version: a changed scene generator is different data. So are the
        speed switches when they are on (they change float arithmetic); see ``FINGERPRINT_NEUTRAL``.
        A registered loss term's weight enters only when it differs from the term's default
        (:func:`dakd.loss_terms.fingerprint_neutral`), a network's ``args`` only when set.
        Real datasets enter with their absolute folders (the same config on other data is another
        stage). Backbone weight files enter by their content's sha256 (shipped ones through their
        manifest, others through the digest remembered beside them: :mod:`dakd.config.weights`),
        so a clone at another path, or another node of a cluster, finds the same stages; a
        weights file that is not there (yet) by its absolute path. Renamed keys enter under
        their old names (:data:`dakd.config.renamed.RENAMED_KEYS`), so a rename finds the stages
        stored before it.
        """
        flat = {
            k: FINGERPRINT_AUTO[k] if k in FINGERPRINT_AUTO and v == AUTO else v
            for k, v in self.flat().items()
        }
        neutral = set(loss_terms.fingerprint_neutral(flat))
        flat = {
            k: v
            for k, v in flat.items()
            if k not in exclude
            and k not in neutral
            and not (k in FINGERPRINT_NEUTRAL and FINGERPRINT_NEUTRAL[k] == v)
        }
        if self.data.dataset == "scenes":
            from dakd.data.scenes import renderer_version

            flat["data.renderer"] = renderer_version()
        else:
            flat.update(self.data.fingerprint_roots())
        for role in ("teacher", "student"):
            key = f"models.{role}.pretrained"
            if flat.get(key) == AUTO:  # the shipped backbone it resolves to, by its content
                from dakd.models.pretrained import resolve_pretrained

                flat[key] = resolve_pretrained(getattr(self.models, role)) or "auto:none"
        for key in ("models.teacher.pretrained", "models.student.pretrained", "teacher", "init"):
            value = flat.get(key)
            if value and value != AUTO:
                shipped = shipped_content(value)
                if shipped:
                    flat[key] = shipped
                elif key.endswith("pretrained"):
                    flat[key] = weights_identity(value)
        flat = stored_names(flat)
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]

    # -- checks -------------------------------------------------------------------------------
    def check(self) -> None:
        """Reject impossible values, naming the key: the experiment's own keys, then each
        section in tree order (what one key needs of another is :func:`validate`'s)."""
        require(self.stage in STAGES, "stage", f"{self.stage!r} is not one of {', '.join(STAGES)}")
        require(
            self.paradigm in PARADIGMS,
            "paradigm",
            f"{self.paradigm!r} is not one of {', '.join(PARADIGMS)}",
        )
        require(self.network in ("student", "teacher"), "network", "must be 'student' or 'teacher'")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(
            self.train.self_training == 0.0 or STAGES.get(self.stage, STAGES["dakd"]).adversarial,
            "train.self_training",
            f"needs a stage that reads target images (teacher_da, student_da, dakd), not "
            f"{self.stage!r}",
        )
        require(bool(self.name.strip()), "name", "must not be empty")
        for section in (
            self.data,
            self.models,
            self.loss,
            self.distill,
            self.optim,
            self.train,
            self.teacher_cache,
        ):
            section.check()


def shipped_content(path: str) -> str:
    """``sha256:<hex>`` of a weights file listed in the ``manifest.json`` beside it (a shipped
    file: its identity is its content, wherever the checkout is); "" for any other path."""
    path = os.path.abspath(path)
    manifest = os.path.join(os.path.dirname(path), "manifest.json")
    try:
        if os.path.basename(path) not in json.loads(Path(manifest).read_text()):
            return ""
        if not os.path.isfile(path):
            return ""
    except (OSError, ValueError, TypeError):
        return ""
    # shipped files lie in the checkout: their digest is kept in the process, not beside them
    return "sha256:" + file_sha256(path, remember=False)


def weights_identity(path: str) -> str:
    """What a backbone weights file that is not shipped contributes to a stage key:
    ``sha256:<hex>`` of its content (hashed once, :func:`dakd.config.weights.file_sha256`), or
    its absolute path while there is no such file."""
    path = os.path.abspath(path)
    try:
        return "sha256:" + file_sha256(path)
    except OSError:
        return path


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Reject impossible values, naming the key: every section checks itself
    (:meth:`ExperimentConfig.check`), then what one key needs of another. Returns ``cfg`` for
    chaining."""
    cfg.check()
    if cfg.stage == "dakd":
        require(
            bool(cfg.teacher), "teacher", "stage 'dakd' needs the frozen teacher's checkpoint path"
        )
    return cfg


def from_dict(
    data: dict[str, Any] | None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Build and validate a config from nested plain data plus ``{dotted.key: value}`` overrides.
    Keys renamed since (:mod:`dakd.config.renamed`) are read under their old names too, with a
    note."""
    tree = json.loads(json.dumps(data or {}))  # a deep, plain copy
    if not isinstance(tree, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}")
    tree = current_tree(tree)
    load_plugins(_plugins_named(tree, overrides or {}))
    for key, value in (overrides or {}).items():
        key = current_key(key)
        set_dotted(tree, key, current_tree(value, key + ".") if isinstance(value, dict) else value)
    return validate(build(ExperimentConfig, tree))


def _plugins_named(tree: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """The plugin modules a tree and its overrides name (checked as a list of strings)."""
    plugins = overrides.get("plugins", tree.get("plugins", []))
    plugins = [] if plugins is None else plugins
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"plugins: expected a list of module names, got {plugins!r}")
    return plugins


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> ExperimentConfig:
    """Load YAML (``yaml.safe_load``) and apply ``--set`` overrides; errors name the file and key."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path)
    if isinstance(overrides, list):
        overrides = dict(parse_override(item) for item in overrides)
    try:
        return from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None
