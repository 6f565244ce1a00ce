"""Exact resume's parts: the Checkpointer restores every registered part, RNG states round-trip,
and the fingerprint covers exactly what a run's result depends on."""

import random

import numpy as np
import pytest
import torch

from pipeline.train.resume import Checkpointer, RNGState, fingerprint, load, save


class Counter:
    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_checkpointer_restores_every_registered_part(tmp_path):
    model = torch.nn.Linear(3, 2)
    shared, mine = Counter(7), Counter(3)
    ckpt = Checkpointer(tmp_path / "state", "fp-1", is_main=True, rank=0,
                        shared={"model": model, "train": shared}, per_process={"loader": mine})
    assert ckpt.load(torch.device("cpu")) == "none"
    ckpt.save()
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [".lock", "last.json", "last.pt"]  # no temporary
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.nn.init.zeros_(model.weight)
    shared.value, mine.value = 0, 0
    assert ckpt.load(torch.device("cpu")) == "resumed"
    assert shared.value == 7 and mine.value == 3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    # a state of another fingerprint is not loaded, and not deleted either
    ckpt.release()
    other = Checkpointer(tmp_path / "state", "fp-2", is_main=True, rank=0, shared={"train": Counter()},
                         per_process={})
    assert other.load(torch.device("cpu")) == "other" and ckpt.last.exists()


def test_rng_states_round_trip(tmp_path):
    rng = RNGState()
    state = rng.state_dict()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    save({"rng": state}, tmp_path / "rng.pt")
    random.random(), np.random.rand(), torch.rand(3)
    rng.load_state_dict(load(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_fingerprint_covers_the_sections_the_world_size_and_the_inputs(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"samples": 10}')
    sections = {"model": {"dim": 32}, "train": {"seed": 0}, "pretrain": {"lr_max": 1e-3}}
    base = fingerprint(sections, 2, [manifest])
    assert fingerprint(sections, 2, [manifest]) == base
    assert fingerprint({**sections, "pretrain": {"lr_max": 2e-3}}, 2, [manifest]) != base
    assert fingerprint(sections, 1, [manifest]) != base
    manifest.write_text('{"samples": 11}')
    assert fingerprint(sections, 2, [manifest]) != base


@pytest.mark.parametrize("section, key, value", [("finetune", "lr_max", 0.5), ("evaluate", "num_beams", 7),
                                                 ("data.download", "timeout", 99)])
def test_the_trainer_fingerprints_only_its_declared_sections(section, key, value):
    """Editing another stage's section keeps pre-training's fingerprint (what resume compares)."""
    import dataclasses

    from pipeline.config import build_config

    def sections(cfg):
        return {name: dataclasses.asdict(getattr(cfg, name)) for name in ("model", "train", "pretrain")}

    params = {"preset": "smoke"}
    edited: dict = {"preset": "smoke"}
    node = edited
    *parents, last = f"{section}.{key}".split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    assert sections(build_config(params)) == sections(build_config(edited))


def test_a_state_with_non_finite_weights_is_never_written(tmp_path):
    from pipeline.train.resume import NonFiniteLoss

    model = torch.nn.Linear(3, 2)
    ckpt = Checkpointer(tmp_path / "state", "fp", is_main=True, rank=0, shared={"model": model}, per_process={})
    ckpt.save()
    good = load(ckpt.last)["model"]
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteLoss, match=r"non-finite values in model: not saved; .*last good state"):
        ckpt.save()
    with pytest.raises(NonFiniteLoss, match="best state"):
        ckpt.save_best({"model": model.state_dict()})
    assert all(torch.equal(load(ckpt.last)["model"][k], v) for k, v in good.items())
    assert not ckpt.best.exists()


def test_one_run_at_a_time_per_state_directory(tmp_path):
    from pipeline.train.resume import StateLock

    first, second = StateLock(tmp_path / "state"), StateLock(tmp_path / "state")
    first.acquire()
    with pytest.raises(RuntimeError, match=r"state is in use by another run \(pid \d+ on host .+\)"):
        second.acquire(wait_s=0.3)
    first.release()
    second.acquire(wait_s=0.3)
    second.release()
