"""The benchmark stage's parts: the linear probe on hand-made features, and stages/benchmark.py end to
end on the smoke demo's classification set and Karpathy test splits with an untrained checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.checkpoint import save_model
from pipeline.config import build_config
from pipeline.data.demo import generate_demo
from pipeline.data.tokenizer import build_tokenizer
from pipeline.evaluate.probe import linear_probe
from pipeline.model.coca import CoCa

ROOT = Path(__file__).resolve().parents[2]


def test_linear_probe_separates_separable_classes_and_misses_unseen_ones():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:3] * 3

    def points(labels):
        return centres[labels] + 0.3 * torch.randn(len(labels), 8, generator=g)

    train_y, test_y = [0, 1, 2] * 10, [0, 1, 2] * 5
    scores = linear_probe(points(train_y), train_y, points(test_y), test_y)
    assert scores["top1"] == 100.0 and scores["mean_per_class"] == 100.0
    assert (scores["train_images"], scores["test_images"]) == (30, 15)
    # Class 3 has test images only: the probe cannot predict it, so those are misses.
    unseen = linear_probe(points(train_y), train_y, torch.cat([points(test_y), centres[:1] * 0]), test_y + [3])
    assert unseen["top1"] == pytest.approx(100 * 15 / 16)
    with pytest.raises(ValueError, match="2 or more"):
        linear_probe(points([0, 0]), [0, 0], points([0]), [0])


def _checkpoint(root: Path, demo: Path) -> Path:
    cfg = build_config({"preset": "smoke"}).model
    captions = [s["raw"] for i in json.loads((demo / "mscoco/dataset_coco.json").read_text())["images"]
                 for s in i["sentences"]]
    tokenizer = build_tokenizer("train", cfg.vocab_size, captions * 5)
    tokenizer.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    return save_model(root / "final.pt", CoCa(cfg).state_dict(), cfg, tokenizer_dir=root / "tokenizer",
                      mlflow_run_id=None, phase="pretrain", dataset="cc12m", epoch=1, step=1, weights_of="last")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    demo = root / "data/raw/demo"
    generate_demo(build_config({"preset": "smoke"}).data.demo, demo)
    return root, demo, _checkpoint(root, demo)


def _run(root: Path, params: dict, checkpoint: Path) -> subprocess.CompletedProcess:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(ROOT / "stages/benchmark.py"), "pretrain", "--params", "params.yaml",
                           "--checkpoint", str(checkpoint), "--metrics", "metrics/benchmark.json"],
                          cwd=root, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a stage process: about 15 s
def test_benchmark_stage_scores_every_benchmark(smoke):
    root, demo, checkpoint = smoke
    done = _run(root, {"preset": "smoke", "benchmark": {"karpathy_max_images": 3}}, checkpoint)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((root / "metrics/benchmark.json").read_text())
    cfg = build_config({"preset": "smoke"}).data.demo
    assert metrics["zeroshot/images"] == cfg.classify_classes * cfg.classify_images_per_class
    assert metrics["zeroshot/classes"] == cfg.classify_classes and metrics["zeroshot/templates"] == 7
    assert metrics["probe/train_images"] + metrics["probe/test_images"] == metrics["zeroshot/images"]
    assert metrics["karpathy_mscoco/images"] == 3 and metrics["karpathy_mscoco/captions"] == 3 * cfg.captions_per_image
    assert metrics["karpathy_flickr30k/images"] == min(3, cfg.flickr30k_test_images)
    for key in ("zeroshot/top1", "zeroshot/top5", "zeroshot/mean_per_class", "probe/top1",
                "karpathy_mscoco/i2t_r1", "karpathy_flickr30k/t2i_r10"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["zeroshot/top5"] == 100.0  # 4 classes: top-5 holds every class
    assert {"karpathy_mscoco/bleu4", "karpathy_mscoco/cider"} <= set(metrics)


def test_benchmark_stage_without_imagenet_says_where_to_get_it(smoke):
    root, _, checkpoint = smoke
    done = _run(root, {"preset": "paper"}, checkpoint)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "data.sources.imagenet_val" in line and "image-net.org" in line
