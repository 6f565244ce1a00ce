"""The joint fine-tune's mixture loader: sampling weights, determinism, exact resume, DDP counts."""

import math
from collections import Counter

import pytest
import torch
from support.trainkit import write_split

from pipeline.data.loader import TrainLoader
from pipeline.data.mixture import MixtureLoader, mixture_weights

SIZES = {"mscoco": 48, "roco": 16, "flickr30k": 30}  # samples of each tiny training split


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    for seed, (name, n) in enumerate(SIZES.items()):
        write_split(root / name, name, "train", n, samples_per_shard=8, seed=seed)
    return {name: root / name for name in SIZES}


def mixture(sets, sampling="sqrt", *, rank=0, world_size=1, micro_batch_size=4, grad_accum_steps=2, seed=0,
            num_workers=0, max_steps_per_epoch=0) -> MixtureLoader:
    loaders = {name: TrainLoader(path, micro_batch_size=micro_batch_size, grad_accum_steps=1, rank=rank,
                                 world_size=world_size, streams=2, num_workers=num_workers, shuffle_buffer=8,
                                 seed=seed) for name, path in sets.items()}
    return MixtureLoader(loaders, sampling=sampling, grad_accum_steps=grad_accum_steps, seed=seed,
                         max_steps_per_epoch=max_steps_per_epoch)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x.pixels, y.pixels) and torch.equal(x.text, y.text)
                                    for x, y in zip(a, b))


def test_the_weights_of_each_sampling():
    sizes = {"a": 100, "b": 400, "c": 1600}
    assert mixture_weights(sizes, "proportional") == pytest.approx({"a": 1 / 21, "b": 4 / 21, "c": 16 / 21})
    assert mixture_weights(sizes, "sqrt") == pytest.approx({"a": 10 / 70, "b": 20 / 70, "c": 40 / 70})
    assert mixture_weights(sizes, "uniform") == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    with pytest.raises(ValueError, match=r"key 'joint.sampling': value 'square' is not allowed; allowed: sqrt, "):
        mixture_weights(sizes, "square")


@pytest.mark.parametrize("sampling", ["sqrt", "proportional", "uniform"])
def test_each_dataset_is_drawn_as_often_as_its_weight_says(sets, sampling):
    mix = mixture(sets, sampling)
    drawn = Counter(name for epoch in range(400) for name in mix.sequence(epoch))
    n = sum(drawn.values())
    assert n == 400 * mix.steps_in_epoch(0) * 2 > 8000
    total = {"sqrt": sum(math.sqrt(s) for s in SIZES.values()), "proportional": sum(SIZES.values()),
             "uniform": len(SIZES)}[sampling]
    for name, size in SIZES.items():
        p = {"sqrt": math.sqrt(size), "proportional": size, "uniform": 1}[sampling] / total
        sd = math.sqrt(n * p * (1 - p))  # binomial
        assert abs(drawn[name] - n * p) < 4 * sd, (name, drawn[name], n * p, sd)


def test_an_epoch_is_every_sample_once_over_the_global_batch(sets):
    mix = mixture(sets)
    assert mix.steps_in_epoch(0) == sum(SIZES.values()) // (4 * 2)  # 94 samples, global batch 8: 11 steps
    batches = list(mix.iter_epoch(0))
    assert len(batches) == 11 * 2 and all(len(b) == 4 for b in batches)
    assert mixture(sets, max_steps_per_epoch=3).steps_in_epoch(0) == 3


def test_deterministic_from_seed_and_epoch(sets):
    assert same(list(mixture(sets).iter_epoch(0)), list(mixture(sets).iter_epoch(0)))
    assert mixture(sets).sequence(0) != mixture(sets).sequence(1)
    assert mixture(sets).sequence(0) != mixture(sets, seed=1).sequence(0)
    # Two epochs in a row: the datasets drawn more than their size start their next pass.
    two = mixture(sets)
    run = list(two.iter_epoch(0)) + list(two.iter_epoch(1))
    again = mixture(sets)
    assert same(run, list(again.iter_epoch(0)) + list(again.iter_epoch(1)))


@pytest.mark.parametrize("stop", [5, 22 + 7])  # inside the first epoch; inside the second
def test_exact_resume_mid_epoch(sets, stop):
    full = mixture(sets)
    reference = list(full.iter_epoch(0)) + list(full.iter_epoch(1))
    first = mixture(sets)
    head = []
    for epoch in (0, 1):
        batches = first.iter_epoch(epoch)
        for batch in batches:
            head.append(batch)
            if len(head) == stop:
                break
        batches.close()
        if len(head) == stop:
            break
    state = first.state_dict()
    resumed = mixture(sets, num_workers=1)  # the position, not the worker layout, decides what comes next
    resumed.load_state_dict(state)
    epoch = state["epoch"]
    tail = list(resumed.iter_epoch(epoch)) + (list(resumed.iter_epoch(1)) if epoch == 0 else [])
    assert same(reference, head + tail)


def test_every_process_gets_the_same_number_of_micro_batches_from_the_same_dataset(sets):
    one = mixture(sets, micro_batch_size=4)
    ranks = [mixture(sets, micro_batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].sequence(0) == ranks[1].sequence(0)  # the global micro-batch comes from one dataset
    per_rank = [list(r.iter_epoch(0)) for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == ranks[0].steps_in_epoch(0) * 2
    # Two processes of micro-batch 2 see what one process of micro-batch 4 sees (TrainLoader's streams).
    for b, b0, b1 in zip(list(one.iter_epoch(0)), *per_rank):
        assert torch.equal(b.pixels, torch.cat([b0.pixels, b1.pixels]))


def test_resume_refuses_other_sets_or_sampling(sets):
    state = mixture(sets).state_dict()
    with pytest.raises(ValueError, match="same sets and sampling"):
        mixture(sets, "uniform").load_state_dict(state)
    with pytest.raises(ValueError, match="same sets and sampling"):
        mixture({k: v for k, v in sets.items() if k != "roco"}).load_state_dict(state)
