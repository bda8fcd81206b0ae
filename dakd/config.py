"""One typed configuration tree for an experiment, loaded from YAML with dotted overrides.

Every sweep axis is a dotted path into this tree (``loss.kl``, ``distill.levels``, ``paradigm``,
``seed``). Unknown keys, wrong types and impossible values raise :class:`ConfigError` naming the
key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dakd.paradigms import AUTO, DEFAULT_LEVELS, LEVELS, PARADIGMS, STAGES

SCENARIOS = {"synth_to_real": ("game", "city"), "real_to_real": ("dashcam", "city")}


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and the file, when there is one)."""


@dataclass
class DataConfig:
    """Which domains to read and how. ``source``/``target`` default to the scenario's pair.

    ``color_jitter`` (strength s: brightness, contrast, saturation in [1-s, 1+s], hue +-s/4) and
    ``grayscale`` (probability) are photometric augmentations of training images, off at 0.
    ``train_size``: the first this many images of each embedded train split (0: all 2000).
    ``cache_dir``: where the embedded splits are rendered once and reused ("" renders in memory).

    ``batch_size`` is the *global* batch per domain (``batch_size`` source + ``batch_size``
    target images a step): with N data-parallel processes each takes a disjoint share of
    ``batch_size / N`` images of the same global batch (it must divide evenly), so a config
    means the same optimisation on any number of processes. ``val_batch_size`` is per process
    (it changes no result).

    ``dataset``: ``scenes`` (the embedded benchmark; ``source``/``target`` name its domains) or
    ``real`` (``source``/``target`` name datasets of ``dakd.data.datasets``: cityscapes, gta5,
    bdd100k, synthia; the scenarios default to gta5 -> cityscapes and bdd100k -> cityscapes).
    The keys below apply to real data only (docs/datasets.md); their defaults are the paper's
    recipe (AdaptSegNet's): ``source_root``/``target_root`` are the dataset folders ("" =
    ``$DAKD_DATA/<dataset>``); source images are resized to ``source_resize`` and cropped at
    random to ``source_crop``; target training images are resized to ``target_resize`` and
    cropped to ``target_crop``; validation images are resized to ``val_resize`` while their
    labels keep full resolution (logits are upsampled to it); ``random_scale`` ``[low, high]``
    scales training samples by a random factor before the crop (``[1, 1]``: off); ``hflip``
    mirrors them (on by default for the embedded benchmark; AdaptSegNet's recipe, which the
    real-data specs follow, has it off). Sizes are ``[height, width]``. ``check_sample``: before training, every split
    is listed and paired, and this many pairs per split are decoded and checked (0: none).

    ``prefetch``: training batches built ahead per stream in background threads (changes no
    result, only when the work happens): -1 = auto, 4 for real datasets (decoded from files) and
    0 for the embedded scenes (already in memory); 0 = off.
    """

    scenario: str = "synth_to_real"
    dataset: str = "scenes"
    source: str = ""
    target: str = ""
    crop_size: list[int] = field(default_factory=lambda: [64, 128])
    batch_size: int = 8
    val_batch_size: int = 25
    val_size: int = 0
    train_size: int = 0
    scene_seed: int = 0
    hflip: bool = True
    color_jitter: float = 0.0
    grayscale: float = 0.0
    cache_dir: str = "runs/cache/scenes"
    source_root: str = ""
    target_root: str = ""
    source_resize: list[int] = field(default_factory=lambda: [720, 1280])
    source_crop: list[int] = field(default_factory=lambda: [512, 1024])
    target_resize: list[int] = field(default_factory=lambda: [512, 1024])
    target_crop: list[int] = field(default_factory=lambda: [512, 1024])
    val_resize: list[int] = field(default_factory=lambda: [512, 1024])
    random_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    check_sample: int = 8
    prefetch: int = -1


