"""The data section: which domains and datasets an experiment reads, and how.

It knows the real datasets' names and folders through :mod:`dakd.data.datasets` (imported when
a check or a folder needs them: the config itself imports no torch); the readers take this
section, never the whole experiment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dakd.config.build import ConfigError, require

#: The paper's scenarios on the embedded benchmark: (source domain, target domain).
SCENARIOS = {"synth_to_real": ("game", "city"), "real_to_real": ("dashcam", "city")}
#: Values of ``data.dataset``: the embedded benchmark, or the real datasets.
DATASETS = ("scenes", "real")
#: The real-data sizes, each ``[height, width]``.
REAL_SIZES = ("source_resize", "source_crop", "target_resize", "target_crop", "val_resize")


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
    result, only when the work happens): -1 = auto, for real datasets (decoded from files) one
    per CPU the process may use, 4 to 16, and 0 for the embedded scenes (already in memory);
    0 = off. On CUDA the batches built ahead are pinned and copied to the GPU a step ahead.
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

    # -- derived ------------------------------------------------------------------------------
    @property
    def domains(self) -> tuple[str, str]:
        """(source, target): embedded domains, or real dataset names when ``dataset`` is real."""
        scenarios = SCENARIOS
        if self.dataset == "real":
            from dakd.data.datasets import REAL_SCENARIOS as scenarios
        source, target = scenarios.get(self.scenario, ("", ""))
        return self.source or source, self.target or target

    def domain(self, role: str) -> str:
        """The ``role`` (source or target) domain or real dataset."""
        return self.domains[0 if role == "source" else 1]

    def _root(self, role: str) -> tuple[Path | None, str]:
        """(folder or None, where it came from) of the source or target real dataset."""
        from dakd.data.datasets import ENV, default_root, reader

        value = getattr(self, f"{role}_root")
        if value:
            return Path(value), f"data.{role}_root"
        name = self.domain(role)
        return default_root(name), f"${ENV}/{reader(name).folder}"

    def root(self, role: str) -> Path:
        """The folder of the ``role`` (source or target) real dataset: ``data.<role>_root``, else
        ``$DAKD_DATA/<dataset folder>``; one ConfigError naming the key and the variable
        otherwise (a folder is a config value, wherever it is looked up)."""
        from dakd.data.datasets import ENV, reader

        key = f"data.{role}_root"
        name = self.domain(role)
        path, origin = self._root(role)
        if path is None:
            raise ConfigError(
                f"{key}: no folder for the {role} dataset {name}: set {key} (experiment.{key} in "
                f"a sweep spec) or the {ENV} environment variable ({name} is then read from "
                f"${ENV}/{reader(name).folder})"
            )
        if not path.is_dir():
            hint = (
                f"set {key} or {ENV}" if origin.startswith("$") else f"or leave it empty for ${ENV}"
            )
            raise ConfigError(f"{key}: {path} ({origin}) is not a folder holding {name}; {hint}")
        return path

    def fingerprint_roots(self) -> dict[str, str]:
        """The absolute real-dataset folders, for the fingerprint of a stage: the same config on
        other data (another folder) is another stage."""
        out = {}
        for role in ("source", "target"):
            path, _ = self._root(role)
            out[f"data.{role}_root"] = os.path.abspath(path) if path is not None else ""
        return out

    # -- checks -------------------------------------------------------------------------------
    def check(self) -> None:
        """Reject impossible values, naming the key."""
        require(
            self.scenario in SCENARIOS,
            "data.scenario",
            f"{self.scenario!r} is not one of {', '.join(SCENARIOS)}",
        )
        require(
            self.dataset in DATASETS,
            "data.dataset",
            f"{self.dataset!r} is not one of {', '.join(DATASETS)} (embedded benchmark, real "
            "datasets)",
        )
        self._check_domains()
        self._check_real_data()
        self._check_batches()

    def _check_domains(self) -> None:
        """``source``/``target`` (or the scenario's pair) name embedded domains or real datasets."""
        from dakd.data.datasets import DATASETS as READERS
        from dakd.data.scenes import DOMAINS

        for role in ("source", "target"):
            key, domain = f"data.{role}", self.domain(role)
            if self.dataset == "scenes":
                require(
                    domain in DOMAINS,
                    key,
                    f"{domain!r} is not an embedded domain ({', '.join(DOMAINS)})",
                )
            else:
                require(
                    domain in READERS,
                    key,
                    f"{domain!r} is not a real dataset ({', '.join(READERS)})",
                )

    def _check_real_data(self) -> None:
        """The real-data keys: sizes, scale range, check sample."""
        for name in REAL_SIZES:
            size = getattr(self, name)
            require(
                len(size) == 2 and min(size) >= 16,
                f"data.{name}",
                f"must be [height, width], each >= 16, got {size}",
            )
        for name in ("source_crop", "target_crop"):
            require(
                all(s % 8 == 0 for s in getattr(self, name)),
                f"data.{name}",
                "height and width must be multiples of 8 (output stride)",
            )
        scale = self.random_scale
        require(
            len(scale) == 2 and 0 < scale[0] <= scale[1] <= 4,
            "data.random_scale",
            f"must be [low, high] with 0 < low <= high <= 4 ([1, 1]: off), got {scale}",
        )
        require(
            self.check_sample >= 0, "data.check_sample", "must be >= 0 (0: layout and pairing only)"
        )

    def _check_batches(self) -> None:
        """Crops, batch sizes, prefetching, augmentation strengths and split sizes."""
        crop = self.crop_size
        require(
            len(crop) == 2 and min(crop) >= 16,
            "data.crop_size",
            "must be [height, width], each >= 16",
        )
        require(
            all(s % 8 == 0 for s in crop),
            "data.crop_size",
            "height and width must be multiples of 8 (output stride)",
        )
        require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        require(self.val_batch_size >= 1, "data.val_batch_size", "must be >= 1")
        require(
            self.prefetch >= -1,
            "data.prefetch",
            f"must be >= 0, or -1 for auto, got {self.prefetch}",
        )
        require(0 <= self.color_jitter <= 1, "data.color_jitter", "must be in [0, 1]")
        require(0 <= self.grayscale <= 1, "data.grayscale", "must be in [0, 1]")
        require(self.val_size >= 0, "data.val_size", "must be >= 0 (0 = the whole val split)")
        require(
            0 <= self.train_size <= 2000,
            "data.train_size",
            f"must be in 0..2000 (0 = the whole train split), got {self.train_size}",
        )
        require(
            self.train_size == 0 or self.dataset == "scenes",
            "data.train_size",
            "applies to the embedded scenes only (a real dataset trains on its whole split)",
        )
