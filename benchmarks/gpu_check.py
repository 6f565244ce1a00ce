"""One-shot GPU check of the paper-size model: training-step speed and MFU, memory, beam search, JPEG decode.

Run once on a lent GPU machine (one H100 or H200; only torch, torchvision and transformers needed, the
script imports no mlflow, dvc, webdataset or pandas); it takes a few minutes, compiles included:

    python benchmarks/gpu_check.py                        # cuda: both encoders, eager and compiled
    python benchmarks/gpu_check.py --no-compile --steps 10
    python benchmarks/gpu_check.py --device cpu --tiny    # the same code path on a tiny model (<1 min)

Measured, then printed as one table with the targets beside the numbers:

1. Training step of `model_preset("paper")` (GRR) and of its Baseline encoder at micro-batch 48, bf16
   autocast, eager and `torch.compile`d (in place, as `train.compile` does). One step is what
   `Trainer._train_step` does for one micro-batch, data loading aside: forward under autocast,
   `CoCaLoss(2, 1)` outside it with the caption-target count passed in, backward, gradient clipping
   at 1.0, fused AdamW, logit-scale clamp. Reported: samples/s from the median of N timed steps
   (warm-up steps excluded, compile's first steps among them; `torch.cuda.synchronize()` around each)
   and MFU = (FLOPs per step / median step time) / the GPU's dense bf16 peak. FLOPs per step are
   counted with `torch.utils.flop_counter.FlopCounterMode` on one eager forward + loss and one
   backward of the same batch (matmuls, convolutions, SDPA; the optimizer and elementwise ops are
   not counted, as usual for MFU); the compiled model does the same math, so it uses the same count.
2. Peak GPU memory (`torch.cuda.max_memory_allocated`) of each of those configurations: weights,
   gradients, AdamW state and activations.
3. Beam-search captions/s (width 3, KV cache) with `pipeline.model.generate.generate`, as
   `caption_images` calls it (fp32), and under bf16 autocast. The weights are random, so no caption
   stops early at EOS: every caption runs to the full context length (the slowest case).
4. Batched JPEG decode at the model's image size, by the training path itself (train.decode_on device
   with the paper preset's resize_at load): synthetic photo-like JPEGs (500x375 and similar, smooth
   colour fields, shapes, noise) made in memory with PIL, decoded by `preprocess.decode_images`
   (`torchvision.io.decode_jpeg(list, device=...)`) a batch at a time, each made square by
   `prepare_image` (bilinear, antialias) and the batch normalised as the trainer does. Its ratio to
   the fastest step's samples/s says whether decoding on the GPU could feed training (target >= 3x).
   Beside it, how far those pixels are from the CPU path's (decode_image + prepare_image, what the
   workers and inference make): grey levels of difference (0 on the CPU, where both are libjpeg-turbo).
5. A 50-step loss curve on 4 fixed synthetic batches, repeated: PASS when the last loss is below the
   first (the step, the loss and the optimizer really learn).

Each section is guarded: an error is printed as a "failed: ..." row and the other sections still run.
Missed targets do not change the exit status; a failed section makes it 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.inputs import captions
from pipeline.config import model_preset
from pipeline.data.preprocess import decode_image, decode_images, normalize, prepare_image
from pipeline.model.coca import CoCa
from pipeline.model.config import ModelConfig
from pipeline.model.generate import generate
from pipeline.model.losses import CoCaLoss

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; the first name
# contained in torch.cuda.get_device_name() wins, so the specific H100 models come before "H100".
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.5), ("H100 NVL", 835.5), ("H100", 989.4),
                    ("A100", 312.0))
MFU_TARGET = 0.45  # with torch.compile
DECODE_TARGET = 3.0  # decode images/s per training sample/s
LAMBDA_CON, LAMBDA_CAP = 2.0, 1.0  # the paper's loss weights (every preset's)
WEIGHT_DECAY, GRAD_CLIP = 0.001, 1.0  # the paper preset's train section
CURVE_BATCHES = 4
GiB = 2 ** 30


@dataclass
class Settings:
    device: torch.device
    bf16: bool
    tiny: bool
    batch: int  # training micro-batch
    steps: int  # timed steps per configuration
    warmup: int  # eager warm-up steps (compiled: warmup + 2, its first steps compile)
    compile: bool
    peak_flops: float | None  # FLOP/s, or None: MFU n/a
    peak_source: str
    beam_images: int
    beam_runs: int
    decode_images: int
    decode_batch: int
    decode_passes: int
    decode_size: int
    curve_steps: int
    lr: float

    def configs(self) -> dict[str, ModelConfig]:
        preset = "smoke" if self.tiny else "paper"
        return {"grr": model_preset(preset), "baseline": model_preset(preset, encoder="baseline")}

    def autocast(self) -> contextlib.AbstractContextManager:
        # Always the autocast context, disabled for fp32, so both precisions run the same code.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.bf16 else "fp32"


@dataclass
class Report:
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    failed: int = 0
    step_rates: dict[str, float] = field(default_factory=dict)  # "grr compiled" -> samples/s
    mfus: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, config: str, result: str, target: str = "", verdict: str = "") -> None:
        self.rows.append((section, config, result, target, verdict))


# ------------------------------------------------------------------------------------ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    # Compiled code keeps the last compiled model alive: drop it, or it counts in the next row's memory.
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def random_images(cfg: ModelConfig, batch: int, device: torch.device, seed: int) -> torch.Tensor:
    """Normalised model inputs from random uint8 pixels (the loader's value range)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, generator=g)
    return normalize(pixels.to(device))


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]


