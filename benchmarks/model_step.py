"""Time a full CoCa training step: our Baseline and GRR CoCa beside open_clip's CoCa, against the
machine's fp32 matmul ceiling.

One step = forward, contrastive + captioning losses (lambda_con = 2, lambda_cap = 1), backward,
AdamW step. Both models get the same width, depth, heads, image size, text context (64 input tokens)
and batch, in the same process, with steps interleaved (ours fp32, open_clip fp32, ours bf16, ...)
so that both see the same machine load. Reported: samples/s from the median step time; FLOPs per
sample of each fp32 step counted with torch's FlopCounterMode (one forward + backward); the machine's
fp32 matmul ceiling (the best 4096x4096 `torch.mm` on the same threads, before and after the steps);
and the utilisation, counted FLOP/s over that ceiling (a CPU "model FLOPs utilisation").

open_clip is NOT a project dependency; this script runs in its own virtualenv:

    python3.11 -m venv .venv-bench
    .venv-bench/bin/pip install -r benchmarks/requirements-bench.txt
    .venv-bench/bin/python benchmarks/model_step.py                 # demo and paper sizes
    .venv-bench/bin/python benchmarks/model_step.py --sizes demo --steps 10
    .venv-bench/bin/python benchmarks/model_step.py --sizes demo256 --batch 32 --compile  # + torch.compile

Also timed, interleaved with the steps: each fp32 step's counted ops (matmuls, attention,
convolutions, as FlopCounterMode counts them; recorded with a TorchDispatchMode) replayed alone on
random tensors of the same shapes and strides. That is the floor of what the step could cost if
everything else (elementwise work, copies, the optimizer, Python) were free, so it bounds what any
fusion or compilation could gain: 'ours-ops/oc' is the highest ours/open_clip ratio reachable
without faster matmuls.

Sizes: the presets' models (demo, paper, smoke) and demo256, the demo preset widened to 256 with 4
blocks in each of the ViT and the two text decoders (4 heads of 64), 64 px images.

(open_clip imports torchvision, whose PyPI wheels need PyPI's CUDA build of torch: that is what the
bench venv installs; it runs on a CPU-only machine.)

Differences that remain by design: our text decoders use GEGLU (2.7x), RMSNorm and RoPE (both
variants); open_clip's use a GELU MLP (4x), LayerNorm and learned absolute positions. The ViT is
the same architecture (ours: fixed sin-cos positions and no class token / ln_pre / ln_post / proj).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.inputs import captions  # noqa: E402
from pipeline.config import model_preset  # noqa: E402
from pipeline.model.coca import CoCa  # noqa: E402
from pipeline.model.config import ModelConfig  # noqa: E402
from pipeline.model.losses import CoCaLoss  # noqa: E402


def open_clip_coca(cfg: ModelConfig):
    import open_clip
    from open_clip.coca_model import CoCa as OpenClipCoCa

    # open_clip's standard CoCa pooling: one attentional pooler whose first query is the image
    # embedding and whose other queries are the decoder's context (its "cascade" option is marked
    # untested and fails in the contrastive loss), so pooler_queries + 1 queries.
    vision = dict(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.dim,
                  layers=cfg.vit_layers, head_width=cfg.head_dim, mlp_ratio=cfg.mlp_ratio,
                  attentional_pool=True, attn_pooler_queries=cfg.pooler_queries + 1,
                  attn_pooler_heads=cfg.heads, output_tokens=True)
    text = dict(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.dim,
                heads=cfg.heads, layers=cfg.unimodal_layers, embed_cls=True, output_tokens=True,
                pad_id=cfg.pad_id)
    multimodal = dict(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.dim,
                      heads=cfg.heads, layers=cfg.multimodal_layers)
    model = OpenClipCoCa(embed_dim=cfg.dim, multimodal_cfg=multimodal, text_cfg=text,
                         vision_cfg=vision, pad_id=cfg.pad_id)
    loss = open_clip.CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=2.0, pad_id=cfg.pad_id)
    return model, loss


def matmul_ceiling(threads: int, n: int = 4096, reps: int = 5) -> float:
    """The machine's fp32 matmul GFLOP/s on these threads: the best of `reps` n x n `torch.mm` (2 n^3
    FLOPs each), the ceiling a model step's own matmuls could reach."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: allocation, thread pool
    best = min(timed(lambda: torch.mm(a, b))[0] for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def flops_per_sample(step, batch: int) -> float:
    """Forward + backward FLOPs of one step per sample, counted by torch's FlopCounterMode (matmuls,
    convolutions, attention; elementwise work and the optimizer are not counted, as in MFU)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / batch


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


def counted_ops(step) -> list[tuple]:
    """The ops of one step that FlopCounterMode counts (matmuls, attention, convolutions), each as
    (op, args, kwargs) with every tensor replaced by its (shape, stride, dtype)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map
    from torch.utils.flop_counter import FlopCounterMode

    registry = FlopCounterMode(display=False).flop_registry
    spec = lambda x: TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype) if isinstance(x, torch.Tensor) else x

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls: list[tuple] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func._overloadpacket in registry:
                self.calls.append((func, tree_map(spec, args), tree_map(spec, kwargs)))
            return func(*args, **kwargs)

    recorder = Recorder()
    with recorder:
        step()
    return recorder.calls


