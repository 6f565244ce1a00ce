"""Helpers of the trainer tests: tiny generated shards in the shard stage's format
written by pipeline/data/shard.py's own writer with pipeline/tokens.py's layout, or the shard stage's
inputs (a download tar, split tables, token arrays), params files, and the pretrain stage run under torchrun.

Images and captions are tied by a class: each class has its own colour pattern and its own caption
words, so that a tiny model can learn something in a few steps.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pipeline.data.shard import write_tar
from pipeline.io import write_json
from pipeline.tokens import TokenLayout

def sample_tokens(rng: np.random.Generator, cls_index: int, context_length: int, vocab_size: int) -> np.ndarray:
    layout = TokenLayout(vocab_size)
    words = layout.first_caption_id + (cls_index * 7 + np.arange(4)) % (vocab_size - 5)
    n = int(rng.integers(2, min(6, layout.max_caption_tokens(context_length)) + 1))
    return np.asarray(layout.sequence(rng.choice(words, size=n).tolist(), context_length)[0], dtype=np.int32)


def sample_image(rng: np.random.Generator, cls_index: int, size: int, height: int | None = None) -> bytes:
    """A JPEG of size x size pixels (size x height if given) in the class's colours."""
    height = height or size
    base = np.array([(cls_index * 53) % 256, (cls_index * 97) % 256, (cls_index * 151) % 256], dtype=np.float32)
    pixels = base + rng.normal(0, 20, size=(height, size, 3))
    pixels[: height // 2, :, cls_index % 3] = 255 - pixels[: height // 2, :, cls_index % 3]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_split(out: Path, dataset: str, split: str, samples: int, *, samples_per_shard: int = 16,
                image_size: int = 32, context_length: int = 16, vocab_size: int = 256, classes: int = 6,
                seed: int = 0, corrupt: tuple[int, ...] = ()) -> dict:
    """Write out/<shard>.tar files and out/manifest.json; samples whose index is in `corrupt` get
    garbage instead of a JPEG (still counted in the manifest, as a corrupted file would be)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = []
    for number, start in enumerate(range(0, samples, samples_per_shard)):
        name = f"shard-{number:05d}-0000.tar"
        count = min(samples_per_shard, samples - start)
        members = []
        for i in range(start, start + count):
            cls_index = int(rng.integers(classes))
            tokens = io.BytesIO()
            np.save(tokens, sample_tokens(rng, cls_index, context_length, vocab_size))
            jpg = b"not a jpeg at all" if i in corrupt else sample_image(rng, cls_index, image_size)
            members.append((f"{dataset}-{split}-{number:05d}-{i:07d}", {
                "jpg": jpg, "tokens.npy": tokens.getvalue(), "txt": f"class {cls_index}".encode(),
                "json": json.dumps({"dataset": dataset, "split": split, "image_id": str(i)}).encode()}))
        write_tar(out / name, members)  # the shard stage's own writer
        shards.append({"file": name, "samples": count})
    manifest = {"dataset": dataset, "split": split, "samples": samples, "shards": shards,
                "image_size": image_size, "context_length": context_length, "skipped": {}}
    write_json(out / "manifest.json", manifest)
    return manifest


def write_download(root: Path, samples: dict[str, int], *, seed: int = 0, classes: int = 6,
                   context_length: int = 16, vocab_size: int = 256, corrupt: tuple[int, ...] = ()) -> None:
    """The shard stage's inputs for `samples[split]` pairs of each split, one image each, as the
    download, split and tokenize stages leave them: root/download/00000.tar (img2dataset's layout,
    JPEGs of varied sizes and aspect ratios), root/splits/<split>.parquet, root/tokens/<split>.npy.
    Images whose number (counted over the splits, in order) is in `corrupt` are cut 16 bytes into
    their pixel data: their header reads, their pixels do not."""
    from pipeline.data.split import PAIR_COLUMNS

    rng = np.random.default_rng(seed)
    members, number = [], 0
    for split, count in samples.items():
        rows, tokens = [], []
        for _ in range(count):
            cls_index, key = int(rng.integers(classes)), f"{number:09d}"
            jpg = sample_image(rng, cls_index, int(rng.integers(24, 72)), int(rng.integers(24, 72)))
            if number in corrupt:
                jpg = jpg[: jpg.index(b"\xff\xda") + 16]  # start of scan (the pixels), + 16 bytes
            members.append((key, {"jpg": jpg,
                                  "txt": f"class {cls_index}".encode()}))
            rows.append(("00000.tar", key, f"https://example.org/{key}.jpg", key, 0, f"class {cls_index}"))
            tokens.append(sample_tokens(rng, cls_index, context_length, vocab_size))
            number += 1
        for folder in ("splits", "tokens"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=PAIR_COLUMNS).to_parquet(root / "splits" / f"{split}.parquet", index=False)
        np.save(root / "tokens" / f"{split}.npy", np.stack(tokens))
    (root / "download").mkdir(parents=True, exist_ok=True)
    write_tar(root / "download/00000.tar", members)


REPO = Path(__file__).resolve().parents[2]

# A run small enough for 2 CPU cores: smoke model, 80 training samples in 5 shards, 2 data streams,
# global batch 8 (micro-batch x processes x 2 accumulation steps), 8 steps per epoch.
TRAIN = {
    "nproc_per_node": 1, "device": "cpu", "precision": "fp32", "micro_batch_size": 4, "grad_accum_steps": 2,
    "num_workers": 0, "data_streams": 2, "shuffle_buffer": 8, "val_batch_size": 8, "log_every_steps": 4,
    "ckpt_every_steps": 0, "threads_per_process": 1, "max_steps_per_epoch": 0,
}
PHASES = {
    "pretrain": {"epochs": 2, "warmup_steps": 2, "lr_max": 1.0e-3, "lr_min": 1.0e-5, "dropout": 0.0},
    "finetune": {"epochs": 12, "lr_max": 1.0e-4, "lr_min": 1.0e-6, "dropout": 0.0,
                 "patience": 9, "soft_reset_after": 3, "lr_levels": 3},
}


def merge(base: dict, over: dict) -> dict:
    from pipeline.config import _deep_merge

    return _deep_merge(base, over)


def params(**train) -> dict:
    """Smoke-preset params with the test run's train section; `pretrain=`/`finetune=` override a phase."""
    phases = {name: merge(PHASES[name], train.pop(name, {})) for name in PHASES}
    return {"preset": "smoke", "train": merge(TRAIN, train), **phases}


