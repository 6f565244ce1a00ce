"""Time a full CoCa training step: our Baseline CoCa beside open_clip's CoCa.

One step = forward, contrastive + captioning losses (lambda_con = 2, lambda_cap = 1), backward,
AdamW step. Both models get the same width, depth, heads, image size, text context (64 input tokens)
and batch, in the same process, with steps interleaved (ours fp32, open_clip fp32, ours bf16, ...)
so that both see the same machine load. Reported: samples/s from the median step time.

open_clip is NOT a project dependency; this script runs in its own virtualenv:

    python3.11 -m venv .venv-bench
    .venv-bench/bin/pip install -e . -r benchmarks/requirements-bench.txt
    .venv-bench/bin/python benchmarks/model_step.py                 # demo and paper sizes
    .venv-bench/bin/python benchmarks/model_step.py --sizes demo --steps 10

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import model_preset  # noqa: E402
from pipeline.model.coca import CoCa  # noqa: E402
from pipeline.model.config import ModelConfig  # noqa: E402
from pipeline.model.losses import CoCaLoss  # noqa: E402


def captions(cfg: ModelConfig, batch: int, seed: int = 0) -> torch.Tensor:
    """Caption sequences BOS, tokens, EOS, PAD..., CLS, PAD (context_length + 1) of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.full((batch, cfg.context_length + 1), cfg.pad_id, dtype=torch.long)
    for row in range(batch):
        n = int(torch.randint(5, cfg.context_length - 3, (1,), generator=g))
        seq[row, 0] = cfg.bos_id
        seq[row, 1:n + 1] = torch.randint(3, cfg.bos_id, (n,), generator=g)
        seq[row, n + 1] = cfg.eos_id
        seq[row, -2] = cfg.cls_id
    return seq


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


def make_steps(cfg: ModelConfig, batch: int):
    """Three step closures sharing one batch: ours fp32, open_clip fp32, ours bf16 autocast."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    seq = captions(cfg, batch)

    ours = CoCa(cfg)
    ours_opt = torch.optim.AdamW(ours.optimizer_param_groups(0.001), lr=1e-5, fused=True)
    ours_loss = CoCaLoss(2.0, 1.0, cfg.tokens)

    def ours_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = ours_loss(ours(images, seq[:, :-1]), seq[:, 1:])["loss"]
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        ours_opt.step()

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

    counts = (sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in theirs.parameters()))
    return {"ours fp32": lambda: ours_step(False), "open_clip fp32": theirs_step,
            "ours bf16": lambda: ours_step(True)}, counts


def timed(step) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one step."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(size: str, batch: int, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    cfg = model_preset(size, encoder="baseline")  # CoCa(cfg) has dropout 0 unless a phase sets it
    runs, (n_ours, n_theirs) = make_steps(cfg, batch)
    print(f"\n[{size}] dim {cfg.dim}, layers {cfg.vit_layers}/{cfg.unimodal_layers}/"
          f"{cfg.multimodal_layers}, heads {cfg.heads}, image {cfg.image_size}/{cfg.patch_size}, "
          f"context {cfg.context_length}, vocab {cfg.vocab_size}, batch {batch}; "
          f"params ours {n_ours:,}, open_clip {n_theirs:,}", flush=True)
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
                   "cpu": batch / min(cpus[name])} for name in walls}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=["demo", "paper", "smoke"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    results = {size: bench(size, args.batch, args.steps, args.warmup) for size in args.sizes}
    print(f"\nsamples/s, batch {args.batch}, {args.threads} thread(s): median and best wall-clock step;"
          f" 'cpu' = samples per CPU-second of the process (best step)")
    print(f"{'size':<7}{'stat':<8}{'ours fp32':>11}{'open_clip fp32':>16}{'ours bf16':>11}"
          f"{'ours/oc fp32':>14}{'ours bf16/oc fp32':>19}")
    for size, r in results.items():
        for stat in ("median", "best", "cpu"):
            ours, theirs, bf16 = (r[n][stat] for n in ("ours fp32", "open_clip fp32", "ours bf16"))
            print(f"{size:<7}{stat:<8}{ours:>11.3f}{theirs:>16.3f}{bf16:>11.3f}"
                  f"{ours / theirs:>14.2f}{bf16 / theirs:>19.2f}")


if __name__ == "__main__":
    main()
