"""The trainer's state and its step: the networks, optimisers and the DAKD objective.

:class:`TrainState` builds what a stage of ``cfg.stage`` trains (see ``dakd.paradigms``):

* the segmenter: SGD with poly decay; per step ``L_seg(source) + L_adv(target) + L_distill``;
* one output-space discriminator per level: Adam, source predictions labelled 0, target 1;
* the teacher (stage ``dakd``): loaded from ``cfg.teacher``, frozen, in eval mode, or its
  outputs read from the teacher-output cache (``dakd.teacher.outputs``).

Data-parallel: when torch's default process group is initialised, the student and the
discriminators are wrapped in ``DistributedDataParallel``, which averages their gradients; the
frozen teacher is loaded by every process, without a wrapper. The loop that calls the step,
evaluates and checkpoints is :func:`dakd.engine.trainer.train`; its ``after_backward`` hooks
run inside the step (:attr:`TrainState.after_backward`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from dakd import loss_terms, losses
from dakd.config import ExperimentConfig
from dakd.data.labels import NUM_CLASSES
from dakd.data.loader import DeviceFeed, Prefetcher
from dakd.evaluation.run_metrics import evaluate_on
from dakd.evaluation.segmentation import SegMetrics
from dakd.models import Discriminator
from dakd.models import checkpoint as ckpt
from dakd.models.domain_bn import add_source_statistics, bn_domain, sync_batchnorm
from dakd.models.pretrained import (
    PretrainedReport,
    load_pretrained,
    network_of,
    no_shipped,
    resolve_pretrained,
)
from dakd.paradigms import LEVELS, STAGES, phase_at
from dakd.runtime.builders import build_data, build_network, spec_of, weight_average
from dakd.runtime.device import (
    check_world,
    seed_everything,
    set_threads,
    speed_settings,
    training_device,
)
from dakd.runtime.distributed import current_world
from dakd.teacher.outputs import TeacherOutputs


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the terms."""


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * (1.0 - step / total) ** power