def replay(calls: list[tuple]):
    """A closure running the recorded ops alone, on random tensors of the recorded shapes and strides
    (so each matmul takes the same BLAS path): the time the step's counted FLOPs take by themselves.
    Ops with inputs of the same shape share one tensor, which a cache may favour a little over the
    step's distinct tensors: at paper size (GRR, batch 8) a replay with a distinct tensor for every
    operand (7.5 GB) took 1-4% longer than this one."""
    from torch.utils._pytree import tree_map

    made: dict[TensorSpec, torch.Tensor] = {}  # one tensor per distinct spec: a paper-size step's
    # inputs, all held at once, would take tens of GB; ops of the same shapes share theirs

    def make(x):
        if isinstance(x, TensorSpec) and x in made:
            return made[x]
        if isinstance(x, TensorSpec):
            extent = 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride)) if all(x.shape) else 0
            base = torch.empty(extent, dtype=x.dtype)  # (strides may repeat elements: fill the storage)
            base = base.normal_() if base.is_floating_point() else base.zero_()
            made[x] = base.as_strided(x.shape, x.stride)
            return made[x]
        return x
    ready = [(func, tree_map(make, args), tree_map(make, kwargs)) for func, args, kwargs in calls]

    def run() -> None:
        for func, args, kwargs in ready:
            func(*args, **kwargs)
    return run


def make_steps(cfg: ModelConfig, batch: int, compiled: bool = False, open_clip: bool = True,
               encoders: tuple[str, ...] = ("baseline", "grr")):
    """Step closures sharing one batch: ours (Baseline and GRR) fp32, open_clip fp32, ours bf16 autocast;
    with `compiled`, ours (Baseline and GRR) fp32 under torch.compile (inductor) as well."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    seq = captions(cfg, batch)
    ours_loss = CoCaLoss(2.0, 1.0, cfg.tokens)

    def our_step(model_cfg: ModelConfig, compile_model: bool = False):
        torch.manual_seed(0)
        model = CoCa(model_cfg)
        opt = torch.optim.AdamW(model.optimizer_param_groups(0.001), lr=1e-5, fused=True)
        if compile_model:
            model.compile()  # in place, as train.compile does (pipeline/train/parallelize.py)

        def step(bf16: bool = False) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = ours_loss(model(images, seq[:, :-1]), seq[:, 1:])["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return model, step

    steps, counts = {}, (0, 0)
    if "baseline" in encoders:
        ours, ours_step = our_step(cfg)
        steps.update({"ours fp32": lambda: ours_step(False), "ours bf16": lambda: ours_step(True)})
        counts = (sum(p.numel() for p in ours.parameters()), 0)
    if "grr" in encoders:
        _, grr_step = our_step(cfg.replace(encoder="grr"))
        steps["ours grr fp32"] = lambda: grr_step(False)
    if open_clip:
        steps["open_clip fp32"], theirs_params = open_clip_step(cfg, images, seq)
        counts = (counts[0], theirs_params)
    if compiled:
        wanted = [(name, cfg.replace(encoder=encoder)) for name, encoder in
                  (("ours compiled", "baseline"), ("ours grr compiled", "grr")) if encoder in encoders]
        for name, model_cfg in wanted:
            _, step = our_step(model_cfg, compile_model=True)
            start = time.perf_counter()
            step(False)  # compiles (forward and backward graphs)
            print(f"  {name}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
            steps[name] = lambda step=step: step(False)
    return steps, counts


def open_clip_step(cfg: ModelConfig, images: torch.Tensor, seq: torch.Tensor):
    """open_clip's CoCa step on the same batch (fp32, fused AdamW), and its parameter count."""
    theirs, theirs_loss = open_clip_coca(cfg)
    theirs_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-5, weight_decay=0.001, fused=True)
    # open_clip's format: no CLS token (it appends a learned CLS embedding itself), same length.
    theirs_text = seq[:, :-1].masked_fill(seq[:, :-1] == cfg.cls_id, cfg.pad_id)

    def theirs_step() -> None:
        out = theirs(images, theirs_text)
        con, cap = theirs_loss(out["image_features"], out["text_features"], out["logits"],
                               out["labels"], out["logit_scale"])
        theirs_opt.zero_grad(set_to_none=True)
        (con + cap).backward()
        theirs_opt.step()
    return theirs_step, sum(p.numel() for p in theirs.parameters())


