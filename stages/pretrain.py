"""DVC stage `pretrain`: pre-train CoCa (pretrain, model.encoder) on CC12M's training shards.

Run under torchrun, one process per device (gloo on CPU, NCCL on GPU):

    torchrun --standalone --nproc_per_node=N stages/pretrain.py <the paths of dvc.yaml's pretrain cmd>

(started as `python stages/pretrain.py`, it relaunches itself that way with N = train.nproc_per_node).
A killed run restarted with the same command resumes from its last checkpoint in --state.
Outputs: --out/final.pt and --out/best.pt, --metrics (final validation), --curve (validations).
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.names import PRETRAIN_DATASET  # noqa: E402
from pipeline.train.launch import relaunch_under_torchrun  # noqa: E402
from pipeline.train.loop import NonFiniteLoss, train  # noqa: E402
from pipeline.train.state import RunSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    RunSpec.add_arguments(parser)
    args = parser.parse_args()

    cfg = load_config(args.params)
    spec = RunSpec.from_args(args, phase="pretrain", dataset=PRETRAIN_DATASET)
    spec.check_inputs()  # before torchrun: a missing input is one line, not one traceback per process
    relaunch_under_torchrun(cfg.train.nproc_per_node)
    try:
        train(cfg, spec)
    except NonFiniteLoss as e:
        sys.exit(f"pretrain stopped: {e}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
