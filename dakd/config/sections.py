"""The sections of an experiment besides data: networks, loss weights, distillation,
optimiser, training loop and teacher-output cache.

Each section checks its own values (``check``), naming the dotted key; the builder
(:mod:`dakd.config.build`) has checked keys and types before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from dakd import loss_terms
from dakd.config.build import require
from dakd.loss_terms import BUILTIN_DEFAULTS
from dakd.paradigms import DEFAULT_LEVELS, LEVELS, RESOLUTIONS


@dataclass
class ModelConfig:
    """``pretrained``: a local file of backbone weights (e.g. ImageNet DRN or ResNet weights,
    or the embedded benchmark's shipped weights, ``python -m dakd pretrain``) the network starts
    from when no ``init`` checkpoint is given; tensors are matched by name and shape, and the
    match is reported; an encoder tensor the file lacks or has in another shape is an error.
    Nothing is downloaded. ``auto``: the shipped backbone of this name and width in
    ``weights/embedded/`` (any output stride: the encoder is the same), or random
    initialisation where none is shipped (``dakd.models.pretrained.resolve_pretrained``).

    ``output_stride``: stride of the output-level logits. 8 is the paper's DRN; 4 or 2 add a
    light decoder that fuses an early stage (DRN only), so that thin and small classes survive
    on the logit grid of small inputs. The feature level stays at stride 8.

    ``args``: keyword arguments for the network's builder (``register_model``), beyond name,
    width and output stride; when set they enter the fingerprints of the stages that build the
    network and the checkpoint's description of it.
    """

    name: str = "drn_d_22"
    width: float = 1.0
    pretrained: str = ""
    output_stride: int = 8
    args: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        """Reject impossible values, naming the key; ``key`` is where the network sits
        (``models.teacher``, ``models.student``)."""
        from dakd.models import list_models

        models = sorted(list_models())
        require(
            self.name in models,
            f"{key}.name",
            f"{self.name!r} is not registered ({', '.join(models)})",
        )
        require(0 < self.width <= 4, f"{key}.width", f"must be in (0, 4], got {self.width}")
        require(
            self.output_stride in (8, 4, 2),
            f"{key}.output_stride",
            f"must be 8, 4 or 2, got {self.output_stride}",
        )
        require(
            self.output_stride == 8 or self.name.startswith("drn_"),
            f"{key}.output_stride",
            f"{self.output_stride} needs a decoder, which only the DRN networks have ({self.name} "
            "has output stride 8)",
        )
        if self.args:
            self._check_args(key)

    def _check_args(self, key: str) -> None:
        from dakd.models import check_model_args

        for arg, field_name in (("num_classes", ""), ("width", "width")):
            where = f" (set {key}.{field_name})" if field_name else ""
            require(
                arg not in self.args, f"{key}.args", f"{arg!r} is not a builder argument{where}"
            )
        require(
            "output_stride" not in self.args,
            f"{key}.args",
            f"'output_stride' is not a builder argument (set {key}.output_stride)",
        )
        try:
            check_model_args(self.name, self.width, self.args)
        except ValueError as err:
            require(False, f"{key}.args", str(err))


@dataclass
class ModelsConfig:
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig("drn_d_38", 0.25))
    student: ModelConfig = field(default_factory=lambda: ModelConfig("drn_d_22", 0.125))
    discriminator_ndf: int = 16

    def check(self) -> None:
        self.teacher.check("models.teacher")
        self.student.check("models.student")
        require(self.discriminator_ndf >= 1, "models.discriminator_ndf", "must be >= 1")


@dataclass
class LossConfig:
    """Loss weights (docs/method.md). ``kl``, ``mse``, ``pseudo`` are lambda_KL, lambda_MSE,
    lambda_pseudoT; every other registered distillation term (:mod:`dakd.loss_terms`) has its
    weight under its own name too (``loss.<name>``, default the term's), held in ``terms``
    (not a key of its own: ``to_dict`` lists those set at ``loss.<name>``)."""

    seg_aux: float = 0.1
    adv_output: float = 1e-3
    adv_feature: float = 2e-4
    adv_kind: str = "bce"
    kl: float = BUILTIN_DEFAULTS["kl"]
    mse: float = BUILTIN_DEFAULTS["mse"]
    pseudo: float = BUILTIN_DEFAULTS["pseudo"]
    target: float = 1.0
    temperature: float = 1.0
    pseudo_threshold: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)

    #: The field that holds the other registered terms' weights (``dakd.config.build``).
    OPEN_FIELD: ClassVar[str] = "terms"

    @classmethod
    def open_keys(cls) -> list[str]:
        """The keys of ``loss`` that are registered terms' weights without a field of their own."""
        return [name for name in loss_terms.names() if name not in BUILTIN_DEFAULTS]

    def weight(self, name: str) -> float:
        """The weight of the registered term ``name``."""
        if name in BUILTIN_DEFAULTS:
            return getattr(self, name)
        return float(self.terms.get(name, loss_terms.get_term(name).default))

    def weights(self) -> dict[str, float]:
        """Every registered term's weight, in the registry's order."""
        return {name: self.weight(name) for name in loss_terms.names()}

    def check(self) -> None:
        for name in ("seg_aux", "adv_output", "adv_feature", "kl", "mse", "pseudo", "target"):
            value = getattr(self, name)
            require(value >= 0, f"loss.{name}", f"must be >= 0, got {value}")
        known = self.open_keys()
        for name, value in self.terms.items():
            require(name in known, f"loss.{name}", "is not a registered loss term")
            require(value >= 0, f"loss.{name}", f"must be >= 0, got {value}")
        require(self.adv_kind in ("bce", "lsgan"), "loss.adv_kind", "must be 'bce' or 'lsgan'")
        require(self.temperature > 0, "loss.temperature", "must be > 0")
        require(0 <= self.pseudo_threshold < 1, "loss.pseudo_threshold", "must be in [0, 1)")


@dataclass
class DistillConfig:
    """Distillation levels, where the terms compare the maps and, for paradigm (d), the share
    of steps spent in phase (c).

    ``resolution``: ``image`` (the paper's form, AdaptSegNet's: student and teacher logits
    upsampled to the images' size, every term over every pixel) or ``logits`` (the terms on
    the student's logit grid of each level, the teacher's maps resized to it: no full-size map
    for distillation, 1/stride^2 of the arithmetic; L_seg keeps the labels' full size).
    """

    levels: list[str] = field(default_factory=lambda: list(DEFAULT_LEVELS))
    sequential_split: float = 0.5
    resolution: str = "image"

    def check(self) -> None:
        levels = self.levels
        require(len(levels) >= 1, "distill.levels", f"choose one or both of {list(DEFAULT_LEVELS)}")
        require(
            all(lv in LEVELS for lv in levels),
            "distill.levels",
            f"{levels} has a level not in {list(DEFAULT_LEVELS)}",
        )
        require(len(set(levels)) == len(levels), "distill.levels", f"{levels} repeats a level")
        require(0 < self.sequential_split < 1, "distill.sequential_split", "must be in (0, 1)")
        require(
            self.resolution in RESOLUTIONS,
            "distill.resolution",
            f"{self.resolution!r} is not one of {', '.join(RESOLUTIONS)}",
        )


@dataclass
class OptimConfig:
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    disc_lr: float = 1e-4
    disc_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])

    def check(self) -> None:
        require(self.lr > 0, "optim.lr", "must be > 0")
        require(self.disc_lr > 0, "optim.disc_lr", "must be > 0")
        require(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)")
        require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        require(self.poly_power >= 0, "optim.poly_power", "must be >= 0")
        require(
            len(self.disc_betas) == 2 and all(0 <= b < 1 for b in self.disc_betas),
            "optim.disc_betas",
            "must be two numbers in [0, 1)",
        )


