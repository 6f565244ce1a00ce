"""DVC stage `finetune@<dataset>`: fine-tune the pre-trained CoCa on MSCOCO, ROCO or Flickr30K
(finetune: early stopping with the paper's soft reset).

Run under torchrun, one process per device (gloo on CPU, NCCL on GPU):

    torchrun --standalone --nproc_per_node=N stages/finetune.py <dataset> <the paths of dvc.yaml's finetune cmd>

(started as `python stages/finetune.py ...`, it relaunches itself that way with N =
train.nproc_per_node). A killed run restarted with the same command resumes from --state.
Outputs: --out/final.pt (the best epoch's weights) and --out/best.pt, --metrics, --curve.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.config import stage_config  # noqa: E402
from pipeline.train.launch import relaunch_under_torchrun  # noqa: E402
from pipeline.names import FINETUNE_DATASETS  # noqa: E402
from pipeline.train.loop import NonFiniteLoss, RunSpec, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=FINETUNE_DATASETS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--init", required=True, help="the pre-trained checkpoint")
    parser.add_argument("--train", required=True, help="training shards (with manifest.json)")
    parser.add_argument("--val", required=True, help="validation shards")
    parser.add_argument("--tokenizer", required=True, help="saved inside the output checkpoints")
    parser.add_argument("--out", required=True, help="folder for final.pt and best.pt")
    parser.add_argument("--state", required=True, help="resumable state (not a DVC output)")
    parser.add_argument("--metrics", required=True, help="final validation metrics (JSON)")
    parser.add_argument("--curve", required=True, help="validation curve (TSV)")
    args = parser.parse_args()

    cfg = stage_config(args.params)
    relaunch_under_torchrun(cfg.train.nproc_per_node)
    spec = RunSpec(phase="finetune", dataset=args.dataset, train_shards=Path(args.train), val_shards=Path(args.val),
                   out_dir=Path(args.out), state_dir=Path(args.state), metrics_json=Path(args.metrics),
                   val_tsv=Path(args.curve), tokenizer=Path(args.tokenizer), init=Path(args.init), repo=Path.cwd())
    try:
        train(cfg, spec)
    except NonFiniteLoss as e:
        sys.exit(f"finetune {args.dataset} stopped: {e}")


if __name__ == "__main__":
    main()
