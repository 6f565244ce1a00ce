"""DVC stage `evaluate@<run>`: captioning scores and retrieval recall of a trained checkpoint.

Generates captions (beam search) for the validation images, scores BLEU-4 and CIDEr against all
references, computes image<->text recall@1/5/10, and adds them (`eval/...`) to the checkpoint's own
MLflow run, beside a Markdown sample of generated captions. Runs on `train.device` (the GPU when
there is one). The joint fine-tune is evaluated on each of its sets (`evaluate@joint-<dataset>`): its
run gets `eval/<dataset>/...`, so the three evaluations sit side by side.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.loader import Manifest  # noqa: E402
from pipeline.evaluate.evaluation import evaluate, read_validation_set  # noqa: E402
from pipeline.evaluate.inference import CheckpointError, load_checkpoint, pick_device  # noqa: E402
from pipeline.evaluate.samples import samples_markdown  # noqa: E402
from pipeline.io import write_json, write_text  # noqa: E402
from pipeline.names import JOINT  # noqa: E402
from pipeline.tracking import attach, repo_root  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="what is evaluated, e.g. pretrain or mscoco")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--val", required=True, help="validation shards")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--samples", required=True, help="Markdown file of generated captions")
    args = parser.parse_args()

    cfg = load_config(args.params)
    device = pick_device(cfg.train.device)
    loaded = load_checkpoint(args.checkpoint, device=device)
    print(f"{args.name}: {loaded.describe()}", flush=True)
    shards_mode = Manifest.load(args.val).resize_mode
    if shards_mode != loaded.checkpoint.resize_mode:
        raise CheckpointError(f"{args.checkpoint}: trained on images made square with resize mode "
                              f"{loaded.checkpoint.resize_mode!r}, but {args.val} was made with {shards_mode!r}: reshard")
    val = read_validation_set(args.val, cfg.evaluate.max_images, loaded.checkpoint.config.vocab_size)
    metrics, shown = evaluate(loaded, val, cfg.evaluate.num_beams, cfg.evaluate.batch_size,
                              cfg.evaluate.samples_to_show, cfg.evaluate.generation())
    write_text(args.samples, samples_markdown(f"{args.name}: generated captions ({cfg.evaluate.describe()})", shown))
    write_json(args.metrics, metrics)
    tracker = attach(loaded.checkpoint.meta.get("mlflow_run_id"), root=repo_root(), metrics_json=None)
    if loaded.checkpoint.meta.get("dataset") == JOINT:  # one of the joint model's sets: eval/<dataset>/...
        dataset = json.loads((Path(args.val) / "manifest.json").read_text())["dataset"]
        tracker.log_eval({f"{dataset}/{k}": v for k, v in metrics.items()})
    else:
        tracker.log_eval(metrics)
    tracker.log_artifact(args.samples, "eval")
    tracker.finish()
    print(f"{args.name} on {device.type}: {metrics}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
