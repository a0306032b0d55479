"""The QAT loop of ``recipe run`` (the recipe's ``qat:`` section).

``run_qat`` fine-tunes a calibrated, fake-quantized model on ``data.train``: amax values stay
fixed (they are buffers), except those of quantizers with ``learn_amax`` (parameters in their own
optimizer group). Under torchrun the model is wrapped in DistributedDataParallel and every rank
trains on its own shard; only rank 0 evaluates and writes files. Checkpoints
(``qat_checkpoint.pt``) make a killed run resumable bit for bit (on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data as data_mod
from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe
from ..recipe.schema import QatSection
from ..util.atomic import atomic_write_text
from ..util.jsonio import json_text
from ..util.progress import progress
from . import checkpoint as ckpt
from . import distributed as dist
from .loss import compute_loss, loss_source
from .optim import build_optimizer, build_scheduler

LOG_FILE = "qat_log.jsonl"
_END = object()


def to_device(value: Any, device: torch.device) -> Any:
    """Move the tensors of a batch (nested dicts, lists, tuples) to ``device``."""
    if device.type == "cpu":
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """``model.train()``, with BatchNorm layers kept in eval mode (frozen statistics) when asked."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _learned_amax(model: nn.Module) -> bool:
    from ..quant import backend

    return any(backend.is_quantizer(m) and any(True for _ in m.parameters()) for m in model.modules())