class TrainState:
    """Holds the models, optimisers and the step; :func:`dakd.engine.trainer.train` is the usual way in.

    ``model``, ``discriminators`` and ``teacher`` are the plain networks (what checkpoints
    hold); ``student`` and ``disc_step`` are what a step calls: the same networks behind their
    ``DistributedDataParallel`` wrapper when data-parallel, and ``torch.compile`` when asked.
    """

    def __init__(self, cfg: ExperimentConfig, device: torch.device | None = None):
        self.cfg = cfg
        self.stage = STAGES[cfg.stage]
        self.world = world = current_world()
        check_world(cfg, world)
        self.device = device or training_device(cfg.train.device, world)
        set_threads(cfg.train.threads)
        self.speed, notices = speed_settings(cfg.train, self.device, world)
        seed_everything(cfg.seed, self.speed.deterministic)
        if world.is_main:
            for notice in notices:
                print(f"note: {notice}", file=sys.stderr)
        if self.speed.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.source, self.target, self.val = build_data(cfg, world.rank, world.size, self.device)
        self.memory_format = self.speed.memory_format
        # the step's batches on its device (on CUDA copied a step ahead from pinned memory)
        self.feeds = {
            role: DeviceFeed(stream, self.device, self.memory_format, cfg.train.steps - 1)
            for role, stream in (("source", self.source), ("target", self.target))
        }
        # the order below is the order the networks draw their initial weights in
        self._build_model()
        self.ema = weight_average(cfg, self.model)
        #: the frozen labeller of ``train.self_training`` (refresh != 1), once taken
        self.labeller: torch.nn.Module | None = None
        self.teacher_outputs: TeacherOutputs | None = None
        if self.stage.distill:
            datasets = {"source": self.dataset_of("source"), "target": self.dataset_of("target")}
            self.teacher_outputs = TeacherOutputs(
                cfg, self.device, self.speed, world, datasets, self._source_statistics
            )
        self.discriminators = torch.nn.ModuleDict()
        if self.stage.adversarial:
            for level in LEVELS:
                self.discriminators[level] = Discriminator(
                    NUM_CLASSES, ndf=cfg.models.discriminator_ndf
                )
            self.discriminators.to(self.device, memory_format=self.memory_format)
        self._wrap()
        self._build_optimizers()
        self.step = 0
        self.history: list[dict[str, float]] = []
        #: called between the segmenter's backward pass and its optimiser step, on gradients
        #: unscaled when a GradScaler is on (the loop's ``after_backward`` hooks); None: nothing
        #: runs there and nothing is unscaled early (the optimiser step unscales, as always)
        self.after_backward: Callable[[], None] | None = None

    def _build_model(self) -> None:
        """The trained network: initial weights from ``cfg.init``, the shipped pretrained
        backbone or random; BatchNorm pairs per domain (``train.bn_stats``); on its device."""
        cfg = self.cfg
        trained = cfg.trained_model
        self.spec = spec_of(trained)
        self.model = build_network(self.spec)
        self.pretrained: PretrainedReport | None = None
        if cfg.init:
            ckpt.load_network(self.model, ckpt.load(cfg.init), self.spec, cfg.init)
        elif trained.pretrained:
            role = "teacher" if trained is cfg.models.teacher else "student"
            key = f"models.{role}.pretrained"
            path = resolve_pretrained(trained)
            if path:
                self.pretrained = load_pretrained(self.model, path, key, network_of(trained))
            if self.world.is_main:
                print(f"note: {self.pretrained or no_shipped(trained, key)}", file=sys.stderr)
        # a stage that sees both domains keeps the target's BatchNorm statistics for the target
        # (train.bn_stats, dakd.models.domain_bn); one that sees a single domain has only those
        self.bn_stats = cfg.train.bn_stats
        self.two_domains = self.stage.supervised_on == "source" and (
            self.stage.adversarial or self.stage.distill
        )
        if self.two_domains and self.bn_stats == "domain":
            add_source_statistics(self.model)
        if self.speed.sync_bn:
            self.model = sync_batchnorm(self.model)
        self.model.to(self.device, memory_format=self.memory_format)

    def _wrap(self) -> None:
        """What a step calls: DDP (gradient averaging) and torch.compile around the networks;
        the segmenter's adversarial term reads the discriminators without their wrapper (it
        needs no gradient of theirs)."""
        self.ddp_modules: list[DistributedDataParallel] = []
        self.student = self._parallel(self.model)
        self.disc_step = {level: self._parallel(d) for level, d in self.discriminators.items()}
        if self.speed.compile:
            self.student = torch.compile(self.student)

    def _build_optimizers(self) -> None:
        o = self.cfg.optim
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
        self.d_optimizer = (
            torch.optim.Adam(
                self.discriminators.parameters(), lr=o.disc_lr, betas=tuple(o.disc_betas)
            )
            if self.stage.adversarial
            else None
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.speed.grad_scaling)

    def _parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.world.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(module, device_ids=ids)
        self.ddp_modules.append(wrapped)
        return wrapped

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The live frozen teacher; None when no domain needs it (or the stage distils not)."""
        return None if self.teacher_outputs is None else self.teacher_outputs.teacher

    @property
    def teacher_caches(self) -> dict:
        """The domains whose teacher outputs come from the cache, and their caches."""
        return {} if self.teacher_outputs is None else self.teacher_outputs.caches

    def autocast(self):
        """Mixed precision for a step's forward passes and losses (``train.amp``)."""
        if self.speed.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.speed.amp_dtype)

    def images(self, batch) -> torch.Tensor:
        """A batch's images on the trainer's device, in its memory format."""
        return batch["image"].to(self.device, non_blocking=True, memory_format=self.memory_format)

    def dataset_of(self, role: str):
        """The training dataset of ``role``'s domain (``source`` or ``target``)."""
        stream = self.source if role == "source" else self.target
        sampler = stream.sampler if isinstance(stream, Prefetcher) else stream
        return sampler.dataset

    def _source_statistics(self, model):
        """The BatchNorm statistics a source batch sees (and, in training, updates)."""
        if not self.two_domains:
            return contextlib.nullcontext()
        return bn_domain(model, "source", self.bn_stats)

    # -- one step: L_seg + L_adv + L_distill, then the discriminators ------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step of the segmenter (and the discriminators). Returns loss terms."""
        self._schedule_lr()
        self.model.train()
        stage, step = self.stage, self.step
        needs_source = stage.supervised_on == "source"
        needs_target = stage.supervised_on == "target" or stage.adversarial
        src = self.feeds["source"].batch(step) if needs_source else None
        tgt = self.feeds["target"].batch(step) if needs_target else None
        with self.autocast():
            raw_s = pred_s = raw_t = pred_t = None
            if src:
                with self._source_statistics(self.model):
                    raw_s, pred_s = self._predict(self.images(src))
            if tgt:
                raw_t, pred_t = self._predict(self.images(tgt))
            labelled = (pred_s, src) if needs_source else (pred_t, tgt)
            terms = self._segmentation(*labelled)
            lw = self.cfg.loss
            total = terms["seg"] + lw.seg_aux * terms["seg_aux"]
            if stage.adversarial:
                self._adversarial(pred_t, terms)
                adv_output, adv_feature = terms["adv_output"], terms["adv_feature"]
                total = total + lw.adv_output * adv_output + lw.adv_feature * adv_feature
            if self.cfg.train.self_training > 0 and step >= self.cfg.train.self_training_start:
                terms["self"] = self._self_training(tgt, pred_t)
                total = total + self.cfg.train.self_training * terms["self"]
            if stage.distill:
                student = {"source": (raw_s, pred_s), "target": (raw_t, pred_t)}
                total = total + self._distillation(student, src, tgt, terms)
        terms["total"] = total
        self._check_finite(total, terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.after_backward is not None:
            self.scaler.unscale_(self.optimizer)  # true gradients; nothing to do without scaling
            self.after_backward()
        self.scaler.step(self.optimizer)
        if stage.adversarial:
            terms["disc"] = self._discriminator_step(pred_s, pred_t)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return {k: v.detach() for k, v in terms.items()}

    def _predict(self, images: torch.Tensor):
        """The student's logits of both levels on ``images``: raw (each level's own grid) and
        upsampled to the images' size (what L_seg and the discriminators read)."""
        raw = self.student(images)
        size = images.shape[-2:]
        return raw, {level: losses.upsample(raw[level], size) for level in LEVELS}

    def _schedule_lr(self) -> None:
        cfg, step = self.cfg, self.step
        lr = poly_lr(cfg.optim.lr, step, cfg.train.steps, cfg.optim.poly_power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.d_optimizer is not None:
            d_lr = poly_lr(cfg.optim.disc_lr, step, cfg.train.steps, cfg.optim.poly_power)
            for group in self.d_optimizer.param_groups:
                group["lr"] = d_lr

    def _segmentation(self, pred, batch) -> dict[str, torch.Tensor]:
        """L_seg on the labelled domain's batch, on both levels (the feature level is auxiliary)."""
        labels = batch["label"].to(self.device, non_blocking=True)
        return {
            "seg": losses.seg_ce(pred["output"], labels),
            "seg_aux": losses.seg_ce(pred["feature"], labels),
        }

    def _adversarial(self, pred_t, terms: dict[str, torch.Tensor]) -> None:
        """L_adv per level (``adv_<level>``): the target predictions should fool the level's
        discriminator (labelled as source); the discriminators take no gradient from it."""
        kind = self.cfg.loss.adv_kind
        self.discriminators.requires_grad_(False)
        adv = {
            level: losses.adversarial(
                self.discriminators[level](F.softmax(pred_t[level], dim=1)), True, kind
            )
            for level in LEVELS
        }
        terms["adv_output"], terms["adv_feature"] = adv["output"], adv["feature"]

    def _labeller(self) -> torch.nn.Module:
        """The network that labels target images for ``train.self_training``: the weight
        average itself (``self_training_refresh: 1``), or a frozen copy of it (with the
        trained network's BatchNorm statistics of the moment) taken at the term's first step
        and every ``self_training_refresh`` steps after (0: never again)."""
        train = self.cfg.train
        if train.self_training_refresh == 1:
            return self.averaged().eval()
        since = self.step - train.self_training_start
        due = since == 0 or (
            train.self_training_refresh > 1 and since % train.self_training_refresh == 0
        )
        if self.labeller is None or due:
            self.labeller = copy.deepcopy(self.averaged()).eval().requires_grad_(False)
        return self.labeller

    def _self_training(self, tgt, pred_t) -> torch.Tensor:
        """``train.self_training``'s term: both levels of the trained network against the
        labeller's confident argmax on the target batch (normalised with the batch's own
        statistics, as the trained network's forward is; no gradient reaches the labeller)."""
        labeller = self._labeller()
        images = self.images(tgt)
        with torch.no_grad():
            # BatchNorm on the batch's own statistics: running statistics belong to the weights
            # that gathered them, and the raw network's do not fit the average's weights (with
            # them the average labels nearly every pixel as road); the labeller's own are left
            # as they were
            kept = [buffer.clone() for buffer in labeller.buffers()]
            labeller.train()
            logits = losses.upsample(labeller(images)["output"], images.shape[-2:])
            labeller.eval()
            for buffer, value in zip(labeller.buffers(), kept, strict=True):
                buffer.copy_(value)
        train = self.cfg.train
        chosen = (train.self_training_threshold, train.self_training_class_share)
        return losses.confident_ce(pred_t["output"], logits, *chosen) + (
            self.cfg.loss.seg_aux * losses.confident_ce(pred_t["feature"], logits, *chosen)
        )

    def _distillation(self, student, src, tgt, terms) -> torch.Tensor:
        """L_distill: KL, MSE and pseudo-teacher CE (and every other registered term,
        ``dakd.loss_terms``) against the frozen teacher on the domains the paradigm's current
        phase distils on, weighted per domain (``loss.target``).

        ``student`` maps a domain to the student's (raw, image-size) logits. The terms compare
        the maps at the images' size (``distill.resolution: image``, the paper's form) or on
        the student's logit grid (``logits``: the teacher's maps resized to it, no full-size
        map materialised)."""
        cfg, lw = self.cfg, self.cfg.loss
        phase = phase_at(cfg.paradigm, self.step, cfg.train.steps, cfg.distill.sequential_split)
        levels = cfg.distill.levels
        weights = lw.weights()
        at_image = cfg.distill.resolution == "image"
        read = [*levels, *(["output"] if "output" not in levels else [])]
        teacher_pred = {}
        with torch.no_grad():
            for name, on, batch in (("source", phase.source, src), ("target", phase.target, tgt)):
                if on:
                    outputs = self.teacher_outputs
                    teacher_pred[name] = (
                        outputs.predict(name, batch, read) if at_image else outputs.raw(name, batch)
                    )
        per_domain = {}
        for name, (raw, pred) in student.items():
            if name in teacher_pred:
                chosen = {"names": loss_terms.active(weights, name), "domain": name, "loss": lw}
                if at_image:
                    per_domain[name] = losses.distill_terms(
                        pred, teacher_pred[name], levels, **chosen
                    )
                else:
                    s_maps, t_maps, pseudo = losses.at_logit_grid(raw, teacher_pred[name], levels)
                    per_domain[name] = losses.distill_terms(
                        s_maps, t_maps, levels, pseudo=pseudo, **chosen
                    )
                for term, value in per_domain[name].items():
                    terms[f"{term}_{name}"] = value
        distill = losses.distillation_objective(
            per_domain.get("source"), per_domain.get("target"), weights, lw.target
        )
        terms["distill"] = distill
        return distill

    def _discriminator_step(self, pred_s, pred_t) -> torch.Tensor:
        """Each level's discriminator learns source (0) from target (1) predictions."""
        kind = self.cfg.loss.adv_kind
        self.discriminators.requires_grad_(True)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss = 0.0
        with self.autocast():
            for level in LEVELS:
                d = self.disc_step[level]
                d_src = losses.adversarial(d(F.softmax(pred_s[level].detach(), dim=1)), True, kind)
                d_tgt = losses.adversarial(d(F.softmax(pred_t[level].detach(), dim=1)), False, kind)
                d_loss = d_loss + (d_src + d_tgt) / 2
        self.scaler.scale(d_loss).backward()
        self.scaler.step(self.d_optimizer)
        return d_loss

    def _check_finite(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Stop on a NaN or infinite loss; every process stops at the same step."""
        value = total.detach().float().reshape(1).clone()  # all_reduce works in place
        finite_here = math.isfinite(value.item())
        if self.world.distributed:
            dist.all_reduce(value)  # non-finite anywhere makes the sum non-finite everywhere
        if not math.isfinite(value.item()):
            shown = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            where = f" on another process (this is rank {self.world.rank})" if finite_here else ""
            raise NonFiniteLossError(
                f"step {self.step}: the training loss is not finite{where} ({shown})"
            )

    def close(self) -> None:
        """Stop the threads that build batches ahead (``data.prefetch``); idempotent."""
        for stream in (self.source, self.target):
            if isinstance(stream, Prefetcher):
                stream.close()

    # -- evaluation and state ----------------------------------------------------------------------
    def sync_buffers(self) -> None:
        """Give every process rank 0's BatchNorm running statistics (DDP does so before each
        forward; after the last step each process has updated its own from its share)."""
        if self.world.distributed:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def evaluate(self, network: torch.nn.Module) -> SegMetrics:
        """Evaluate ``network`` (the trained one or its average) on the target val split."""
        return evaluate_on(network, self.val, self.cfg, self.device, self.world)

    def averaged(self) -> torch.nn.Module:
        """The weight average (``train.ema_decay``) with the trained network's BatchNorm statistics
        (an average of weights has none of its own; precise BN re-estimates them when on)."""
        averaged = self.ema.module
        with torch.no_grad():
            for mine, raw in zip(averaged.buffers(), self.model.buffers(), strict=True):
                mine.copy_(raw)
        return averaged

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights later stages load: the average when ``train.ema_decay`` is on."""
        return (self.model if self.ema is None else self.ema.module).state_dict()

    def state_dict(self) -> dict[str, Any]:
        state = {
            "network": self.spec,
            "config": self.cfg.to_dict(),
            "stage": self.cfg.stage,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }
        if self.d_optimizer is not None:
            state["discriminators"] = self.discriminators.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        if self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.labeller is not None:
            state["labeller"] = self.labeller.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], path) -> None:
        ckpt.load_network(self.model, state, self.spec, path)
        if state.get("stage") != self.cfg.stage:
            raise ckpt.CheckpointError(
                f"checkpoint {path} is from stage {state.get('stage')!r}, not {self.cfg.stage!r}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        if self.d_optimizer is not None:
            self.discriminators.load_state_dict(state["discriminators"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        if self.scaler.is_enabled() and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise ckpt.CheckpointError(
                    f"checkpoint {path} has no weight average, but train.ema_decay is on"
                )
            self.ema.load_state_dict(state["ema"])
        if "labeller" in state:
            self.labeller = copy.deepcopy(self.ema.module if self.ema is not None else self.model)
            self.labeller.load_state_dict(state["labeller"])
            self.labeller.eval().requires_grad_(False)
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