def timed(step) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one step."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_config(size: str) -> ModelConfig:
    if size == "demo256":  # the demo preset's model widened and deepened (issue 11's demo-ish size)
        return model_preset("demo", encoder="baseline", dim=256, heads=4, vit_layers=4, unimodal_layers=4,
                            multimodal_layers=4)
    return model_preset(size, encoder="baseline")  # CoCa(cfg) has dropout 0 unless a phase sets it


def bench(size: str, batch: int, steps: int, warmup: int, compiled: bool, open_clip: bool = True,
          encoders: tuple[str, ...] = ("baseline", "grr")) -> dict[str, dict[str, float]]:
    cfg = bench_config(size)
    runs, (n_ours, n_theirs) = make_steps(cfg, batch, compiled, open_clip, encoders)
    print(f"\n[{size}] dim {cfg.dim}, layers {cfg.vit_layers}/{cfg.unimodal_layers}/"
          f"{cfg.multimodal_layers}, heads {cfg.heads}, image {cfg.image_size}/{cfg.patch_size}, "
          f"context {cfg.context_length}, vocab {cfg.vocab_size}, batch {batch}; "
          f"params ours {n_ours:,}, open_clip {n_theirs:,}", flush=True)
    flops = {name: flops_per_sample(step, batch) for name, step in runs.items() if "fp32" in name}
    for name in runs:  # a compiled step does the same matmuls as its eager twin (counted there)
        if "compiled" in name:
            flops[name] = flops[name.replace("compiled", "fp32")]
    print("  forward+backward GFLOP per sample (FlopCounterMode): "
          + ", ".join(f"{n} {f / 1e9:.1f}" for n, f in flops.items()), flush=True)
    # The counted ops replayed alone (fp32 eager steps): no change outside them (fusion, fewer copies,
    # compilation) can make a step faster than they are.
    for name in [n for n in runs if "fp32" in n]:
        runs[f"{name} ops alone"] = replay(counted_ops(runs[name]))
        flops[f"{name} ops alone"] = flops[name]
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + steps):
        round_times = {name: timed(step) for name, step in runs.items()}
        if i >= warmup:
            for name, (wall, cpu) in round_times.items():
                walls[name].append(wall)
                cpus[name].append(cpu)
        print(f"  {'warm-up' if i < warmup else 'round'} {i + 1}: " + ", ".join(
            f"{n} {w:.3f}s (cpu {c:.3f}s)" for n, (w, c) in round_times.items()), flush=True)
    del runs
    gc.collect()
    # On a shared machine interference only adds time: report the median and the best wall-clock
    # step, and the best CPU time of the process (with --threads 1 that is the compute time).
    return {name: {"median": batch / statistics.median(walls[name]), "best": batch / min(walls[name]),
                   "cpu": batch / min(cpus[name]), "flops": flops.get(name, 0.0)} for name in walls}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=["demo", "demo256", "paper", "smoke"])
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile (inductor)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--encoders", nargs="+", default=["baseline", "grr"], choices=["baseline", "grr"],
                        help="which of ours to build (one alone: its step timed in a process of its own, "
                             "with no other paper-size model sharing the memory)")
    parser.add_argument("--no-open-clip", action="store_true",
                        help="leave open_clip out (at paper size three models and their AdamW states, about "
                             "19 GB, leave no room for the ops-alone replay on a 24 GB machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    ceiling = matmul_ceiling(args.threads)
    print(f"fp32 matmul ceiling: {ceiling:.1f} GFLOP/s (best of 5 4096x4096 torch.mm, {args.threads} thread(s))")
    results = {size: bench(size, args.batch, args.steps, args.warmup, args.compile, not args.no_open_clip,
                           tuple(args.encoders)) for size in args.sizes}
    ceiling_after = matmul_ceiling(args.threads)
    print(f"\nfp32 matmul ceiling before / after the steps: {ceiling:.1f} / {ceiling_after:.1f} GFLOP/s; "
          "utilisation = counted FLOPs per sample x samples/s / the higher ceiling")
    ceiling = max(ceiling, ceiling_after)
    print(f"samples/s, batch {args.batch}, {args.threads} thread(s): median and best wall-clock step;"
          f" 'cpu' = samples per CPU-second of the process (best step)")
    print("'X ops alone': the matmuls, attention and convolutions of X's step (as FlopCounterMode counts "
          "them) replayed by themselves on same-shaped tensors: the fastest X's step could be if everything "
          "else cost nothing. 'ours-ops/oc' (and 'grr-ops/oc'): their samples/s over open_clip's step's, the "
          "highest ours/open_clip ratio that any change outside those ops could reach.")
    names = ["ours fp32", "ours grr fp32", "open_clip fp32", "ours bf16",
             "ours fp32 ops alone", "ours grr fp32 ops alone", "open_clip fp32 ops alone"]
    names += ["ours compiled", "ours grr compiled"] if args.compile else []
    names = [n for n in names if all(n in r for r in results.values())]  # (--no-open-clip: theirs left out)
    timed_fp32 = [n for n in names if n != "ours bf16"]
    ratios = [("ours/oc", "ours fp32", "open_clip fp32"), ("grr/ours", "ours grr fp32", "ours fp32"),
              ("ours-ops/oc", "ours fp32 ops alone", "open_clip fp32"),
              ("grr-ops/oc", "ours grr fp32 ops alone", "open_clip fp32")]
    if args.compile:
        ratios += [("comp/oc", "ours compiled", "open_clip fp32"), ("grrc/oc", "ours grr compiled", "open_clip fp32"),
                   ("grrc/comp", "ours grr compiled", "ours compiled")]
    ratios = [r for r in ratios if r[1] in names and r[2] in names]
    width = {n: max(12, len(n) + 2) for n in names}
    utils = {n: "util " + n.replace(" fp32", "") for n in timed_fp32}
    print(f"{'size':<8}{'stat':<8}" + "".join(f"{n:>{width[n]}}" for n in names) + "".join(f"{r[0]:>13}" for r in ratios)
          + "".join(f"{utils[n]:>{len(utils[n]) + 2}}" for n in timed_fp32))
    for size, r in results.items():
        for stat in ("median", "best", "cpu"):
            v = {n: r[n][stat] for n in names}
            util = [r[n]["flops"] * v[n] / 1e9 / ceiling for n in timed_fp32]
            print(f"{size:<8}{stat:<8}" + "".join(f"{v[n]:>{width[n]}.3f}" for n in names)
                  + "".join(f"{v[a] / v[b]:>13.2f}" for _, a, b in ratios)
                  + "".join(f"{u:>{len(utils[n]) + 2}.2f}" for n, u in zip(timed_fp32, util)))


if __name__ == "__main__":
    main()