class QatRun:
    """One QAT run (fresh or resumed); ``run()`` returns the metrics merged into metrics.json."""

    def __init__(self, model: nn.Module, loaded: LoadedRecipe, out: str | Path, *,
                 forward: Callable[[nn.Module, Any], Any] | None = None, evaluate: Callable | None = None,
                 val_batches: Any = None, train_batches: Iterable | None = None, resume: bool | None = None,
                 on_step: Callable[[int], None] | None = None, show_progress: bool = True,
                 test_batches: Any = None) -> None:
        if loaded.spec.qat is None:
            raise RecipeError("the recipe has no `qat:` section")
        self.spec: QatSection = loaded.spec.qat
        self.loaded = loaded
        self.model = model
        self.out = Path(out)
        self.forward = forward or data_mod.forward_fn(loaded)
        self.evaluate = evaluate
        if evaluate is not None and val_batches is None:
            val_batches = data_mod.make_data(loaded, "validation")
        self.val_batches = val_batches
        if evaluate is not None and test_batches is None and loaded.spec.data is not None \
                and loaded.spec.data.test is not None:
            test_batches = data_mod.make_data(loaded, "test")
        self.test_batches = test_batches  # the reported figure; keep_best chooses on val_batches
        self.on_step = on_step
        self.show_progress = show_progress
        self.main = dist.is_main()
        self.device = dist.device()
        self.train = train_batches if train_batches is not None else self._train_data()
        self.total = self._total_steps()
        self.loss_source = loss_source(loaded)
        self._check_keep_best()
        ckpt.seed_everything(self.spec.seed + dist.rank())
        model.to(self.device)
        self.optimizer = build_optimizer(model, self.spec.optimizer, loaded)
        self.scheduler = build_scheduler(self.optimizer, self.spec.schedule, self.total, loaded)
        self.amp = self.spec.amp and self.device.type == "cuda"
        if self.spec.amp and not self.amp and self.main:
            warnings.warn("qat.amp is ignored on the CPU (no mixed precision there)", stacklevel=2)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.pos = ckpt.Position()
        self.epoch_rng: dict[str, Any] | None = None
        self.resume_rng: dict[str, Any] | None = None
        self.best: dict[str, Any] | None = None
        self.log: list[dict[str, Any]] = []
        self.window: list[float] = []  # losses since the last log line
        self.seconds = 0.0
        self.resumed_from: int | None = None
        self._restore(resume)

    # ------------------------------------------------------------------ set-up
    def _train_data(self) -> Iterable:
        data = self.loaded.spec.data
        if data is None or data.train is None:
            raise self.loaded.error(("qat",), "QAT needs training data: data.train is not set",
                                    hint="add data: {train: {factory: package.module:train_batches}}")
        return data_mod.make_data(self.loaded, "train")

    def _total_steps(self) -> int:
        per_rank = dist.shard_length(self.train)
        if per_rank == 0:
            raise self.loaded.error(("data", "train"), f"data.train has fewer batches than ranks ({dist.world_size()})")
        if self.spec.steps is not None:
            return self.spec.steps
        if per_rank is None:
            raise self.loaded.error(("qat", "epochs"), "qat.epochs needs data.train with a length (len())",
                                    hint="use qat.steps for iterable data without a length")
        return self.spec.epochs * per_rank

    def _check_keep_best(self) -> None:
        if self.spec.keep_best and self.evaluate is None:
            raise self.loaded.error(("qat", "keep_best"), "keep_best needs data.evaluate")

    def _restore(self, resume: bool | None) -> None:
        payload, problem = None, None
        if self.main:  # rank 0 reads the checkpoint; every rank gets it (or the same error)
            try:
                payload = ckpt.find_resumable(self.out, self.loaded.sha256, resume)
            except RecipeError as exc:
                problem = exc
        payload, problem = dist.broadcast_object((payload, problem))
        if problem is not None:
            raise problem
        if payload is None:
            return
        path = self.out / ckpt.CHECKPOINT_FILE
        if payload["world_size"] != dist.world_size():
            raise RecipeError(f"{path} was written by {payload['world_size']} process(es), this run has "
                              f"{dist.world_size()}", hint=f"resume with --nproc {payload['world_size']}")
        if payload["total_steps"] != self.total:
            raise RecipeError(f"{path} is for {payload['total_steps']} steps, this run has {self.total}",
                              hint="data.train changed length; start afresh with --no-resume")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.pos = ckpt.Position(**payload["position"])
        self.epoch_rng = payload["epoch_rng"][dist.rank()]
        self.resume_rng = payload["rng"][dist.rank()]
        self.best = payload.get("best")
        self.log = list(payload.get("log", []))
        self.window = list(payload.get("window", []))
        self.seconds = float(payload.get("seconds", 0.0))
        self.resumed_from = self.pos.step

    # ------------------------------------------------------------------ data
    def _open_epoch(self) -> Iterator:
        if hasattr(self.train, "set_epoch"):
            self.train.set_epoch(self.pos.epoch)
        if self.resume_rng is not None:  # re-create the interrupted epoch's iterator, then continue
            ckpt.restore_rng(self.epoch_rng)
            items = dist.shard(self.train, self.pos.index)
            ckpt.restore_rng(self.resume_rng)
            self.resume_rng = None
            return items
        self.epoch_rng = ckpt.capture_rng()
        return dist.shard(self.train)

    def _batches(self) -> Iterator[Any]:
        """Batches until training ends, rolling over epochs; keeps ``self.pos`` (epoch, index) current."""
        sized = dist.shard_length(self.train) is not None
        while True:
            items = self._open_epoch()
            while True:
                batch = next(items, _END)
                have = batch is not _END
                if not sized:
                    have = dist.all_true(have)
                if not have:
                    break
                yield batch
            if self.pos.index == 0:
                raise self.loaded.error(("data", "train"), "data.train gave no batch")
            self.pos.epoch += 1
            self.pos.index = 0

    # ------------------------------------------------------------------ steps
    def _step(self, model: nn.Module, batch: Any, params: list[nn.Parameter]) -> tuple[float, dict[str, float], float]:
        """One optimizer step: (loss, its weighted parts, the lr it used)."""
        batch = to_device(batch, self.device)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with autocast:
            output = self.forward(model, batch)
            loss, parts = compute_loss(output, batch, self.loss_source, self.spec.loss_weights, self.loaded)
        value = float(loss.detach())
        if not dist.all_true(math.isfinite(value)):
            raise RecipeError(f"QAT loss is not finite at step {self.pos.step + 1} (rank {dist.rank()}: {value})",
                              hint="lower qat.optimizer.kwargs.lr, or set qat.grad_clip")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.spec.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.spec.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.spec.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.spec.grad_clip)
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return value, parts, lr

    def _frozen(self) -> bool:
        return self.spec.freeze_bn_after is not None and self.pos.step >= self.spec.freeze_bn_after

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        model = dist.wrap(self.model, find_unused_parameters=_learned_amax(self.model))
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        set_train_mode(self.model, self._frozen())
        remaining = range(self.pos.step, self.total)
        batches = self._batches()
        for _ in progress(remaining, total=len(remaining), description="QAT",
                          enabled=self.show_progress and self.main):
            batch = next(batches)
            value, parts, lr = self._step(model, batch, params)
            self.pos.step += 1
            self.pos.index += 1
            self.window.append(value)
            if self._frozen() and self.spec.freeze_bn_after == self.pos.step:
                set_train_mode(self.model, True)
            if self.pos.step % self.spec.log_every == 0 or self.pos.step == self.total:
                self._record({"step": self.pos.step, "loss": sum(self.window) / len(self.window),
                              "lr": lr, **{f"loss/{k}": v for k, v in parts.items()}})
                self.window = []
            if self.spec.eval_every and self.pos.step % self.spec.eval_every == 0 and self.pos.step < self.total:
                self._evaluate_and_keep()
            if self.spec.checkpoint_every and self.pos.step % self.spec.checkpoint_every == 0 \
                    and self.pos.step < self.total:
                self._checkpoint(started)
            if self.on_step is not None:
                self.on_step(self.pos.step)
        batches.close()
        self._checkpoint(started)
        return self._finish(started)

    # ------------------------------------------------------------------ evaluation, files
    def _record(self, entry: dict[str, Any]) -> None:
        self.log.append(entry)
        if self.main:
            atomic_write_text(self.out / LOG_FILE, "".join(json_text(e) + "\n" for e in self.log))

    def _metrics_now(self) -> dict[str, float] | None:
        if self.evaluate is None or not self.main:
            return None
        if self.device.type == "cpu":
            metrics = data_mod.run_evaluate(self.evaluate, self.model, self.val_batches)
            set_train_mode(self.model, self._frozen())
        else:  # evaluate on the CPU like the FP32/INT8 metrics, without moving the model being trained
            metrics = data_mod.run_evaluate(self.evaluate, copy.deepcopy(self.model).cpu(), self.val_batches)
        if self.spec.keep_best and self.spec.keep_best not in metrics:
            raise self.loaded.error(("qat", "keep_best"), f"evaluate() has no metric {self.spec.keep_best!r}",
                                    hint="available: " + ", ".join(sorted(metrics)))
        return metrics

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best["value"] if self.spec.higher_is_better else value < self.best["value"]

    def _evaluate_and_keep(self) -> dict[str, float] | None:
        metrics = self._metrics_now()
        if metrics is None:
            return None
        self._record({"step": self.pos.step, "eval": metrics})
        if self.spec.keep_best and self._better(metrics[self.spec.keep_best]):
            self.best = {"step": self.pos.step, "value": metrics[self.spec.keep_best], "metrics": metrics}
            ckpt.save(self.out / ckpt.BEST_FILE, {"sha256": self.loaded.sha256, "model": self.model.state_dict(),
                                                  **self.best})
        return metrics

    def _checkpoint(self, started: float) -> None:
        rngs = dist.all_gather_object(ckpt.capture_rng())
        epoch_rngs = dist.all_gather_object(self.epoch_rng)
        if not self.main:
            return
        payload = {
            "sha256": self.loaded.sha256, "recipe": self.loaded.spec.recipe, "version": self.loaded.spec.version,
            "world_size": dist.world_size(), "total_steps": self.total, "position": asdict(self.pos),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs, "epoch_rng": epoch_rngs, "best": self.best, "log": self.log, "window": self.window,
            "seconds": self.seconds + time.perf_counter() - started,
        }
        ckpt.save(self.out / ckpt.CHECKPOINT_FILE, payload)

    def _finish(self, started: float) -> dict[str, Any]:
        result: dict[str, Any] = {}
        final = self._evaluate_and_keep()
        if final is not None:
            result["qat"] = final
        if self.best is not None and self.best["step"] != self.pos.step and self.main:
            best = ckpt.load(self.out / ckpt.BEST_FILE)
            self.model.load_state_dict(best["model"])
            result["qat"] = self.best["metrics"]
        if self.spec.keep_best:
            dist.broadcast_module(self.model)
            result["qat_best"] = self.best
        self.model.to("cpu").eval()
        losses = [e["loss"] for e in self.log if "loss" in e]
        result["qat_seconds"] = self.seconds + time.perf_counter() - started
        result["qat_steps"] = self.total
        if losses:
            result["qat_loss"] = {"first": losses[0], "last": losses[-1]}
        if self.resumed_from is not None:
            result["qat_resumed_from_step"] = self.resumed_from
        if "qat" in result and self.test_batches is not None:  # report on the split nothing was chosen on
            result["qat_validation"] = result["qat"]
            result["qat"] = data_mod.run_evaluate(self.evaluate, self.model, self.test_batches)
        return result


