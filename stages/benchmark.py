"""DVC stage `benchmark@<run>`: the field's standard benchmarks of a trained checkpoint.

- zero-shot classification on `data.sources.imagenet_val` (ImageNet-1k validation; the demo's
  shapes x colours set) with the prompt templates of `benchmark.templates`: top-1, top-5, mean per class;
- the frozen-feature linear probe on the same images (a per-class train/test split);
- image<->text recall@1/5/10, BLEU-4 and CIDEr on Karpathy's MSCOCO 5K and Flickr30K 1K test splits,
  captions generated as `evaluate` says (beam search by default).
The scores go to the checkpoint's own MLflow run (`eval/zeroshot/top1`, `eval/probe/top1`,
`eval/karpathy_mscoco/i2t_r1`, ...) and to a metrics JSON. Runs on `train.device`.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.classify import read_classification_set, split_per_class  # noqa: E402
from pipeline.data.sources import read_karpathy_split  # noqa: E402
from pipeline.evaluate.inference import load_checkpoint, pick_device  # noqa: E402
from pipeline.evaluate.karpathy import evaluate_karpathy, first_images  # noqa: E402
from pipeline.evaluate.probe import linear_probe  # noqa: E402
from pipeline.evaluate.zeroshot import image_embeddings, read_templates, templates_path, zeroshot_classify  # noqa: E402
from pipeline.tracking import attach, repo_root  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="what is benchmarked, e.g. pretrain or mscoco")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()

    cfg = load_config(args.params)
    sources, bench = cfg.data.sources, cfg.benchmark
    templates = read_templates(templates_path(bench.templates))  # every input is checked before the model loads
    data = read_classification_set(sources.imagenet_val, sources.imagenet_val_labels, sources.imagenet_classes)
    if bench.max_images and bench.max_images < len(data.paths):  # evenly spaced: every class keeps a share
        data = data.subset([i * len(data.paths) // bench.max_images for i in range(bench.max_images)])
    karpathy = {"mscoco": read_karpathy_split(sources.coco_karpathy_json, sources.coco_images),
                "flickr30k": read_karpathy_split(sources.flickr30k_json, sources.flickr30k_images)}

    device = pick_device(cfg.train.device)
    loaded = load_checkpoint(args.checkpoint, device=device)
    print(f"{args.name}: {loaded.describe()}", flush=True)
    metrics = {}
    embeds = image_embeddings(loaded, data.paths, bench.batch_size, "classification images")
    scores = zeroshot_classify(loaded, data, templates, image_embeds=embeds)
    metrics.update({f"zeroshot/{k}": v for k, v in scores.items()})
    train, test = split_per_class(data.labels, bench.probe_test_fraction)
    scores = linear_probe(embeds[train], [data.labels[i] for i in train], embeds[test], [data.labels[i] for i in test],
                          bench.probe_c, bench.probe_max_iter)
    metrics.update({f"probe/{k}": v for k, v in scores.items()})
    for dataset, split in karpathy.items():
        scores = evaluate_karpathy(loaded, first_images(split, bench.karpathy_max_images), cfg.evaluate.generation(),
                                   bench.batch_size, f"{dataset} Karpathy test")
        metrics.update({f"karpathy_{dataset}/{k}": v for k, v in scores.items()})

    tracker = attach(loaded.checkpoint.meta.get("mlflow_run_id"), root=repo_root(), metrics_json=Path(args.metrics))
    tracker.log_eval(metrics)
    tracker.finish()
    print(f"{args.name} on {device.type}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
