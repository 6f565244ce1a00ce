"""Two gloo processes give the one-process CoCa objective and gradients on the concatenated batch, with
either contrastive loss (softmax, SigLIP's sigmoid): the contrastive term over the gathered global batch and the caption term weighted by each process's
share of the global caption tokens (the ranks hold captions of different lengths)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import model_preset
from pipeline.model.coca import CoCa
from pipeline.model.losses import CoCaLoss

pytestmark = pytest.mark.slow

WORLD = 2
PER_RANK = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(tmp: Path, contrastive: str):
    """Same seeded model and batch for the reference and for every rank."""
    cfg = model_preset("smoke")
    torch.manual_seed(0)
    model = CoCa(cfg, contrastive_loss=contrastive).double()
    batch = torch.load(tmp / "batch.pt")
    return cfg, model, batch


def _loss(cfg, outputs, targets, contrastive, rank=0, world_size=1):
    return CoCaLoss(2.0, 1.0, cfg.tokens, rank=rank, world_size=world_size, contrastive=contrastive)(outputs, targets)


def _worker(rank: int, port: int, tmp: str, contrastive: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cfg, model, (images, seq) = _setup(Path(tmp), contrastive)
        ddp = DistributedDataParallel(model)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        outputs = ddp(images[rows], seq[rows, :-1])
        loss = _loss(cfg, outputs, seq[rows, 1:], contrastive, rank, WORLD)
        loss["loss"].backward()  # DDP averages the gradients over the ranks
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        caption = loss["caption_share"].clone()
        dist.all_reduce(caption)  # the shares add up to the global per-token mean
        torch.save({"contrastive": loss["contrastive_loss"], "caption": caption, "grads": grads},
                   Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("contrastive", ["softmax", "sigmoid"])
def test_two_process_objective_and_gradients_equal_one_process(tmp_path, sequences, contrastive):
    cfg = model_preset("smoke")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * PER_RANK, 3, 32, 32, dtype=torch.float64, generator=g)
    seq = sequences(cfg, [1, 4, 8, 2, 6, 3], seed=5)
    torch.save((images, seq), tmp_path / "batch.pt")

    mp.spawn(_worker, args=(_free_port(), str(tmp_path), contrastive), nprocs=WORLD, join=True)

    _, model, _ = _setup(tmp_path, contrastive)
    reference = _loss(cfg, model(images, seq[:, :-1]), seq[:, 1:], contrastive)
    reference["loss"].backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in ref_grads.values())
    assert ("logit_bias" in ref_grads) == (contrastive == "sigmoid")
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["contrastive"], reference["contrastive_loss"], rtol=1e-12, atol=0)
        assert torch.allclose(result["caption"], reference["caption_share"], rtol=1e-12, atol=0)
        assert set(result["grads"]) == set(ref_grads)
        for name, expected in ref_grads.items():
            assert torch.allclose(result["grads"][name], expected, rtol=1e-9, atol=1e-12), name
