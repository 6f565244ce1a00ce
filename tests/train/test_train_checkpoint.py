import random

import numpy as np
import torch

from pipeline.train.checkpoint import load, rng_state, save_atomic, set_rng_state


def test_atomic_save_loads_with_weights_only(tmp_path):
    path = tmp_path / "state/last.pt"
    obj = {"model": {"w": torch.arange(4.0)}, "train": {"epoch": 1, "history": [{"kind": "epoch", "x": 0.5}]},
           "rng": [rng_state()], "betas": (0.9, 0.999), "none": None}
    save_atomic(obj, path)
    save_atomic({"step": 3}, tmp_path / "state/last.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.json", "last.pt"]  # no temporary left
    back = load(path)
    assert torch.equal(back["model"]["w"], obj["model"]["w"]) and back["train"] == obj["train"]


def test_rng_states_round_trip(tmp_path):
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    save_atomic({"rng": state}, tmp_path / "rng.pt")
    random.random(), np.random.rand(), torch.rand(3)
    set_rng_state(load(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
