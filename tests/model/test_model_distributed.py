"""Two gloo processes give the one-process contrastive loss and gradients on the concatenated batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pipeline.model import CoCa, CoCaLoss, ModelConfig

WORLD = 2
PER_RANK = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(tmp: Path):
    """Same seeded model and batch for the reference and for every rank."""
    cfg = ModelConfig.smoke()
    torch.manual_seed(0)
    model = CoCa(cfg).double()
    batch = torch.load(tmp / "batch.pt")
    return cfg, model, batch


def _loss(cfg, outputs, targets, rank=0, world_size=1):
    return CoCaLoss.from_config(cfg, 2.0, 1.0, rank=rank, world_size=world_size)(outputs, targets)


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cfg, model, (images, seq) = _setup(Path(tmp))
        # The contrastive loss does not use the multimodal decoder: tell DDP so.
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        outputs = ddp(images[rows], seq[rows, :-1])
        loss = _loss(cfg, outputs, seq[rows, 1:], rank, WORLD)
        loss["contrastive_loss"].backward()  # DDP averages the gradients over the ranks
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": loss["contrastive_loss"].detach(), "grads": grads},
                   Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_contrastive_loss_and_gradients_equal_one_process(tmp_path, sequences):
    cfg = ModelConfig.smoke()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * PER_RANK, 3, 32, 32, dtype=torch.float64, generator=g)
    seq = sequences(cfg, [1, 4, 8, 2, 6, 3], seed=5)
    torch.save((images, seq), tmp_path / "batch.pt")

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    _, model, _ = _setup(tmp_path)
    reference = _loss(cfg, model(images, seq[:, :-1]), seq[:, 1:])["contrastive_loss"]
    reference.backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "logit_scale" in ref_grads and "visual.patch_embed.weight" in ref_grads
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["loss"], reference.detach(), rtol=1e-12, atol=0)
        # DDP may hand parameters that the contrastive loss does not reach (the multimodal decoder)
        # a zero gradient instead of None: compare with missing gradients as zeros.
        for name, param in model.named_parameters():
            ours = result["grads"].get(name, torch.zeros_like(param))
            expected = ref_grads.get(name, torch.zeros_like(param))
            assert torch.allclose(ours, expected, rtol=1e-9, atol=1e-12), name
        assert set(ref_grads) <= set(result["grads"])
