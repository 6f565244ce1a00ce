"""The training loop: one phase (pre-training or one fine-tune), from scratch or from a checkpoint,
resumable at any optimiser step. Every process runs `train()`; process 0 also writes checkpoints
and talks to MLflow.

Per optimiser step: grad_accum_steps micro-batches, DDP's all-reduce only on the last (no_sync);
loss per micro-step = lambda_con * L_con (over the batch gathered from all processes) + lambda_cap
* L_cap, where each process's per-token caption mean is weighted by its share of the micro-step's
caption tokens, so that the gradient equals the one-process gradient on the whole global batch;
then gradient clipping, the LR of the schedule, AdamW. A non-finite loss or gradient norm stops
training before the optimiser step, so the last checkpoint stays good.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.data.loader import Batch, Manifest, TrainLoader, ValLoader
from pipeline.model import CoCa, CoCaLoss, ModelConfig

from . import early_stopping as es
from .checkpoint import Checkpointer, load, rng_state, seed_everything, set_rng_state
from .config import PhaseConfig, TrainConfig
from .optim import build_optimizer, set_lr
from .parallelize import (Dist, all_gather_object, all_reduce_sum, autocast, broadcast_object,
                          effective_precision, init_distributed, no_sync, parallelize)
from .schedule import build_schedule
from pipeline.tracking import build_tracker, dvc_hashes, git_commit, repo_root
from .validate import caption_token_count, validate


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class RunSpec:
    """What one stage trains, and where its inputs and outputs are."""

    phase: str  # pretrain | finetune
    dataset: str
    train_shards: Path
    val_shards: Path
    out_dir: Path  # final.pt, best.pt (DVC outputs)
    state_dir: Path  # resumable state (not a DVC output)
    metrics_json: Path
    val_tsv: Path
    tokenizer: Path | None = None  # logged as an MLflow artifact
    init: Path | None = None  # fine-tuning: the pre-trained checkpoint
    repo: Path = Path(".")  # where dvc.lock and .git are (the working copy)


@dataclass
class TrainState:
    epoch: int = 0  # the epoch to run next (or being run)
    step: int = 0  # optimiser steps done in the whole phase
    step_in_epoch: int = 0
    done: bool = False  # early stopping ended training
    run_id: str | None = None
    history: list = dataclasses.field(default_factory=list)  # validation results (the curve)
    best_val: dict | None = None


def log(d: Dist, message: str) -> None:
    if d.is_main:
        print(message, flush=True)


def fingerprint(cfg: Any, spec: RunSpec, world_size: int, init_meta: dict) -> str:
    """A run resumes only a state of the same configuration, data, processes and initial weights."""
    blob = {"config": dataclasses.asdict(cfg), "phase": spec.phase, "dataset": spec.dataset,
            "world_size": world_size, "init": init_meta,
            "train_manifest": (spec.train_shards / "manifest.json").read_text(),
            "val_manifest": (spec.val_shards / "manifest.json").read_text()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def load_init(path: Path, model: CoCa, model_cfg: ModelConfig) -> dict:
    """Load pre-trained weights (not the optimizer); check the architecture matches."""
    ckpt = load(path)
    saved = {k: v for k, v in ckpt["model_config"].items() if k != "dropout"}
    ours = {k: v for k, v in model_cfg.to_dict().items() if k != "dropout"}
    if saved != ours:
        diff = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
        raise ValueError(f"{path}: pre-trained with another model configuration (saved, now): {diff}")
    model.load_state_dict(ckpt["model"])
    return {"path": str(path), "run_id": ckpt.get("mlflow_run_id"), "step": ckpt.get("step"),
            "phase": ckpt.get("phase")}


def train(cfg: Any, spec: RunSpec) -> dict[str, float]:
    """Run (or resume) one phase; return its final validation metrics. `cfg` is pipeline.config.Config."""
    d = init_distributed(cfg.train)
    return Trainer(cfg, cfg.train, spec, d).run()


class Trainer:
    def __init__(self, cfg: Any, tcfg: TrainConfig, spec: RunSpec, d: Dist):
        self.cfg, self.tcfg, self.spec, self.d = cfg, tcfg, spec, d
        self.phase: PhaseConfig = getattr(cfg, spec.phase)  # cfg.pretrain or cfg.finetune
        self.model_cfg = cfg.model.replace(dropout=self.phase.dropout)
        self.amp = autocast(tcfg, d.device)
        for name, shards in (("train", spec.train_shards), ("validation", spec.val_shards)):
            m = Manifest.load(shards)
            if (m.image_size, m.context_length) != (self.model_cfg.image_size, self.model_cfg.context_length):
                raise ValueError(f"{shards}: {name} shards have image_size {m.image_size} and context_length "
                                 f"{m.context_length}; model.image_size is {self.model_cfg.image_size} and "
                                 f"model.context_length {self.model_cfg.context_length}")

        seed_everything(tcfg.seed)  # the same initial weights on every process
        self.model = CoCa(self.model_cfg).to(d.device)
        self.init_meta = load_init(spec.init, self.model, self.model_cfg) if spec.init else {}
        self.train_model = parallelize(self.model, tcfg, d)
        self.loss_fn = CoCaLoss.from_config(self.model_cfg, self.phase.lambda_con, self.phase.lambda_cap,
                                            rank=d.rank, world_size=d.world_size)
        self.optimizer = build_optimizer(self.model, tcfg, self.phase.lr_max, d.device)
        self.schedule = build_schedule(self.phase)
        self.stopper = es.build_early_stopping(self.phase)
        self.loader = TrainLoader(spec.train_shards, micro_batch_size=tcfg.micro_batch_size,
                                  grad_accum_steps=tcfg.grad_accum_steps, rank=d.rank, world_size=d.world_size,
                                  streams=tcfg.data_streams, num_workers=tcfg.num_workers,
                                  shuffle_buffer=tcfg.shuffle_buffer, seed=tcfg.seed,
                                  max_steps_per_epoch=tcfg.max_steps_per_epoch)
        self.val_loader = ValLoader(spec.val_shards, batch_size=tcfg.val_batch_size, rank=d.rank,
                                    world_size=d.world_size, num_workers=tcfg.num_workers)
        self.ckpt = Checkpointer(spec.state_dir, spec.out_dir)
        self.fingerprint = fingerprint(cfg, spec, d.world_size, self.init_meta)
        self.state = TrainState()

    # ------------------------------------------------------------------------------ run
    def run(self) -> dict[str, float]:
        d, tcfg = self.d, self.tcfg
        resumed = self._resume()
        self.tracker = self._start_tracking()
        status = "FAILED"
        try:
            log(d, f"[{self.spec.phase}] {d.world_size} process(es) on {d.device.type}, "
                   f"{effective_precision(tcfg, d.device)}, global batch {self.global_batch} "
                   f"({tcfg.micro_batch_size} x {d.world_size} x {tcfg.grad_accum_steps}), "
                   f"{self.loader.streams} data streams, MLflow run {self.tracker.run_id}")
            if not resumed and tcfg.val_at_start:
                self._validate("start")
                self._save_last()
            while not self.state.done and self.state.epoch < self.phase.epochs:
                self._run_epoch()
            final = self._finish()
            status = "FINISHED"
            return final
        finally:
            self.tracker.finish(status)

    @property
    def global_batch(self) -> int:
        return self.tcfg.micro_batch_size * self.d.world_size * self.tcfg.grad_accum_steps

    def _resume(self) -> bool:
        state = self.ckpt.load_last(self.fingerprint, self.d.device)
        if state is None:
            if self.ckpt.last.exists():
                log(self.d, f"{self.ckpt.last} belongs to another configuration: starting afresh")
            seed_everything(self.tcfg.seed + 1 + self.d.rank)  # dropout etc. differ between processes
            self._check_same_start(None)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.loader.load_state_dict(state["loader"])
        self.state = TrainState(**state["train"])
        set_rng_state(state["rng"][self.d.rank])
        self._check_same_start(self.state.step)
        log(self.d, f"resuming from {self.ckpt.last}: epoch {self.state.epoch}, step {self.state.step} "
                    f"({self.state.step_in_epoch} into the epoch)")
        return True

    def _check_same_start(self, step: int | None) -> None:
        starts = all_gather_object(step)
        if len(set(starts)) > 1:
            raise RuntimeError(f"processes disagree on where to start (steps {starts}): the state directory "
                               f"{self.spec.state_dir} must be shared by all nodes")

    def _start_tracking(self):
        d, spec, cfg = self.d, self.spec, self.cfg
        root = repo_root(spec.repo)
        encoder = self.model_cfg.encoder
        run_name = f"pretrain-{encoder}" if spec.phase == "pretrain" else f"finetune-{spec.dataset}-{encoder}"
        error, tracker = None, None
        if d.is_main:
            tags = {"encoder": encoder, "preset": cfg.preset, "phase": spec.phase, "dataset": spec.dataset,
                    "git_commit": git_commit(spec.repo), "world_size": str(d.world_size),
                    "device": d.device.type}
            if os.environ.get("DVC_EXP_NAME"):
                tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
            inputs = [spec.train_shards, spec.val_shards] + [p for p in (spec.tokenizer, spec.init) if p]
            tags.update({f"dvc_md5.{path}": md5 for path, md5 in dvc_hashes(Path(spec.repo), inputs).items()})
            if self.init_meta.get("run_id"):
                tags["pretrain_run_id"] = self.init_meta["run_id"]
            params = cfg.flat()
            params.update({"run.phase": spec.phase, "run.dataset": spec.dataset, "run.world_size": d.world_size,
                           "run.global_batch_size": self.global_batch, "run.data_streams": self.loader.streams,
                           "run.precision": effective_precision(self.tcfg, d.device),
                           "run.init": self.init_meta.get("path", "")})
            try:
                tracker = build_tracker(True, root=root, run_name=run_name, tags=tags, params=params,
                                        run_id=self.state.run_id, metrics_json=spec.metrics_json,
                                        val_tsv=spec.val_tsv)
            except Exception as e:  # noqa: BLE001 - reported to every process, then raised
                error = str(e)
        error = broadcast_object(error)
        if error:
            raise RuntimeError(error)
        if tracker is None:
            tracker = build_tracker(False, root=root, run_name=run_name, tags={}, params={}, run_id=None,
                                    metrics_json=spec.metrics_json, val_tsv=spec.val_tsv)
        self.state.run_id = broadcast_object(tracker.run_id)
        return tracker

    # ------------------------------------------------------------------------------ epochs
    def _run_epoch(self) -> None:
        d, tcfg, st = self.d, self.tcfg, self.state
        epoch = st.epoch
        steps = self.steps = self.loader.steps_in_epoch(epoch)
        batches = self.loader.iter_epoch(epoch)
        try:
            while st.step_in_epoch < steps:
                metrics = self._train_step(batches, steps)
                st.step += 1
                st.step_in_epoch += 1
                self.tracker.log_train(st.step, metrics)
                if st.step % tcfg.log_every_steps == 0 or st.step_in_epoch == steps:
                    self.tracker.flush()
                    log(d, f"epoch {epoch + 1}/{self.phase.epochs} step {st.step_in_epoch}/{steps} "
                           f"(total {st.step}): coca {metrics['coca_loss']:.4f} caption {metrics['caption_loss']:.4f} "
                           f"contrastive {metrics['contrastive_loss']:.4f} lr {metrics['lr']:.3g} "
                           f"grad_norm {metrics['grad_norm']:.3f} {metrics['samples_per_s']:.1f} samples/s")
                if st.step_in_epoch < steps:
                    if tcfg.val_every_steps and st.step % tcfg.val_every_steps == 0:
                        self._validate("step")
                    if tcfg.ckpt_every_steps and st.step % tcfg.ckpt_every_steps == 0:
                        self._save_last()
        finally:
            batches.close()
        self._end_epoch()

    def _end_epoch(self) -> None:
        st = self.state
        val = self._validate("epoch")
        decision = self.stopper.update(val["coca_loss"], st.epoch)
        log(self.d, f"epoch {st.epoch + 1}: validation coca {val['coca_loss']:.4f}, early stopping: {decision}"
                    f" (best {self.stopper.best:.4f} at epoch {self.stopper.best_epoch + 1}, LR level {self.stopper.level})")
        if decision == es.IMPROVED:
            st.best_val = {**val, "epoch": st.epoch + 1, "step": st.step}
            if self.d.is_main:
                best = {"model": self.model.state_dict(), "epoch": st.epoch + 1, "step": st.step, "val": val}
                if self.phase.early_stopping:  # a soft reset reloads the optimizer too
                    best["optimizer"] = self.optimizer.state_dict()
                self.ckpt.save_best(best)
        elif decision == es.SOFT_RESET:
            self._barrier()
            best = self.ckpt.load_best(self.d.device)
            self.model.load_state_dict(best["model"])
            self.optimizer.load_state_dict(best["optimizer"])
            self.schedule.scale = self.stopper.lr_scale
            log(self.d, f"soft reset: back to epoch {best['epoch']}'s state, LR bounds x {self.stopper.lr_scale:g}")
        elif decision == es.STOP:
            st.done = True
        st.epoch += 1
        st.step_in_epoch = 0
        self._save_last()

    # ------------------------------------------------------------------------------ one step
    def _train_step(self, batches, steps: int) -> dict[str, float]:
        d, tcfg, st, phase = self.d, self.tcfg, self.state, self.phase
        start = time.perf_counter()
        micro: list[Batch] = [next(batches) for _ in range(tcfg.grad_accum_steps)]
        local_tokens = [int(caption_token_count(b.targets, self.model_cfg)) for b in micro]
        global_tokens = all_reduce_sum(local_tokens, d.device)
        lr = self.schedule.lr(st.step, st.step_in_epoch, steps)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        con_sum = torch.zeros((), device=d.device)
        cap_share = torch.zeros((), device=d.device)  # this process's part of the global caption mean
        for j, batch in enumerate(micro):
            batch = batch.to(d.device)
            share = local_tokens[j] / max(global_tokens[j], 1.0)
            with no_sync(self.train_model, sync=j == len(micro) - 1):
                with self.amp:
                    out = self.train_model(batch.images, batch.text)
                losses = self.loss_fn(out, batch.targets)
                loss = (phase.lambda_con * losses["contrastive_loss"]
                        + phase.lambda_cap * losses["caption_loss"] * (share * d.world_size))
                (loss / len(micro)).backward()
            con_sum += losses["contrastive_loss"].detach()
            cap_share += losses["caption_loss"].detach() * share
        con = con_sum.item() / len(micro)
        cap_total, bad, corrupt = all_reduce_sum(
            [cap_share.item(), float(not math.isfinite(con) or not math.isfinite(cap_share.item())),
             self.loader.corrupt_total], d.device)
        cap = cap_total / len(micro)
        if bad:
            self._fail(f"non-finite loss (caption {cap}, contrastive {con})")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip).item()
        if not math.isfinite(grad_norm):
            self._fail(f"non-finite gradient norm ({grad_norm})")
        self.optimizer.step()
        elapsed = time.perf_counter() - start
        return {"coca_loss": phase.lambda_con * con + phase.lambda_cap * cap, "caption_loss": cap,
                "contrastive_loss": con, "lr": lr, "grad_norm": grad_norm,
                "samples_per_s": self.global_batch / elapsed, "epoch": st.epoch + (st.step_in_epoch + 1) / steps,
                "corrupt_samples": corrupt}

    def _fail(self, what: str) -> None:
        st = self.state
        raise NonFiniteLoss(
            f"{what} at epoch {st.epoch + 1}, step {st.step + 1} ({st.step_in_epoch + 1} into the epoch): training "
            f"stopped before this step's update. The last good checkpoint is {self.ckpt.last}; rerunning resumes "
            f"from it and will meet the same data, so lower the learning rate or check the data first.")

    # ------------------------------------------------------------------------------ validation
    def _validate(self, kind: str) -> dict[str, float]:
        st = self.state
        val = validate(self.model, self.val_loader, self.phase, self.model_cfg, self.d.device, self.amp)
        epoch = {"start": 0, "step": st.epoch + st.step_in_epoch / getattr(self, "steps", 1),
                 "epoch": st.epoch + 1}[kind]
        st.history.append({"step": st.step, "epoch": epoch, "kind": kind, **val, "lr_level": self.stopper.level})
        self.tracker.log_val(st.step, val, st.history)
        log(self.d, f"validation ({kind}, step {st.step}): coca {val['coca_loss']:.4f} caption {val['caption_loss']:.4f} "
                    f"perplexity {val['perplexity']:.3f} contrastive {val['contrastive_loss']:.4f} "
                    f"({val['samples']} samples, {val['corrupt_samples']} corrupt skipped)")
        return val

    # ------------------------------------------------------------------------------ checkpoints
    def _barrier(self) -> None:
        all_gather_object(None)

    def _save_last(self) -> None:
        """Every process contributes its RNG state and loader position; process 0 writes. Metrics are
        flushed first, so every step a checkpoint covers is in MLflow."""
        self.tracker.flush()
        parts = all_gather_object({"rng": rng_state(), "loader": self.loader.state_dict()})
        if self.d.is_main:
            loader = dict(parts[0]["loader"])
            for key in ("positions", "corrupt"):
                loader[key] = {s: v for p in parts for s, v in p["loader"][key].items()}
            self.ckpt.save_last({
                "fingerprint": self.fingerprint,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "early_stopping": self.stopper.state_dict(),
                "loader": loader,
                "train": dataclasses.asdict(self.state),
                "rng": [p["rng"] for p in parts],
            })
        self._barrier()

    def _finish(self) -> dict[str, float]:
        """Final weights (the best epoch's when early stopping is on), outputs, metrics, artifacts."""
        st, spec, d = self.state, self.spec, self.d
        use_best = self.phase.early_stopping and st.best_val is not None
        if use_best:
            final_val = st.best_val
        else:
            last = next(h for h in reversed(st.history) if h["kind"] == "epoch")
            final_val = {**last, "epoch": st.epoch, "step": st.step}
        final = {k: final_val[k] for k in ("coca_loss", "caption_loss", "perplexity", "contrastive_loss")}
        final.update(epoch=final_val["epoch"], step=final_val["step"], epochs_run=st.epoch, steps_run=st.step)
        if d.is_main:
            meta = {"model_config": self.model_cfg.to_dict(), "phase": spec.phase, "dataset": spec.dataset,
                    "mlflow_run_id": st.run_id, "train_config": _plain(self.tcfg.to_dict()),
                    # the tokenizer's files travel with the weights: inference needs nothing else
                    "tokenizer_files": tokenizer_files(spec.tokenizer)}
            best = self.ckpt.load_best("cpu")
            best_path = self.ckpt.write_output("best", {"model": best["model"], **meta, "epoch": best["epoch"],
                                                        "step": best["step"], "val": best["val"]})
            weights = best["model"] if use_best else self.model.state_dict()
            final_path = self.ckpt.write_output("final", {"model": weights, **meta, "epoch": final["epoch"],
                                                          "step": final["step"], "val": final})
            self.tracker.log_final(st.step, final)
            for path, where in ((final_path, "checkpoints"), (best_path, "checkpoints"), (spec.tokenizer, "tokenizer"),
                                (spec.metrics_json, "metrics"), (spec.val_tsv, "metrics")):
                self.tracker.log_artifact(path, where)
            log(d, f"[{spec.phase}] done: {json.dumps(final)}")
        self._barrier()
        if d.is_main:
            self.ckpt.clear_state()
        return final


def tokenizer_files(directory: Path | None) -> dict[str, str]:
    """The saved tokenizer's files (save_pretrained's JSON and text files), by name."""
    if directory is None or not Path(directory).is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(Path(directory).iterdir()) if p.is_file()}


def _plain(d: Any) -> Any:
    """Tuples -> lists (weights_only checkpoints hold plain types)."""
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d
