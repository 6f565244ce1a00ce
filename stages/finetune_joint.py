"""DVC stage `finetune_joint`: fine-tune the pre-trained CoCa on MSCOCO, ROCO and Flickr30K together,
each micro-batch drawn from one set with joint.sampling's weights (sqrt: CROME's balancing;
pipeline/data/mixture.py), validated on each set's validation split, with finetune's schedule, losses
and early stopping (on the mean of the sets' validation CoCa losses) for joint.epochs epochs at most.

Run under torchrun, one process per device (gloo on CPU, NCCL on GPU):

    torchrun --standalone --nproc_per_node=N stages/finetune_joint.py <the paths of dvc.yaml's finetune_joint cmd>

(started as `python stages/finetune_joint.py ...`, it relaunches itself that way with N =
train.nproc_per_node). A killed run restarted with the same command resumes from --state.
Outputs: --out/final.pt (the best epoch's weights) and --out/best.pt, --metrics, --curve.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.names import FINETUNE_DATASETS, JOINT  # noqa: E402
from pipeline.train.launch import relaunch_under_torchrun  # noqa: E402
from pipeline.train.loop import NonFiniteLoss, train  # noqa: E402
from pipeline.train.state import RunSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--init", required=True, help="the pre-trained checkpoint")
    RunSpec.add_arguments(parser, mixed=True)
    args = parser.parse_args()

    cfg = load_config(args.params)
    spec = RunSpec.mixed_from_args(args, JOINT, FINETUNE_DATASETS, init=args.init)
    spec.check_inputs()  # before torchrun: a missing input is one line, not one traceback per process
    relaunch_under_torchrun(cfg.train.nproc_per_node)
    try:
        train(cfg, spec)
    except NonFiniteLoss as e:
        sys.exit(f"finetune {JOINT} stopped: {e}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