@dataclass
class ModelConfig:
    """``pretrained``: a local file of backbone weights (e.g. ImageNet DRN or ResNet weights,
    or the embedded benchmark's shipped weights, ``python -m dakd pretrain``) the network starts
    from when no ``init`` checkpoint is given; tensors are matched by name and shape, and the
    match is reported; an encoder tensor the file lacks or has in another shape is an error.
    Nothing is downloaded.

    ``output_stride``: stride of the output-level logits. 8 is the paper's DRN; 4 or 2 add a
    light decoder that fuses an early stage (DRN only), so that thin and small classes survive
    on the logit grid of small inputs. The feature level stays at stride 8.
    """

    name: str = "drn_d_22"
    width: float = 1.0
    pretrained: str = ""
    output_stride: int = 8


@dataclass
class ModelsConfig:
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig("drn_d_38", 0.25))
    student: ModelConfig = field(default_factory=lambda: ModelConfig("drn_d_22", 0.125))
    discriminator_ndf: int = 16


@dataclass
class LossConfig:
    """Loss weights (PAPER.md). ``kl``, ``mse``, ``pseudo`` are lambda_KL, lambda_MSE, lambda_pseudoT."""

    seg_aux: float = 0.1
    adv_output: float = 1e-3
    adv_feature: float = 2e-4
    adv_kind: str = "bce"
    kl: float = 0.1
    mse: float = 0.01
    pseudo: float = 1.0
    target: float = 1.0
    temperature: float = 1.0
    pseudo_threshold: float = 0.0


@dataclass
class DistillConfig:
    """Distillation levels and, for paradigm (d), the share of steps spent in phase (c)."""

    levels: list[str] = field(default_factory=lambda: list(DEFAULT_LEVELS))
    sequential_split: float = 0.5


@dataclass
class OptimConfig:
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    disc_lr: float = 1e-4
    disc_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class TeacherCacheConfig:
    """The teacher-output cache (``dakd.teacher_cache``): the frozen teacher's outputs on every
    training image, computed once and read by every DAKD run with the same teacher and data.

    ``mode``: ``auto`` (default) reads a cache wherever it gives exactly the live teacher's
    numbers (no photometric augmentation, no random crop of real data) and builds one where
    that saves teacher passes (a sweep builds it as a stage before its trials; a single run
    when its steps read more samples than the cache holds); ``on`` builds and reads it always
    (with photometric augmentation or random crops it is an approximation, said in one line);
    ``off`` runs the teacher at every step. ``dtype``: ``float32`` (exact) or ``float16``;
    ``topk``: 0 keeps all 19 logits per pixel, k keeps the k largest (ReLabel). ``dir``: where
    caches live, one folder per key (node-local by default; a shared filesystem path on a
    cluster with shared storage). ``if_full``: a disk without room stops the run (``stop``)
    or the run goes on with the live teacher (``live``).
    """

    mode: str | bool = "auto"  # YAML reads on/off as booleans: they mean "on"/"off"
    dtype: str = "float32"
    topk: int = 0
    dir: str = "runs/cache/teacher"
    if_full: str = "stop"

    def __post_init__(self):
        if isinstance(self.mode, bool):
            self.mode = "on" if self.mode else "off"


AMP_MODES = ("fp32", "bf16", "fp16")
#: ``train.bn_stats`` values (dakd.models.domain_bn.BN_MODES; the core config imports no torch).
BN_MODES = ("domain", "target", "blended")