def make_batches(cfg: ModelConfig, batch: int, n: int, device: torch.device, loss_fn: CoCaLoss) -> list[Batch]:
    """n fixed micro-batches already on the device: (images, input tokens, targets, target count).
    The count is taken on the CPU targets, as the trainer does before moving a batch."""
    out = []
    for i in range(n):
        seq = captions(cfg, batch, seed=i)
        out.append((random_images(cfg, batch, device, seed=i), seq[:, :-1].to(device), seq[:, 1:].to(device),
                    float(loss_fn.count_targets(seq[:, 1:]))))
    return out


def build(cfg: ModelConfig, s: Settings, seed: int = 0):
    """(model, loss, step function): model, loss and fused AdamW set up as the trainer sets them up."""
    torch.manual_seed(seed)
    model = CoCa(cfg).to(s.device)
    loss_fn = CoCaLoss(LAMBDA_CON, LAMBDA_CAP, cfg.tokens)
    optimizer = torch.optim.AdamW(model.optimizer_param_groups(WEIGHT_DECAY), lr=s.lr, fused=True)

    def step(images: torch.Tensor, text: torch.Tensor, targets: torch.Tensor, tokens: float) -> torch.Tensor:
        # Trainer._train_step for one micro-batch: the loss runs outside autocast (it promotes to fp32).
        optimizer.zero_grad(set_to_none=True)
        with s.autocast():
            out = model(images, text)
        loss = loss_fn(out, targets, tokens)["loss"]
        loss.backward()
        # No .item() here (the trainer's finiteness checks sync every step; the timing syncs anyway).
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        model.clamp_logit_scale_()
        return loss.detach()

    return model, loss_fn, step


def count_flops(model: CoCa, loss_fn: CoCaLoss, batch: Batch, s: Settings) -> tuple[int, int]:
    """(forward + loss FLOPs, backward FLOPs) of one micro-batch, counted by FlopCounterMode."""
    images, text, targets, tokens = batch
    with FlopCounterMode(display=False) as forward:
        with s.autocast():
            out = model(images, text)
        loss = loss_fn(out, targets, tokens)["loss"]
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return forward.get_total_flops(), backward.get_total_flops()