@dataclass
class TeacherCacheConfig:
    """The teacher-output cache (``dakd.teacher.cache``): the frozen teacher's outputs on every
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

    def check(self) -> None:
        require(
            self.mode in ("auto", "on", "off"),
            "teacher_cache.mode",
            f"{self.mode!r} is not one of auto, on, off",
        )
        require(
            self.dtype in ("float32", "float16"),
            "teacher_cache.dtype",
            f"{self.dtype!r} is not one of float32, float16",
        )
        require(
            0 <= self.topk < 19,
            "teacher_cache.topk",
            f"must be 0 (all 19 logits) or 1..18 (the k largest), got {self.topk}",
        )
        require(
            self.if_full in ("stop", "live"),
            "teacher_cache.if_full",
            f"{self.if_full!r} is not one of stop, live",
        )
        require(bool(self.dir.strip()), "teacher_cache.dir", "must not be empty")
        require(
            "://" not in self.dir,
            "teacher_cache.dir",
            f"{self.dir!r}: caches are memory-mapped files; give a local or shared filesystem path",
        )


AMP_MODES = ("auto", "fp32", "bf16", "fp16")
#: ``train.bn_stats`` values (dakd.models.domain_bn.BN_MODES; the core config imports no torch).
BN_MODES = ("domain", "target", "blended")


@dataclass
class TrainConfig:
    """The loop, the device and the speed switches.

    ``device``: auto (CUDA when present), cpu, cuda or cuda:N. Under torchrun rank r uses
    ``cuda:LOCAL_RANK`` (auto or cuda) or the CPU (gloo).
    ``threads``: torch CPU threads per process (0 = torch's default).
    ``deterministic``: deterministic kernels where torch has them, and no kernel chosen by
    timing (CUDA's bilinear-upsampling backward has none; torch warns about it instead of
    failing). ``auto`` (default): on for the CPU, where every run is bit-reproducible for a
    given thread count and costs nothing; off on CUDA, where it costs speed (see the speed
    table in docs/gpu.md). ``true`` is the one switch for bit-exact CUDA runs.

    Speed switches. ``auto`` (the default of each) picks the fastest setting that keeps results
    trustworthy on the device the run lands on: on CUDA bf16 autocast (where the GPU has
    bfloat16), channels_last and cuDNN autotuning; on the CPU none of them, so CPU runs compute
    exactly as before the switches existed. An explicit value is honoured where the hardware
    can, and otherwise stays off with a one-line notice:

    * ``amp``: automatic mixed precision of a step's forward passes: ``fp32`` (none; the
      values are named so that YAML reads none of them as a boolean); ``bf16`` (autocast to
      bfloat16, on CUDA GPUs that support it and on CPU); ``fp16`` (autocast to float16 with
      a GradScaler, CUDA only). Weights, optimiser state and evaluation stay in float32; the
      frozen teacher's convolution weights are held in the autocast dtype (cast once, the
      values autocast would compute on each call).
    * ``channels_last``: NHWC memory format for the networks and input images (faster
      convolutions on tensor-core GPUs).
    * ``compile``: ``torch.compile`` the student (after its DDP wrapper) and the teacher; the
      first steps pay the compilation (off by default: on an H200 it made the paper's step
      slower).
    * ``cudnn_benchmark``: let cuDNN time its kernels and keep the fastest (CUDA only); needs
      deterministic off, since the choice may differ from run to run.
    * ``sync_bn``: SyncBatchNorm in the student, so that BatchNorm normalises over the global
      batch rather than each process's share (CUDA only, data-parallel runs only).

    Fingerprints (stage reuse) read ``auto`` as the CPU's setting, as they read ``device:
    auto``: they name the configuration, not the machine it ran on.

    ``bn_stats``: which batches update BatchNorm running statistics in stages that see both
    domains (``dakd.models.domain_bn``): ``domain`` (default; a source pair and a target pair
    of statistics with shared affine parameters, DSBN; a network is evaluated on the target
    with the target pair, and the frozen teacher predicts on each domain with that domain's
    pair), ``target`` (only target batches update them) or ``blended`` (every batch: plain
    PyTorch, which evaluates the target with a mixture of both domains' statistics).
    ``precise_bn_images``: before each evaluation, re-estimate those statistics with the
    current weights from this many training images per pair (0: off, the running averages are
    used as they are); see ``dakd.engine.hooks.PreciseBN``.
    ``ema_decay``: decay of an exponential moving average of the trained network's weights (0:
    off; e.g. 0.998, a window of about 500 steps). When on, evaluations, reports and the final
    ``model.pt`` use the averaged weights (their BatchNorm statistics are the raw network's,
    re-estimated for the averaged weights when ``precise_bn_images`` is on); the raw weights are
    still evaluated and reported as ``raw/miou`` and ``raw/pixel_acc``. Training itself never
    reads the average, so the trajectory of the raw weights is unchanged. Adversarial
    alignment swings by a few mIoU from one evaluation to the next; the average does not (the
    mean teacher of UDA self-training frameworks, Polyak averaging).
    ``ema_warmup``: ramp the decay up as the mean teacher does (Tarvainen & Valpola, 2017;
    DAFormer): the t-th update uses min(ema_decay, 1 - 1/(t + 1)), an exact mean of the
    weights so far until that reaches ``ema_decay``; so the first step's weights (the random
    heads of a pretrained start) keep a share of 1/t instead of ema_decay^t (0.30 after 600
    steps at 0.998).
    ``self_training``: weight of a self-training term on target images (0: off): the weight
    average's confident predictions are the trained network's labels, the mean-teacher
    self-training of UDA frameworks (DACS, DAFormer) on top of the adversarial terms. Per step,
    the average (``ema_decay`` must be on) predicts the target batch without gradient; pixels
    whose top probability reaches ``self_training_threshold`` keep its argmax as their label,
    the others count as zero, and the loss is the cross-entropy of both levels (the feature
    level weighted by ``loss.seg_aux``) averaged over all pixels, so that a step with few
    confident pixels moves the network little. ``self_training_class_share``: also keep, per
    class the batch is labelled with, that share of its most confident pixels (class-balanced
    selection, CBST; 0: the threshold alone), so that the frequent, easy classes cannot take
    over the labels. ``self_training_start``: the first step that adds it (the average of the
    first steps is mostly the initial weights). ``self_training_refresh``: 1 labels with the
    average as it is at each step (the mean teacher); N > 1 with a frozen copy of it taken at
    the start and every N steps after (rounds of self-training); 0 with the copy taken at the
    start only. Reads no target label; stages that see target images only (teacher_da,
    student_da, dakd).
    ``precise_bn_images`` and ``ema_decay`` were ``precise_bn`` and ``ema`` in earlier versions;
    the old names are still read for now (``dakd.config.renamed``).
    """

    steps: int = 1000
    eval_interval: int = 250
    log_interval: int = 50
    device: str = "auto"
    threads: int = 0
    deterministic: bool | str = "auto"
    progress: bool = True
    amp: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    cudnn_benchmark: bool | str = "auto"
    sync_bn: bool = False
    bn_stats: str = "domain"
    precise_bn_images: int = 0
    ema_decay: float = 0.0
    ema_warmup: bool = False
    self_training: float = 0.0
    self_training_threshold: float = 0.9
    self_training_class_share: float = 0.0
    self_training_start: int = 0
    self_training_refresh: int = 1

    def check(self) -> None:
        require(self.steps >= 1, "train.steps", "must be >= 1")
        require(self.eval_interval >= 1, "train.eval_interval", "must be >= 1")
        require(self.log_interval >= 1, "train.log_interval", "must be >= 1")
        require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "train.device",
            "must be auto, cpu, cuda or cuda:N",
        )
        require(self.precise_bn_images >= 0, "train.precise_bn_images", "must be >= 0 (0: off)")
        require(
            0.0 <= self.ema_decay < 1.0,
            "train.ema_decay",
            "must be in [0, 1) (0: off; e.g. 0.998)",
        )
        require(self.self_training >= 0.0, "train.self_training", "must be >= 0 (0: off)")
        require(
            0.0 <= self.self_training_threshold < 1.0,
            "train.self_training_threshold",
            "must be in [0, 1) (a probability; e.g. 0.9)",
        )
        require(self.self_training_start >= 0, "train.self_training_start", "must be >= 0")
        require(self.self_training_refresh >= 0, "train.self_training_refresh", "must be >= 0")
        require(
            0.0 <= self.self_training_class_share <= 1.0,
            "train.self_training_class_share",
            "must be in [0, 1] (a share of each class's pixels; 0: off)",
        )
        require(
            self.self_training == 0.0 or self.ema_decay > 0.0,
            "train.self_training",
            "needs train.ema_decay > 0 (the weight average makes the pseudo-labels; e.g. 0.998)",
        )
        require(self.threads >= 0, "train.threads", "must be >= 0 (0 = torch's default)")
        require(
            self.amp in AMP_MODES, "train.amp", f"{self.amp!r} is not one of {', '.join(AMP_MODES)}"
        )
        require(
            self.bn_stats in BN_MODES,
            "train.bn_stats",
            f"{self.bn_stats!r} is not one of {', '.join(BN_MODES)}",
        )
        for key in ("deterministic", "channels_last", "cudnn_benchmark"):
            value = getattr(self, key)
            require(
                isinstance(value, bool) or value == "auto",
                f"train.{key}",
                f"must be true, false or auto, got {value!r}",
            )
        require(
            not (self.cudnn_benchmark is True and self.deterministic is True),
            "train.cudnn_benchmark",
            "needs train.deterministic=false (cuDNN picks kernels by timing them, so runs differ)",
        )