@dataclass
class TrainConfig:
    """The loop, the device and the speed switches.

    ``device``: auto (CUDA when present), cpu, cuda or cuda:N. Under torchrun rank r uses
    ``cuda:LOCAL_RANK`` (auto or cuda) or the CPU (gloo).
    ``threads``: torch CPU threads per process (0 = torch's default).
    ``deterministic``: deterministic kernels where torch has them (CUDA's bilinear-upsampling
    backward has none; torch warns about it instead of failing).

    Speed switches (off by default; where the hardware lacks one it stays off and a one-line
    notice says so):

    * ``amp``: automatic mixed precision of a step's forward passes: ``fp32`` (none; the
      values are named so that YAML reads none of them as a boolean); ``bf16`` (autocast to
      bfloat16, on CUDA GPUs that support it and on CPU); ``fp16`` (autocast to float16 with
      a GradScaler, CUDA only). Weights, optimiser state and evaluation stay in float32.
    * ``channels_last``: NHWC memory format for the networks and input images (faster
      convolutions on tensor-core GPUs).
    * ``compile``: ``torch.compile`` the student (after its DDP wrapper) and the teacher; the
      first steps pay the compilation.
    * ``cudnn_benchmark``: let cuDNN time its kernels and keep the fastest (CUDA only); needs
      ``deterministic: false``, since the choice may differ from run to run.
    * ``sync_bn``: SyncBatchNorm in the student, so that BatchNorm normalises over the global
      batch rather than each process's share (CUDA only, data-parallel runs only).

    ``bn_stats``: which batches update BatchNorm running statistics in stages that see both
    domains (``dakd.models.domain_bn``): ``domain`` (default; a source pair and a target pair
    of statistics with shared affine parameters, DSBN; a network is evaluated on the target
    with the target pair, and the frozen teacher predicts on each domain with that domain's
    pair), ``target`` (only target batches update them) or ``blended`` (every batch: plain
    PyTorch, which evaluates the target with a mixture of both domains' statistics).
    ``precise_bn``: before each evaluation, re-estimate those statistics with the current
    weights from this many training images per pair (0: off, the running averages are used as
    they are); see ``Trainer.precise_bn``.
    ``ema``: decay of an exponential moving average of the trained network's weights (0: off;
    e.g. 0.998, a window of about 500 steps). When on, evaluations, reports and the final
    ``model.pt`` use the averaged weights (their BatchNorm statistics are the raw network's,
    re-estimated for the averaged weights when ``precise_bn`` is on); the raw weights are
    still evaluated and reported as ``raw/miou`` and ``raw/pixel_acc``. Training itself never
    reads the average, so the trajectory of the raw weights is unchanged. Adversarial
    alignment swings by a few mIoU from one evaluation to the next; the average does not (the
    mean teacher of UDA self-training frameworks, Polyak averaging).
    ``ema_warmup``: ramp the decay up as the mean teacher does (Tarvainen & Valpola, 2017;
    DAFormer): the t-th update uses min(ema, 1 - 1/(t + 1)), an exact mean of the weights so
    far until that reaches ``ema``; so the first step's weights (the random heads of a
    pretrained start) keep a share of 1/t instead of ema^t (0.30 after 600 steps at 0.998).
    """

    steps: int = 1000
    eval_interval: int = 250
    log_interval: int = 50
    device: str = "auto"
    threads: int = 0
    deterministic: bool = True
    progress: bool = True
    amp: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    sync_bn: bool = False
    bn_stats: str = "domain"
    precise_bn: int = 0
    ema: float = 0.0
    ema_warmup: bool = False