def run_qat(model: nn.Module, loaded: LoadedRecipe, out: str | Path, *,
            forward: Callable[[nn.Module, Any], Any] | None = None, evaluate: Callable | None = None,
            val_batches: Any = None, train_batches: Iterable | None = None, resume: bool | None = None,
            on_step: Callable[[int], None] | None = None, show_progress: bool = True,
            test_batches: Any = None) -> dict[str, Any]:
    """Fine-tune ``model`` (calibrated, in place) as the recipe's ``qat:`` section says.

    ``eval_every``/``keep_best`` evaluate on ``val_batches`` (default: ``data.validation``). With
    ``test_batches`` (default: ``data.test`` when the recipe has it) ``"qat"`` is measured on them
    after the best model is restored and the validation figures move to ``"qat_validation"``.
    Returns ``{"qat": evaluate metrics after fine-tuning, "qat_seconds": ..., "qat_steps": ...,
    "qat_loss": {"first", "last"}, ...}``. ``resume``: None resumes from a checkpoint of the same
    recipe in ``out`` if there is one, True requires one, False starts afresh. ``on_step(step)`` is
    called after every step (and after that step's checkpoint).
    """
    return QatRun(model, loaded, out, forward=forward, evaluate=evaluate, val_batches=val_batches,
                  train_batches=train_batches, resume=resume, on_step=on_step, show_progress=show_progress,
                  test_batches=test_batches).run()
