"""DVC stage `evaluate@<run>`: captioning scores and retrieval recall of a trained checkpoint.

Generates captions (beam search) for the validation images, scores BLEU-4 and CIDEr against all
references, computes image<->text recall@1/5/10, and adds them (`eval/...`) to the checkpoint's own
MLflow run, beside a Markdown sample of generated captions.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.config import load_config  # noqa: E402
from pipeline.evaluate.evaluation import evaluate, log_to_run, read_validation_set, samples_markdown  # noqa: E402
from pipeline.evaluate.inference import load_checkpoint  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.tracking import repo_root, tracking_uri  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="what is evaluated, e.g. pretrain or mscoco")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--val", required=True, help="validation shards")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--samples", required=True, help="Markdown file of generated captions")
    args = parser.parse_args()

    cfg = load_config(args.params).evaluate
    loaded = load_checkpoint(args.checkpoint)
    val = read_validation_set(args.val, cfg.max_images)
    metrics, shown = evaluate(loaded, val, cfg.num_beams, cfg.batch_size, cfg.samples_to_show)
    write_json(args.metrics, metrics)
    samples = Path(args.samples)
    samples.parent.mkdir(parents=True, exist_ok=True)
    samples.write_text(samples_markdown(f"{args.name}: generated captions (beam {cfg.num_beams})", shown))
    print(f"{args.name}: {metrics}")

    run_id = loaded.checkpoint.get("mlflow_run_id")
    if run_id:
        log_to_run(tracking_uri(repo_root()), run_id, metrics, samples)


if __name__ == "__main__":
    main()