#: Keys added after stages were first stored, at the values that reproduce the behaviour from
#: before they existed; left out of fingerprints while at those values, so stored stages stay valid.
FINGERPRINT_NEUTRAL = {
    "train.amp": "fp32",
    "train.channels_last": False,
    "train.compile": False,
    "train.cudnn_benchmark": False,
    "train.sync_bn": False,
    "train.ema": 0.0,
    "train.ema_warmup": False,
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


@dataclass
class ExperimentConfig:
    """The whole experiment. ``stage`` picks what is trained (see ``dakd.paradigms``).

    ``init``: checkpoint whose weights start the trained network (DAKD starts from student-DA).
    ``teacher``: checkpoint of the frozen teacher (stage ``dakd``).
    ``network``: which of ``models.teacher``/``models.student`` the source-only and oracle stages train.
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

    # -- derived --------------------------------------------------------------------------
    @property
    def domains(self) -> tuple[str, str]:
        """(source, target): embedded domains, or real dataset names when ``data.dataset`` is real."""
        scenarios = SCENARIOS
        if self.data.dataset == "real":
            from dakd.data.datasets import REAL_SCENARIOS as scenarios
        source, target = scenarios.get(self.data.scenario, ("", ""))
        return self.data.source or source, self.data.target or target

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
        return dataclasses.asdict(self)

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
        ),
    ) -> str:
        """A short hash of everything that changes the trained weights (for stage reuse).

        ``train.threads`` is part of it: on CPU the thread count changes the order of float
        reductions, and a run with 1 thread does not reproduce a run with 2 bit for bit. So is
        the embedded renderer's version: a changed scene generator is different data. So are the
        speed switches when they are on (they change float arithmetic); see ``FINGERPRINT_NEUTRAL``.
        Real datasets enter with their absolute folders (the same config on other data is another
        stage). Weight files shipped with a manifest (the embedded backbones and teachers) enter
        by their content's sha256, so a clone at another path, or another node of a cluster,
        finds the same stages; other backbone weights by their absolute path.
        """
        flat = {
            k: v
            for k, v in self.flat().items()
            if k not in exclude and not (k in FINGERPRINT_NEUTRAL and FINGERPRINT_NEUTRAL[k] == v)
        }
        if self.data.dataset == "scenes":
            from dakd.data.scenes import renderer_version

            flat["data.renderer"] = renderer_version()
        else:
            from dakd.data.datasets import fingerprint_roots

            flat.update(fingerprint_roots(self))
        for key in ("models.teacher.pretrained", "models.student.pretrained", "teacher", "init"):
            value = flat.get(key)
            if value and value != AUTO:
                shipped = shipped_content(value)
                if shipped:
                    flat[key] = shipped
                elif key.endswith("pretrained"):
                    flat[key] = os.path.abspath(value)
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def shipped_content(path: str) -> str:
    """``sha256:<hex>`` of a weights file listed in the ``manifest.json`` beside it (a shipped
    file: its identity is its content, wherever the checkout is); "" for any other path."""
    path = os.path.abspath(path)
    manifest = os.path.join(os.path.dirname(path), "manifest.json")
    try:
        if os.path.basename(path) not in json.loads(Path(manifest).read_text()):
            return ""
        stat = os.stat(path)
    except (OSError, ValueError, TypeError):
        return ""
    return "sha256:" + _file_sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, remembered per (path, size, modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


# -- building from plain data -----------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, default: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected.

    A nested section starts from ``default`` (the parent's default for it), so a partial mapping
    such as ``{models: {teacher: {width: 0.5}}}`` keeps the teacher's default name.
    """
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key + ".", default)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], prefix: str = "", defaults: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}"
        )
    defaults = defaults if defaults is not None else cls()
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name, getattr(defaults, name))
        else:
            kwargs[name] = getattr(defaults, name)
    return cls(**kwargs)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


#: Values of ``data.dataset``: the embedded benchmark, or the real datasets.
DATASETS = ("scenes", "real")