def write_params(path: Path, **train) -> Path:
    path.write_text(yaml.safe_dump(params(**train)))
    return path


def build_cfg(**train):
    from pipeline.config import build_config

    return build_config(params(**train))


def pretrain_spec(data: Path, work: Path):
    from pipeline.train.loop import RunSpec

    return RunSpec("pretrain", "cc12m", data / "cc12m/train", data / "cc12m/val", work / "out", work / "state",
                   work / "metrics/pretrain.json", work / "metrics/pretrain_val.tsv", repo=work)


def stage_command(work: Path, data: Path, nproc: int, params: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(REPO / "stages/pretrain.py"), "--params", str(params), "--train", str(data / "cc12m/train"),
            "--val", str(data / "cc12m/val"), "--tokenizer", str(work / "tokenizer"), "--out", str(work / "out"),
            "--state", str(work / "state"),
            "--metrics", str(work / "metrics/pretrain.json"), "--curve", str(work / "metrics/pretrain_val.tsv")]


def stage_env(mlflow_uri: str) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PYTHONWARNINGS": "ignore"}


def run_stage(work: Path, data: Path, nproc: int, params: Path, mlflow_uri: str) -> subprocess.CompletedProcess:
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(stage_command(work, data, nproc, params), cwd=work, env=stage_env(mlflow_uri),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