def time_calls(fn: Callable[[int], object], warmup: int, runs: int, device: torch.device) -> list[float]:
    """Wall seconds of `runs` calls fn(i) after `warmup` untimed ones, synchronised around each."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(warmup, warmup + runs):
        sync(device)
        start = time.perf_counter()
        fn(i)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def fmt_seconds(t: float) -> str:
    return f"{t * 1000:.1f} ms" if t < 10 else f"{t:.1f} s"


def fmt_flops(x: float) -> str:
    """FLOPs (or FLOP/s without the unit's /s) with an SI prefix: 10.52 T, 3.1 G."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {prefix}"
    return f"{x:.0f} "


def dynamo_graphs() -> int:
    """Graphs torch.compile has captured in this process so far (a recompile adds to it)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


# ----------------------------------------------------------------------------------- sections


def bench_step(name: str, cfg: ModelConfig, compiled: bool, s: Settings, report: Report) -> None:
    """Rows 'train step' and 'peak memory' of one encoder, eager or compiled."""
    label = f"{name}, {'torch.compile' if compiled else 'eager'}, {s.precision}, micro-batch {s.batch}"
    model, loss_fn, step = build(cfg, s)
    batches = make_batches(cfg, s.batch, 2, s.device, loss_fn)
    fwd, bwd = count_flops(model, loss_fn, batches[0], s)  # on the eager model: the same math compiled
    if compiled:
        torch._dynamo.reset()  # a fresh cache per model: no guard failures or recompiles from the last one
        model.compile()  # in place, as parallelize() does with train.compile
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    warmup = s.warmup + 2 if compiled else s.warmup
    graphs = []  # dynamo graphs so far: before warm-up, after warm-up, after the timed steps

    def counted_step(i: int) -> None:
        if i in (0, warmup):
            graphs.append(dynamo_graphs())
        step(*batches[i % len(batches)])

    start = time.perf_counter()
    times = time_calls(counted_step, warmup, s.steps, s.device)
    graphs.append(dynamo_graphs())
    median = statistics.median(times)
    rate = s.batch / median
    achieved = (fwd + bwd) / median
    key = f"{name} {'compiled' if compiled else 'eager'}"
    report.step_rates[key] = rate
    mfu = ", MFU n/a"
    if s.peak_flops:
        report.mfus[key] = achieved / s.peak_flops
        mfu = f", MFU {100 * report.mfus[key]:.1f}%"
    target, verdict = "", ""
    if compiled:
        target = f"MFU >= {100 * MFU_TARGET:.0f}%"
        verdict = "n/a" if key not in report.mfus else ("met" if report.mfus[key] >= MFU_TARGET else "MISSED")
    report.add("train step", label,
               f"{rate:.1f} samples/s ({fmt_seconds(median)}/step, median of {s.steps}; "
               f"{fmt_flops(achieved)}FLOP/s{mfu})", target, verdict)
    report.notes.append(f"{key}: {fmt_flops(fwd + bwd)}FLOP/step counted (forward+loss {fmt_flops(fwd)}FLOP, "
                        f"backward {fmt_flops(bwd)}FLOP; {fmt_flops((fwd + bwd) / s.batch)}FLOP/sample); "
                        f"{warmup} warm-up steps took {time.perf_counter() - start - sum(times):.1f} s"
                        + (f"; dynamo graphs compiled: {graphs[1] - graphs[0]} in warm-up, {graphs[2] - graphs[1]} "
                           "during the timed steps (0 expected)" if compiled else ""))
    if s.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(s.device)
        total = torch.cuda.get_device_properties(s.device).total_memory
        report.add("peak memory", label, f"{peak / GiB:.2f} GiB ({100 * peak / total:.0f}% of {total / GiB:.0f} GiB)")
    else:
        report.add("peak memory", label, "n/a (cpu: torch.cuda.max_memory_allocated only)")


def bench_beam(cfg: ModelConfig, s: Settings, report: Report) -> None:
    """Rows 'beam search': generate(method="beam", num_beams=3) as caption_images calls it, and bf16."""
    torch.manual_seed(0)
    model = CoCa(cfg).to(s.device).eval()
    images = random_images(cfg, s.beam_images, s.device, seed=100)
    lengths = []

    def caption(amp: contextlib.AbstractContextManager) -> None:
        with amp:
            lengths.append(generate(model, images, method="beam", num_beams=3).shape[1])

    precisions = {"fp32 (as caption_images)": contextlib.nullcontext}
    if s.bf16:
        precisions["bf16 autocast"] = s.autocast
    for precision, amp in precisions.items():
        times = time_calls(lambda i, amp=amp: caption(amp()), 1, s.beam_runs, s.device)
        median = statistics.median(times)
        report.add("beam search", f"grr, width 3, KV cache, {s.beam_images} images per call, {precision}",
                   f"{s.beam_images / median:.1f} captions/s ({fmt_seconds(median)} per call, "
                   f"{lengths[-1]} tokens generated, median of {s.beam_runs})")


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs of web-photo sizes: a smooth colour field, a few shapes, sensor-like noise."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    sizes = [(500, 375), (375, 500), (500, 333), (640, 480), (480, 640), (500, 400)]
    out = []
    for _ in range(n):
        w, h = rng.choice(sizes)
        coarse = np_rng.integers(0, 256, (4 + rng.randrange(4), 4 + rng.randrange(4), 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(2, 6)):
            x, y = rng.randrange(w), rng.randrange(h)
            box = [x, y, x + rng.randint(20, w // 2), y + rng.randint(20, h // 2)]
            colour = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        pixels = np.asarray(image, dtype=np.int16) + np_rng.normal(0, 6, (h, w, 3)).astype(np.int16)
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG",
                                                                   quality=rng.randint(80, 95))
        out.append(buffer.getvalue())
    return out


def jpeg_decoder(s: Settings) -> tuple[Callable[[list[bytes]], torch.Tensor], str]:
    """(decode + square + normalise of a list of JPEG files -> (B, 3, S, S) on the device, what it uses):
    what the loader does with train.decode_on device for shards made with resize_at load."""
    def decode(data: list[bytes]) -> torch.Tensor:
        # One resize per image: real images come in many sizes, so they cannot be stacked before it.
        squares = [prepare_image(x, s.decode_size) for x in decode_images(data, s.device)]
        return normalize(torch.stack(squares))

    return decode, f"decode_images(device={s.device.type}) + prepare_image, as train.decode_on device"


def bench_decode(s: Settings, report: Report) -> None:
    """Row 'JPEG decode' and the decode / step ratio."""
    jpegs = synthetic_jpegs(s.decode_images)
    batches = [jpegs[i:i + s.decode_batch] for i in range(0, len(jpegs), s.decode_batch)]
    decode, how = jpeg_decoder(s)
    times = time_calls(lambda i: decode(batches[i % len(batches)]), 1, s.decode_passes * len(batches), s.device)
    per_batch = [len(batches[i % len(batches)]) for i in range(1, 1 + len(times))]
    rate = sum(per_batch) / sum(times)
    kb = sum(map(len, jpegs)) / len(jpegs) / 1024
    report.add("JPEG decode", f"{how}, {s.decode_batch} per batch, to {s.decode_size}x{s.decode_size}",
               f"{rate:.0f} images/s ({sum(per_batch)} images in {sum(times):.2f} s)")
    report.notes.append(f"JPEG decode: {len(jpegs)} synthetic JPEGs of 333 to 640 px a side (mean {kb:.0f} KiB), "
                        f"bytes already in memory; each decoded image resized (bilinear, antialias), the batch "
                        f"stacked and normalised; {s.decode_passes} timed pass(es) after one warm-up batch")
    here = torch.stack([prepare_image(x, s.decode_size) for x in decode_images(batches[0], s.device)]).cpu()
    cpu = torch.stack([prepare_image(decode_image(j), s.decode_size) for j in batches[0]])
    levels = (here.to(torch.int16) - cpu.to(torch.int16)).abs()
    report.add("JPEG decode", f"pixels against the CPU path (decode_image + prepare_image), {len(batches[0])} images",
               f"max {int(levels.max())} grey levels, mean {levels.float().mean().item():.3f}, "
               f"{100 * (levels > 2).float().mean().item():.2f}% of values off by more than 2")
    compiled = {k: v for k, v in report.step_rates.items() if k.endswith("compiled")}
    rates = compiled or report.step_rates
    if not rates:
        report.add("decode / step", "no training-step row to compare with", "n/a",
                   f">= {DECODE_TARGET:.0f}x", "n/a")
        return
    name, step_rate = max(rates.items(), key=lambda kv: kv[1])
    ratio = rate / step_rate
    report.add("decode / step", f"decode images/s / {name} step samples/s ({step_rate:.1f}; the fastest"
                                f"{'' if compiled else ', no compiled row'})",
               f"{ratio:.2f}x", f">= {DECODE_TARGET:.0f}x", "met" if ratio >= DECODE_TARGET else "MISSED")


def bench_curve(cfg: ModelConfig, s: Settings, report: Report) -> None:
    """Row 'loss curve': curve_steps eager steps on CURVE_BATCHES fixed batches, repeated."""
    _, loss_fn, step = build(cfg, s, seed=1)
    batches = make_batches(cfg, s.batch, CURVE_BATCHES, s.device, loss_fn)
    losses = [float(step(*batches[i % len(batches)])) for i in range(s.curve_steps)]
    shown = sorted({1, *range(10, s.curve_steps + 1, 10), s.curve_steps})
    verdict = "PASS" if losses[-1] < losses[0] else "FAIL"
    report.add("loss curve", f"grr, eager, {s.precision}, {s.curve_steps} steps on {CURVE_BATCHES} fixed batches "
                             f"of {s.batch}, AdamW lr {s.lr:g}",
               ", ".join(f"step {i}: {losses[i - 1]:.3f}" for i in shown), "last < first", verdict)
    report.notes.append(f"loss curve: {verdict} (first {losses[0]:.4f}, last {losses[-1]:.4f})")


def guarded(report: Report, section: str, config: str, s: Settings, fn: Callable[[], None]) -> None:
    """Run one section; an error becomes a 'failed' row (traceback on stderr) and the rest still runs."""
    log(f"{section}: {config} ...")
    start = time.perf_counter()
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - any failure is reported, the other sections still run
        traceback.print_exc()
        report.failed += 1
        message = " ".join(f"{type(error).__name__}: {error}".split())
        report.add(section, config, f"failed: {message[:300]}", "", "FAILED")
    finally:
        free_memory(s.device)
    log(f"{section}: {config} done in {time.perf_counter() - start:.1f} s")


# ---------------------------------------------------------------------------------------- main


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "n/a on cpu (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOP/s dense bf16 ({name})"
    return None, f"unknown for {name!r} (pass --peak-tflops)"


def settings(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    tiny = args.tiny
    bf16 = {"bf16": True, "fp32": False, None: device.type == "cuda"}[args.precision]
    flops, source = peak_flops(device, args.peak_tflops)
    compile_ok = not args.no_compile and (device.type == "cuda" or args.compile_on_cpu)
    return Settings(
        device=device, bf16=bf16, tiny=tiny, batch=args.batch or (4 if tiny else 48),
        steps=args.steps or (3 if tiny else 20), warmup=args.warmup if args.warmup is not None else (1 if tiny else 3),
        compile=compile_ok, peak_flops=flops, peak_source=source,
        beam_images=4 if tiny else 64, beam_runs=2 if tiny else 3,
        decode_images=16 if tiny else 512, decode_batch=8 if tiny else 128, decode_passes=1 if tiny else 3,
        # The paper's image size whatever the model: the decode cost is that of the paper's inputs.
        decode_size=model_preset("paper").image_size,
        curve_steps=args.curve_steps, lr=args.lr or (1e-3 if tiny else 1e-4))


def print_table(report: Report) -> None:
    header = ("section", "configuration", "result", "target", "verdict")
    rows = [header, *report.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(cells) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    # Grouped by section in the order of the module docstring, each section's rows in run order.
    order = ["train step", "peak memory", "beam search", "JPEG decode", "decode / step", "loss curve"]
    for row in sorted(report.rows, key=lambda r: order.index(r[0]) if r[0] in order else len(order)):
        print(line(row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="smoke-size model, micro-batch 4, few steps and images")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (20; tiny 3)")
    parser.add_argument("--warmup", type=int, default=None, help="eager warm-up steps (3; tiny 1); compiled +2")
    parser.add_argument("--batch", type=int, default=None, help="training micro-batch (48; tiny 4)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--compile-on-cpu", action="store_true", help="run the compile rows on cpu too (slow)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: detected)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                        help="training precision (default: bf16 autocast on cuda, fp32 on cpu)")
    parser.add_argument("--curve-steps", type=int, default=50, help="steps of the loss curve")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (1e-4; tiny 1e-3)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device (use --device cpu)")
    s = settings(args)
    began = time.perf_counter()
    configs = s.configs()
    where = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "cpu"
    log(f"torch {torch.__version__} on {where}; {'tiny' if s.tiny else 'paper'} model; peak {s.peak_source}")

    report = Report()
    for name, cfg in configs.items():
        for compiled in (False, True):
            label = f"{name}, {'torch.compile' if compiled else 'eager'}, {s.precision}, micro-batch {s.batch}"
            if compiled and not s.compile:
                why = "--no-compile" if args.no_compile else "compile on cpu needs --compile-on-cpu"
                report.add("train step", label, f"skipped ({why})", f"MFU >= {100 * MFU_TARGET:.0f}%", "n/a")
                continue
            guarded(report, "train step", label, s,
                    lambda name=name, cfg=cfg, compiled=compiled: bench_step(name, cfg, compiled, s, report))
    guarded(report, "beam search", "grr, width 3", s, lambda: bench_beam(configs["grr"], s, report))
    guarded(report, "JPEG decode", f"{s.decode_images} synthetic JPEGs", s, lambda: bench_decode(s, report))
    guarded(report, "loss curve", f"grr, {s.curve_steps} steps", s, lambda: bench_curve(configs["grr"], s, report))

    cfg = configs["grr"]
    print(f"\nGPU check: torch {torch.__version__}, device {where}, "
          f"{'tiny (smoke) models' if s.tiny else 'paper models'}: dim {cfg.dim}, layers {cfg.vit_layers}/"
          f"{cfg.unimodal_layers}/{cfg.multimodal_layers}, image {cfg.image_size}/{cfg.patch_size}, context "
          f"{cfg.context_length}, vocab {cfg.vocab_size}; peak {s.peak_source}")
    print("FLOPs per step: torch.utils.flop_counter.FlopCounterMode over one eager forward+loss and one "
          "backward of a micro-batch (matmul, conv, SDPA; optimizer and elementwise ops not counted); "
          "MFU = FLOPs per step / median step time / peak.\n")
    print_table(report)
    print()
    for note in report.notes:
        print(f"- {note}")
    compiled_mfu = {k: v for k, v in report.mfus.items() if k.endswith("compiled")}
    if compiled_mfu:
        verdict = "met" if min(compiled_mfu.values()) >= MFU_TARGET else "MISSED"
        print(f"- target MFU >= {100 * MFU_TARGET:.0f}% with compile: {verdict} ("
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in compiled_mfu.items()) + ")")
    print(f"- {report.failed} section(s) failed; total wall time {time.perf_counter() - began:.0f} s")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