def _check_real_data(d: DataConfig) -> None:
    """The real-data keys: sizes, scale range, check sample."""
    for name in ("source_resize", "source_crop", "target_resize", "target_crop", "val_resize"):
        size = getattr(d, name)
        _check(
            len(size) == 2 and min(size) >= 16,
            f"data.{name}",
            f"must be [height, width], each >= 16, got {size}",
        )
    for name in ("source_crop", "target_crop"):
        _check(
            all(s % 8 == 0 for s in getattr(d, name)),
            f"data.{name}",
            "height and width must be multiples of 8 (output stride)",
        )
    scale = d.random_scale
    _check(
        len(scale) == 2 and 0 < scale[0] <= scale[1] <= 4,
        "data.random_scale",
        f"must be [low, high] with 0 < low <= high <= 4 ([1, 1]: off), got {scale}",
    )
    _check(d.check_sample >= 0, "data.check_sample", "must be >= 0 (0: layout and pairing only)")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Reject impossible values, naming the key. Returns ``cfg`` for chaining."""
    from dakd.data.datasets import DATASETS as READERS
    from dakd.data.scenes import DOMAINS
    from dakd.models import list_models

    _check(cfg.stage in STAGES, "stage", f"{cfg.stage!r} is not one of {', '.join(STAGES)}")
    _check(
        cfg.paradigm in PARADIGMS,
        "paradigm",
        f"{cfg.paradigm!r} is not one of {', '.join(PARADIGMS)}",
    )
    _check(cfg.network in ("student", "teacher"), "network", "must be 'student' or 'teacher'")
    _check(cfg.seed >= 0, "seed", "must be >= 0")
    _check(bool(cfg.name.strip()), "name", "must not be empty")
    d = cfg.data
    _check(
        d.scenario in SCENARIOS,
        "data.scenario",
        f"{d.scenario!r} is not one of {', '.join(SCENARIOS)}",
    )
    _check(
        d.dataset in DATASETS,
        "data.dataset",
        f"{d.dataset!r} is not one of {', '.join(DATASETS)} (embedded benchmark, real datasets)",
    )
    for key, domain in (("data.source", cfg.domains[0]), ("data.target", cfg.domains[1])):
        if d.dataset == "scenes":
            _check(
                domain in DOMAINS,
                key,
                f"{domain!r} is not an embedded domain ({', '.join(DOMAINS)})",
            )
        else:
            _check(
                domain in READERS,
                key,
                f"{domain!r} is not a real dataset ({', '.join(READERS)})",
            )
    _check_real_data(d)
    _check(
        len(d.crop_size) == 2 and min(d.crop_size) >= 16,
        "data.crop_size",
        "must be [height, width], each >= 16",
    )
    _check(
        all(s % 8 == 0 for s in d.crop_size),
        "data.crop_size",
        "height and width must be multiples of 8 (output stride)",
    )
    _check(d.batch_size >= 1, "data.batch_size", "must be >= 1")
    _check(d.val_batch_size >= 1, "data.val_batch_size", "must be >= 1")
    _check(d.prefetch >= -1, "data.prefetch", f"must be >= 0, or -1 for auto, got {d.prefetch}")
    _check(0 <= d.color_jitter <= 1, "data.color_jitter", "must be in [0, 1]")
    _check(0 <= d.grayscale <= 1, "data.grayscale", "must be in [0, 1]")
    _check(d.val_size >= 0, "data.val_size", "must be >= 0 (0 = the whole val split)")
    _check(
        0 <= d.train_size <= 2000,
        "data.train_size",
        f"must be in 0..2000 (0 = the whole train split), got {d.train_size}",
    )
    _check(
        d.train_size == 0 or d.dataset == "scenes",
        "data.train_size",
        "applies to the embedded scenes only (a real dataset trains on its whole split)",
    )
    models = set(list_models())
    for key, m in (("models.teacher", cfg.models.teacher), ("models.student", cfg.models.student)):
        _check(
            m.name in models,
            f"{key}.name",
            f"{m.name!r} is not registered ({', '.join(sorted(models))})",
        )
        _check(0 < m.width <= 4, f"{key}.width", f"must be in (0, 4], got {m.width}")
        _check(
            m.output_stride in (8, 4, 2),
            f"{key}.output_stride",
            f"must be 8, 4 or 2, got {m.output_stride}",
        )
        _check(
            m.output_stride == 8 or m.name.startswith("drn_"),
            f"{key}.output_stride",
            f"{m.output_stride} needs a decoder, which only the DRN networks have ({m.name} "
            "has output stride 8)",
        )
    _check(cfg.models.discriminator_ndf >= 1, "models.discriminator_ndf", "must be >= 1")
    loss = cfg.loss
    for name in ("seg_aux", "adv_output", "adv_feature", "kl", "mse", "pseudo", "target"):
        _check(getattr(loss, name) >= 0, f"loss.{name}", f"must be >= 0, got {getattr(loss, name)}")
    _check(loss.adv_kind in ("bce", "lsgan"), "loss.adv_kind", "must be 'bce' or 'lsgan'")
    _check(loss.temperature > 0, "loss.temperature", "must be > 0")
    _check(0 <= loss.pseudo_threshold < 1, "loss.pseudo_threshold", "must be in [0, 1)")
    levels = cfg.distill.levels
    _check(len(levels) >= 1, "distill.levels", f"choose one or both of {list(DEFAULT_LEVELS)}")
    _check(
        all(lv in LEVELS for lv in levels),
        "distill.levels",
        f"{levels} has a level not in {list(DEFAULT_LEVELS)}",
    )
    _check(len(set(levels)) == len(levels), "distill.levels", f"{levels} repeats a level")
    _check(0 < cfg.distill.sequential_split < 1, "distill.sequential_split", "must be in (0, 1)")
    o = cfg.optim
    _check(o.lr > 0, "optim.lr", "must be > 0")
    _check(o.disc_lr > 0, "optim.disc_lr", "must be > 0")
    _check(0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(o.poly_power >= 0, "optim.poly_power", "must be >= 0")
    _check(
        len(o.disc_betas) == 2 and all(0 <= b < 1 for b in o.disc_betas),
        "optim.disc_betas",
        "must be two numbers in [0, 1)",
    )
    t = cfg.train
    _check(t.steps >= 1, "train.steps", "must be >= 1")
    _check(t.eval_interval >= 1, "train.eval_interval", "must be >= 1")
    _check(t.log_interval >= 1, "train.log_interval", "must be >= 1")
    _check(
        t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
        "train.device",
        "must be auto, cpu, cuda or cuda:N",
    )
    _check(t.precise_bn >= 0, "train.precise_bn", "must be >= 0 (0: off)")
    _check(0.0 <= t.ema < 1.0, "train.ema", "must be in [0, 1) (0: off; e.g. 0.998)")
    _check(t.threads >= 0, "train.threads", "must be >= 0 (0 = torch's default)")
    _check(t.amp in AMP_MODES, "train.amp", f"{t.amp!r} is not one of {', '.join(AMP_MODES)}")
    _check(
        t.bn_stats in BN_MODES,
        "train.bn_stats",
        f"{t.bn_stats!r} is not one of {', '.join(BN_MODES)}",
    )
    _check(
        not (t.cudnn_benchmark and t.deterministic),
        "train.cudnn_benchmark",
        "needs train.deterministic=false (cuDNN picks kernels by timing them, so runs differ)",
    )
    tc = cfg.teacher_cache
    _check(
        tc.mode in ("auto", "on", "off"),
        "teacher_cache.mode",
        f"{tc.mode!r} is not one of auto, on, off",
    )
    _check(
        tc.dtype in ("float32", "float16"),
        "teacher_cache.dtype",
        f"{tc.dtype!r} is not one of float32, float16",
    )
    _check(
        0 <= tc.topk < 19,
        "teacher_cache.topk",
        f"must be 0 (all 19 logits) or 1..18 (the k largest), got {tc.topk}",
    )
    _check(
        tc.if_full in ("stop", "live"),
        "teacher_cache.if_full",
        f"{tc.if_full!r} is not one of stop, live",
    )
    _check(bool(tc.dir.strip()), "teacher_cache.dir", "must not be empty")
    _check(
        "://" not in tc.dir,
        "teacher_cache.dir",
        f"{tc.dir!r}: caches are memory-mapped files; give a local or shared filesystem path",
    )
    if cfg.stage == "dakd":
        _check(
            bool(cfg.teacher), "teacher", "stage 'dakd' needs the frozen teacher's checkpoint path"
        )
    return cfg


def not_text(err: UnicodeDecodeError) -> str:
    """What a file that failed to decode is, in words (for one-line errors)."""
    return (
        f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
        "a config or spec is a YAML text file"
    )


def parse_override(item: str) -> tuple[str, Any]:
    """``"loss.kl=0.5"`` -> ``("loss.kl", 0.5)``; the value is read as YAML (``[output]``, ``true``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. loss.kl=0.5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot read value {raw!r}: {err}") from None
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``key = "a.b.c"``, creating nested mappings on the way."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(
    data: dict[str, Any] | None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Build and validate a config from nested plain data plus ``{dotted.key: value}`` overrides."""
    tree = json.loads(json.dumps(data or {}))  # a deep, plain copy
    if not isinstance(tree, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    return validate(_build(ExperimentConfig, tree))


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> ExperimentConfig:
    """Load YAML (``yaml.safe_load``) and apply ``--set`` overrides; errors name the file and key."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: {not_text(err)}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    if isinstance(overrides, list):
        overrides = dict(parse_override(item) for item in overrides)
    try:
        return from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None
