"""DVC stage `finetune@<dataset>`: fine-tune the pre-trained CoCa on MSCOCO, ROCO or Flickr30K
(finetune: early stopping with the paper's soft reset).

Run under torchrun, one process per device (gloo on CPU, NCCL on GPU):

    torchrun --standalone --nproc_per_node=N stages/finetune.py <dataset> [paths]

(started as `python stages/finetune.py ...`, it relaunches itself that way with N =
train.nproc_per_node). A killed run restarted with the same command resumes from --state.
Outputs: --out/final.pt (the best epoch's weights) and --out/best.pt, --metrics, --curve.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.config import load_config  # noqa: E402
from pipeline.train.launch import relaunch_under_torchrun  # noqa: E402
from pipeline.train.loop import NonFiniteLoss, RunSpec, train  # noqa: E402

FINETUNE_DATASETS = ("mscoco", "flickr30k", "roco")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=FINETUNE_DATASETS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--init", default="data/models/pretrain/final.pt", help="the pre-trained checkpoint")
    parser.add_argument("--train", help="training shards (default data/shards/<dataset>/train)")
    parser.add_argument("--val", help="validation shards (default data/shards/<dataset>/val)")
    parser.add_argument("--tokenizer", default="data/tokenizer", help="logged to MLflow with the model")
    parser.add_argument("--out", help="final.pt and best.pt (default data/models/finetune/<dataset>)")
    parser.add_argument("--state", help="resumable state (default data/train_state/finetune-<dataset>)")
    parser.add_argument("--metrics", help="default metrics/finetune-<dataset>.json")
    parser.add_argument("--curve", help="default metrics/finetune-<dataset>_val.tsv")
    args = parser.parse_args()
    ds = args.dataset

    cfg = load_config(args.params)
    relaunch_under_torchrun(cfg.train.nproc_per_node)
    spec = RunSpec(
        phase="finetune", dataset=ds,
        train_shards=Path(args.train or f"data/shards/{ds}/train"),
        val_shards=Path(args.val or f"data/shards/{ds}/val"),
        out_dir=Path(args.out or f"data/models/finetune/{ds}"),
        state_dir=Path(args.state or f"data/train_state/finetune-{ds}"),
        metrics_json=Path(args.metrics or f"metrics/finetune-{ds}.json"),
        val_tsv=Path(args.curve or f"metrics/finetune-{ds}_val.tsv"),
        tokenizer=Path(args.tokenizer), init=Path(args.init), repo=Path.cwd())
    try:
        train(cfg, spec)
    except NonFiniteLoss as e:
        sys.exit(f"finetune {ds} stopped: {e}")


if __name__ == "__main__":
    main()
