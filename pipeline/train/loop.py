"""The training loop: one phase (pre-training or one fine-tune), resumable at any optimiser step.
Every process runs `train()`; process 0 also writes and tracks. The parts (loss, optimiser, schedule,
early stopping, loader, checkpointer, tracker) each own their concept; this file runs them in order.

Per optimiser step: grad_accum_steps micro-batches, DDP's all-reduce only on the last (no_sync), each
backpropagating CoCaLoss's objective (exact across processes); gradient clipping, the schedule's LR,
AdamW, the logit scale clamped in place. A non-finite loss or gradient norm stops training before the
update, so the last checkpoint stays good.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import torch

from pipeline.checkpoint import load_init, save_model
from pipeline.data.loader import TrainLoader, ValLoader
from pipeline.data.mixture import MixtureLoader
from pipeline.data.preprocess import Augment
from pipeline.model.coca import CoCa
from pipeline.model.losses import CoCaLoss
from pipeline.progress import Pace
from pipeline.tracking import NullTracker, repo_root, run_description, start_run

from . import early_stopping as es
from . import fault
from .optim import build_optimizer, freeze_parts, set_lr
from .parallelize import (Dist, all_gather_object, all_reduce_sum, autocast, barrier, broadcast_object,
                          effective_precision, init_distributed, no_sync, parallelize)
from .resume import Checkpointer, NonFiniteLoss, RNGState, fingerprint, seed_everything
from .schedule import build_schedule
from .state import RunSpec, TrainState
from .validate import mean_over_sets, validate


def log(d: Dist, message: str) -> None:
    if d.is_main and message:
        print(message, flush=True)


def train(cfg: Any, spec: RunSpec) -> dict[str, float]:
    """Run (or resume) one phase; return its final validation metrics. `cfg` is pipeline.config.Config."""
    return Trainer(cfg, spec, init_distributed(cfg.train)).run()


class Trainer:
    def __init__(self, cfg: Any, spec: RunSpec, d: Dist):
        self.cfg, self.tcfg, self.spec, self.d = cfg, cfg.train, spec, d
        self.phase = getattr(cfg, spec.phase)  # cfg.pretrain or cfg.finetune
        if spec.mixed:  # the joint fine-tune: finetune's settings for joint.epochs
            self.phase = dataclasses.replace(self.phase, epochs=cfg.joint.epochs)
        tcfg, self.amp = self.tcfg, autocast(cfg.train, d.device)
        seed_everything(tcfg.seed)  # the same initial weights on every process
        self.model = CoCa(cfg.model, dropout=self.phase.dropout, contrastive_loss=tcfg.contrastive_loss,
                          adapter=self.phase.adapter).to(d.device)
        self.init_meta = load_init(spec.init, self.model) if spec.init else {}
        self.trainable = freeze_parts(self.model, self.phase.frozen_parts)
        self.ddp_model = parallelize(self.model, tcfg, d)
        self.loss_fn = CoCaLoss(self.phase.lambda_con, self.phase.lambda_cap, cfg.model.tokens,
                                rank=d.rank, world_size=d.world_size, contrastive=tcfg.contrastive_loss)
        self.optimizer = build_optimizer(self.model, tcfg, self.phase.lr_max, d.device)
        self.schedule = build_schedule(self.phase)
        self.stopper = es.build_early_stopping(self.phase)
        augment = Augment(tuple(self.phase.crop_scale) if self.phase.crop_scale else None, self.phase.hflip)
        sets = spec.sets()  # one dataset, or the joint fine-tune's (pipeline/data/mixture.py)
        if spec.mixed:
            self.loader = MixtureLoader.from_config({name: train for name, (train, _) in sets.items()}, tcfg,
                                                    cfg.model, cfg.joint.sampling, rank=d.rank,
                                                    world_size=d.world_size, augment=augment, device=d.device)
            train_manifests = [lo.manifest for lo in self.loader.loaders.values()]
        else:
            self.loader = TrainLoader.from_config(spec.train_shards, tcfg, cfg.model, rank=d.rank,
                                                  world_size=d.world_size, augment=augment, device=d.device)
            train_manifests = [self.loader.manifest]
        self.val_loaders = {name: ValLoader.from_config(val, tcfg, cfg.model, rank=d.rank, world_size=d.world_size,
                                                        device=d.device)
                            for name, (_, val) in sets.items()}
        manifests = train_manifests + [lo.manifest for lo in self.val_loaders.values()]
        modes = {m.resize_mode for m in manifests}
        if len(modes) > 1:
            raise ValueError(f"{', '.join(str(m.root) for m in manifests)} were made with different resize modes "
                             f"({', '.join(m.resize_mode for m in manifests)}): reshard")
        self.resize_mode = modes.pop()  # inference prepares images the same way
        self.state = TrainState()
        declared = ("model", "train", spec.phase) + (("joint",) if spec.mixed else ())  # dvc.yaml's params
        sections = {name: cfg.to_dict()[name] for name in declared}
        inputs = [m.root / "manifest.json" for m in manifests] + list(filter(None, [spec.init]))
        self.ckpt = Checkpointer(spec.state_dir, fingerprint(sections, d.world_size, inputs), is_main=d.is_main,
                                 rank=d.rank, per_process={"rng": RNGState(), "loader": self.loader},
                                 shared={"model": self.model, "optimizer": self.optimizer, "schedule": self.schedule,
                                         "early_stopping": self.stopper, "train": self.state})
        self.tracker = NullTracker()
        self.global_batch = tcfg.micro_batch_size * d.world_size * tcfg.grad_accum_steps

    def run(self) -> dict[str, float]:
        d, tcfg = self.d, self.tcfg
        resumed = self._resume()
        self.pace = Pace(self.state.step)
        self._start_tracking()
        status = "FAILED"
        try:
            log(d, f"[{self.spec.phase}] {d.world_size} process(es) on {d.device.type}, global batch "
                   f"{self.global_batch} in {self.loader.streams} data streams, MLflow run {self.state.run_id}")
            t, frozen = self.trainable, self.phase.frozen_parts
            log(d, f"trainable parameters: {t['trainable_params']:,} of {t['total_params']:,} "
                   f"({100 * t['trainable_fraction']:.2f}%)" + (f"; frozen: {', '.join(frozen)}" if frozen else ""))
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
            self.ckpt.release()

    def _resume(self) -> bool:
        outcome = self.ckpt.load(self.d.device)  # first, process 0 takes the state directory's lock
        starts = {tuple(s) for s in all_gather_object([outcome, self.state.step])}
        if len(starts) > 1:
            raise RuntimeError(f"processes disagree on where to start ({sorted(starts)}): the state directory "
                               f"{self.spec.state_dir} must be shared by all nodes")
        st, last = self.state, self.ckpt.last
        log(self.d, {"other": f"{last} belongs to another configuration or data: starting afresh", "none": "",
                     "resumed": f"resuming from {last}: epoch {st.epoch}, step {st.step} ({st.step_in_epoch} "
                                "into the epoch)"}[outcome])
        if outcome != "resumed":
            seed_everything(self.tcfg.seed + 1 + self.d.rank)  # dropout differs between processes
        return outcome == "resumed"

    def _start_tracking(self) -> None:
        """Process 0 opens (or continues) the MLflow run; an error there stops every process. A tracking
        server that is down is no error: the run is spooled (pipeline/tracking.py)."""
        error, d = None, self.d
        extra = {"run.global_batch_size": self.global_batch, "run.data_streams": self.loader.streams,
                 "run.precision": effective_precision(self.tcfg, d.device),
                 **{f"run.{k}": v for k, v in self.trainable.items()}}
        try:
            if d.is_main:
                tags, params = run_description(self.cfg, self.spec, self.init_meta, d.world_size, d.device.type, extra)
                self.tracker = start_run(repo_root(self.spec.repo), tags, params, self.state.run_id,
                                         self.spec.metrics_json, self.spec.val_tsv, state_dir=self.spec.state_dir)
        except Exception as e:  # noqa: BLE001 - reported to every process, then raised
            error = str(e)
        error, self.state.run_id = broadcast_object((error, self.tracker.run_id))
        if error:
            raise RuntimeError(error)

    def _run_epoch(self) -> None:
        d, tcfg, st = self.d, self.tcfg, self.state
        st.steps_in_epoch = steps = self.loader.steps_in_epoch(st.epoch)
        batches = self.loader.iter_epoch(st.epoch)
        try:
            while st.step_in_epoch < steps:
                metrics = self._train_step(batches, steps)
                st.step += 1
                st.step_in_epoch += 1
                self.tracker.log_train(st.step, metrics)
                fault.exit_if_due(st.step, d.rank)  # a test's injected crash (unset: nothing)
                if st.step % tcfg.log_every_steps == 0 or st.step_in_epoch == steps:
                    self.tracker.flush()
                    log(d, f"epoch {st.epoch + 1}/{self.phase.epochs} step {st.step_in_epoch}/{steps} (total "
                           f"{st.step}, {self.pace.line(st.step, steps * self.phase.epochs)}): "
                           + " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch"))
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
        log(self.d, f"epoch {st.epoch + 1}: validation coca {val['coca_loss']:.4f}" + (
            f", early stopping: {decision} (best {self.stopper.best:.4f} at epoch {self.stopper.best_epoch + 1}, "
            f"LR level {self.stopper.level})" if self.phase.early_stopping else ""))
        if decision == es.IMPROVED:
            st.best_val = {**val, "epoch": st.epoch + 1, "step": st.step}
            if self.d.is_main:  # with early stopping a soft reset reloads the optimizer too
                optimizer = {"optimizer": self.optimizer.state_dict()} if self.phase.early_stopping else {}
                self.ckpt.save_best({"model": self.model.state_dict(), "epoch": st.epoch + 1, "step": st.step,
                                     "val": val, **optimizer})
        elif decision == es.SOFT_RESET:
            barrier()
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

    def _train_step(self, batches, steps: int) -> dict[str, float]:
        d, tcfg, st = self.d, self.tcfg, self.state
        start = time.perf_counter()
        micro = [next(batches) for _ in range(tcfg.grad_accum_steps)]
        global_tokens = all_reduce_sum([int(self.loss_fn.count_targets(b.targets)) for b in micro], d.device)
        lr = self.schedule.lr(st.step, st.step_in_epoch, steps)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        con = cap = torch.zeros((), device=d.device)
        for j, batch in enumerate(micro):
            batch = batch.to(d.device)
            with no_sync(self.ddp_model, sync=j == len(micro) - 1):
                with self.amp:
                    out = self.ddp_model(batch.images, batch.text)
                losses = self.loss_fn(out, batch.targets, global_tokens[j])
                (losses["loss"] / len(micro)).backward()
            con, cap = con + losses["contrastive_loss"] / len(micro), cap + losses["caption_share"] / len(micro)
        cap_global, con_sum, bad, corrupt = all_reduce_sum(
            [cap.item(), con.item(), float(not (math.isfinite(con.item()) and math.isfinite(cap.item()))),
             self.loader.corrupt_total], d.device)
        con = con_sum / d.world_size  # the same value on every process: averaging changes nothing
        if bad:
            self._fail(f"non-finite loss (caption {cap_global}, contrastive {con})")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip).item()
        if not math.isfinite(grad_norm):
            self._fail(f"non-finite gradient norm ({grad_norm})")
        self.optimizer.step()
        self.model.clamp_logit_scale_()
        return {"coca_loss": self.loss_fn.combine(con, cap_global), "caption_loss": cap_global,
                "contrastive_loss": con, "lr": lr, "grad_norm": grad_norm,
                "samples_per_s": self.global_batch / (time.perf_counter() - start),
                "epoch": st.epoch + (st.step_in_epoch + 1) / steps, "corrupt_samples": corrupt}

    def _fail(self, what: str) -> None:
        st = self.state
        raise NonFiniteLoss(f"{what} at epoch {st.epoch + 1}, step {st.step + 1} ({st.step_in_epoch + 1} into the "
                            f"epoch): training stopped before this step's update. The last good checkpoint is "
                            f"{self.ckpt.last}; rerunning resumes from it and will meet the same data, so lower "
                            "the learning rate or check the data first.")

    def _validate(self, kind: str) -> dict[str, float]:
        st = self.state
        results = {name: validate(self.model, loader, self.loss_fn, self.d.device, self.amp)
                   for name, loader in self.val_loaders.items()}
        val = mean_over_sets(results) if self.spec.mixed else results[self.spec.dataset]
        epoch = {"start": 0, "step": st.epoch + st.step_in_epoch / st.steps_in_epoch, "epoch": st.epoch + 1}[kind]
        st.history.append({"step": st.step, "epoch": epoch, "kind": kind, **val, "lr_level": self.stopper.level})
        self.tracker.log_val(st.step, val, st.history)
        log(self.d, f"validation ({kind}, step {st.step}): " + " ".join(f"{k} {v:.4g}" for k, v in val.items()))
        return val

    def _save_last(self) -> None:  # metrics first: every step a checkpoint covers is in the spool, on disk
        self.tracker.flush()
        self.ckpt.save()

    def _finish(self) -> dict[str, float]:
        """Final weights (the best epoch's when early stopping is on), outputs, metrics, artifacts."""
        st, spec, d = self.state, self.spec, self.d
        use_best = self.phase.early_stopping and st.best_val is not None
        last = next(h for h in reversed(st.history) if h["kind"] == "epoch")
        final_val = st.best_val if use_best else {**last, "epoch": st.epoch, "step": st.step}
        per_set = [k for k in final_val if "/" in k]  # the joint fine-tune's <dataset>/<metric>
        final = {k: final_val[k] for k in ("coca_loss", "caption_loss", "perplexity", "contrastive_loss", "epoch",
                                           "step", *per_set)} | {"epochs_run": st.epoch, "steps_run": st.step}
        if d.is_main:
            meta = {"options": self.model.options, "phase": spec.phase, "dataset": spec.dataset,
                    "mlflow_run_id": st.run_id, "train_config": self.tcfg, "tokenizer_dir": spec.tokenizer,
                    "resize_mode": self.resize_mode}
            best = self.ckpt.load_best("cpu")
            save_model(spec.out_dir / "best.pt", best["model"], self.cfg.model, **meta, epoch=best["epoch"],
                       step=best["step"], val=best["val"], weights_of="best")
            save_model(spec.out_dir / "final.pt", best["model"] if use_best else self.model.state_dict(), self.cfg.model,
                       **meta, epoch=final["epoch"], step=final["step"], val=final, weights_of="best" if use_best else "last")
            self.tracker.log_final(st.step, final, st.history)
            for path, where in ((spec.out_dir, "checkpoints"), (spec.tokenizer, "tokenizer"),
                                (spec.metrics_json, "metrics"), (spec.val_tsv, "metrics")):
                self.tracker.log_artifact(path, where)
            log(d, f"[{spec.phase}] done: {json.dumps(final)}")
        barrier()
        if d.is_main:  # finished: the next run of the stage starts afresh
            self.ckpt.clear()
        return final
