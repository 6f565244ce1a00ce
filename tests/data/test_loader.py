import io
import json
import tarfile

import numpy as np
import pytest
import torch
from support.trainkit import write_split

from pipeline.data.loader import PREFETCH_FACTOR, TrainLoader, ValLoader, parse_tokens
from pipeline.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize


def loader(path, **kw) -> TrainLoader:
    args = dict(micro_batch_size=4, grad_accum_steps=2, streams=2, shuffle_buffer=8, seed=0)
    return TrainLoader(path, **{**args, **kw})


def epoch_batches(lo: TrainLoader, epoch: int = 0) -> list:
    return list(lo.iter_epoch(epoch))


def same(a, b) -> bool:
    return all(torch.equal(x.images, y.images) and torch.equal(x.text, y.text) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "train"
    write_split(path, "cc12m", "train", 70, samples_per_shard=16)  # 5 shards, the last one short
    return path


def test_batch_format(split):
    lo = loader(split)
    batches = epoch_batches(lo)
    assert len(batches) == lo.steps_in_epoch(0) * 2
    b = batches[0]
    assert b.images.shape == (4, 3, 32, 32) and b.images.dtype == torch.float32
    assert b.text.shape == b.targets.shape == (4, 16)
    assert (b.text[:, 1:] == b.targets[:, :-1]).all()  # targets = inputs shifted by one
    assert (b.text[:, 0] == 254).all() and (b.text[:, -1] == 255).all()  # BOS first, CLS last input
    # normalisation: back to [0, 1] with the ImageNet statistics
    pixels = b.images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)


def test_reproducible_and_reshuffled_each_epoch(split):
    assert same(epoch_batches(loader(split)), epoch_batches(loader(split)))
    assert not same(epoch_batches(loader(split), 0), epoch_batches(loader(split), 1))
    assert not same(epoch_batches(loader(split)), epoch_batches(loader(split, seed=1)))


def test_same_global_batches_for_any_number_of_processes_and_workers(split):
    one = epoch_batches(loader(split, micro_batch_size=4))
    ranks = [epoch_batches(loader(split, micro_batch_size=2, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)  # every process: the same number of batches
    for b, b0, b1 in zip(one, *ranks):
        assert torch.equal(b.images, torch.cat([b0.images, b1.images]))
        assert torch.equal(b.targets, torch.cat([b0.targets, b1.targets]))
    assert same(one, epoch_batches(loader(split, micro_batch_size=4, num_workers=2)))


def test_exact_restart_mid_epoch(split):
    full = epoch_batches(loader(split, num_workers=2), 1)
    lo = loader(split, num_workers=2)
    it = lo.iter_epoch(1)
    first = [next(it) for _ in range(5)]
    it.close()
    resumed = loader(split, num_workers=2)
    resumed.load_state_dict(lo.state_dict())
    assert same(full, first + list(resumed.iter_epoch(1)))


def test_fewer_shards_than_streams(tmp_path):
    write_split(tmp_path / "s", "roco", "train", 30, samples_per_shard=100)  # one shard, 4 streams
    lo = loader(tmp_path / "s", streams=4)
    batches = epoch_batches(lo)
    assert len(batches) == 2 * lo.steps_in_epoch(0) == 6  # 7 samples per stream, 1 per chunk, 3 steps
    keys = torch.cat([b.images.flatten(1) for b in batches])
    assert len(torch.unique(keys, dim=0)) == len(keys)  # no sample twice


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    write_split(tmp_path / "c", "cc12m", "train", 40, samples_per_shard=10, corrupt=(3, 17))
    lo = loader(tmp_path / "c", shuffle_buffer=1)
    batches = epoch_batches(lo)
    assert len(batches) == 2 * lo.steps_in_epoch(0)
    assert lo.corrupt_total == 2
    val = ValLoader(tmp_path / "c", batch_size=8)
    assert sum(len(b) for b in val) == 38 and val.corrupt == 2


def test_unreadable_tar_is_skipped_and_counted(tmp_path):
    write_split(tmp_path / "t", "cc12m", "train", 40, samples_per_shard=10)
    shard = tmp_path / "t/shard-00001-0000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # truncated in the middle of a member
    val = ValLoader(tmp_path / "t", batch_size=8)
    n = sum(len(b) for b in val)
    assert 30 <= n < 39 and val.corrupt == 40 - n  # every sample the truncation lost, not one per damage
    lo = loader(tmp_path / "t", micro_batch_size=2, shuffle_buffer=1)
    assert len(epoch_batches(lo)) == 2 * lo.steps_in_epoch(0)  # padded: still every batch
    assert lo.corrupt_total >= 40 - n


def _file(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def _directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_shards_are_read_as_webdatasets_own_reader_reads_them(tmp_path):
    """read_shards' own member reader (tarfile's random-access mode) yields exactly the samples that
    webdataset's tar_file_expander + group_by_keys yield, selected members, a truncated tar, a tar
    whose member is cut short and a missing file included."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    from pipeline.data.loader import TRAINING_MEMBERS, read_shards

    write_split(tmp_path / "w", "cc12m", "train", 40, samples_per_shard=10, corrupt=(3,))
    shards = sorted((tmp_path / "w").glob("shard-*.tar"))
    shards[1].write_bytes(shards[1].read_bytes()[:3000])  # cut in a member's data
    shards[2].write_bytes(shards[2].read_bytes()[:-1024])  # its end-of-archive zeros lost
    again = tmp_path / "w/again.tar"  # a directory, a __meta__ member, and the last sample's key again
    with tarfile.open(shards[3]) as source, tarfile.open(again, "w") as tar:
        last = source.getmembers()[-4:]
        tar.addfile(_directory("folder"))
        tar.addfile(_file("__meta__/info.json", b"{}"), io.BytesIO(b"{}"))
        for member in last:
            tar.addfile(member, source.extractfile(member))
    paths = [*shards, again, tmp_path / "w/missing.tar"]

    def webdatasets(select):
        def opened():
            for path in paths:
                if path.exists():
                    with open(path, "rb") as stream:
                        yield {"url": str(path), "stream": stream}
        skip = lambda exn: True
        return list(group_by_keys(tar_file_expander(opened(), handler=skip, select_files=select), handler=skip))

    for members in (None, TRAINING_MEMBERS):
        wanted = None if members is None else tuple(f".{ext}" for ext in members)
        expected = webdatasets(None if wanted is None else (lambda name: name.endswith(wanted)))
        errors = [0]
        got = list(read_shards(paths, errors, members=members))
        assert got == expected and errors[0] >= 2  # (the cut tar and the missing file at least)
        per_tar = [sum(s["__url__"] == str(path) for s in got) for path in shards]
        assert per_tar[0] == per_tar[3] == 10 and per_tar[1] < 10  # (the cut member and all after it lost)
        assert set(got[0]) == ({"__key__", "__url__", "jpg", "tokens.npy"} if members else
                               {"__key__", "__url__", "jpg", "tokens.npy", "txt", "json"})


@pytest.mark.parametrize("streams, workers", [(1, 1), (4, 2)])
def test_worker_buffers_are_never_overwritten_while_in_use(split, streams, workers):
    """Workers stack into a ring of reused shared-memory blocks: batches a slow consumer keeps are
    still the in-process loader's (one chunk per micro-batch, and two per worker)."""
    import time

    kept = []
    for batch in loader(split, streams=streams, num_workers=workers).iter_epoch(0):
        kept.append(batch)
        time.sleep(0.02)  # the workers run ahead, as far as the DataLoader lets them
    chunks_per_step = streams // workers
    assert len(kept) * chunks_per_step > 2 * (PREFETCH_FACTOR + chunks_per_step + 1)  # each ring goes round twice
    assert same(kept, epoch_batches(loader(split, streams=streams)))


def test_workers_send_chunks_without_shared_memory_handles(split, monkeypatch):
    """The rings are allocated before the workers start, so a chunk crosses as its block's number:
    no tensor storage is rebuilt in the main process (each rebuild is a file descriptor passed
    through a socket to the worker's resource-sharer thread), and the batches are still exact."""
    from torch.multiprocessing import reductions

    assert torch.multiprocessing.get_sharing_strategy() == "file_descriptor"  # (Linux's default)
    rebuilt = []  # every storage received is looked up in torch's shared-storage cache first
    real_lookup = reductions.storage_from_cache

    def counting_lookup(cls, key):
        rebuilt.append(key)
        return real_lookup(cls, key)

    monkeypatch.setattr(reductions, "storage_from_cache", counting_lookup)
    batches = list(loader(split, streams=4, num_workers=2).iter_epoch(0))
    assert len(batches) * 2 > 2 * (PREFETCH_FACTOR + 2 + 1)  # 2 chunks per worker a batch: each ring goes round twice
    assert rebuilt == []
    assert same(batches, epoch_batches(loader(split, streams=4)))


def test_batches_are_channels_last_and_normalised_contiguous(split):
    """Decoders lay images out HWC, so the loaders' uint8 batches are channels-last (their copies are
    memcpys); the model's float input from `normalize` is contiguous and equal either way."""
    for workers in (0, 2):
        batch = next(iter(loader(split, streams=2, num_workers=workers).iter_epoch(0)))
        assert batch.pixels.is_contiguous(memory_format=torch.channels_last)
        assert batch.images.is_contiguous()
        assert torch.equal(batch.images, normalize(batch.pixels.contiguous()))
    val = next(iter(ValLoader(split, batch_size=4)))
    assert val.pixels.is_contiguous(memory_format=torch.channels_last)


def test_token_files_are_parsed_by_their_fixed_header_or_by_numpy():
    tokens = np.arange(17, dtype=np.int32)
    for array in (tokens, tokens.astype(np.int64), tokens.astype(">i4")):  # the shard stage's, and others
        buffer = io.BytesIO()
        np.save(buffer, array)
        parsed = parse_tokens(buffer.getvalue(), context_length=16)
        assert parsed.tolist() == tokens.tolist()


def replace_tokens(path, sample: str, change) -> None:
    """Rewrite one sample's token array in a shard (the sample's key ends with `sample`)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            if m.name.endswith(f"{sample}.tokens.npy"):
                buffer = io.BytesIO()
                np.save(buffer, change(np.load(io.BytesIO(data))))
                data = buffer.getvalue()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def test_bad_token_array_is_corrupt(tmp_path):
    write_split(tmp_path / "k", "cc12m", "val", 8, samples_per_shard=8)
    replace_tokens(tmp_path / "k/shard-00000-0000.tar", "0000002", lambda tokens: np.zeros(5, dtype=np.int32))
    val = ValLoader(tmp_path / "k", batch_size=8)
    assert sum(len(b) for b in val) == 7 and val.corrupt == 1


def test_validation_sees_every_sample_once_whatever_the_processes(tmp_path):
    write_split(tmp_path / "v", "cc12m", "val", 50, samples_per_shard=16)
    one = torch.cat([b.images for b in ValLoader(tmp_path / "v", batch_size=8)])
    two = [torch.cat([b.images for b in ValLoader(tmp_path / "v", batch_size=8, rank=r, world_size=2, num_workers=2)])
           for r in range(2)]
    assert len(one) == 50 and sum(len(t) for t in two) == 50
    assert torch.equal(torch.sort(one.flatten(1), dim=0).values, torch.sort(torch.cat(two).flatten(1), dim=0).values)


def test_invalid_stream_counts(split):
    with pytest.raises(ValueError, match="data_streams"):
        loader(split, streams=3, world_size=2)
    with pytest.raises(ValueError, match="micro_batch_size"):
        loader(split, micro_batch_size=3, streams=2)
    with pytest.raises(ValueError, match="no optimiser step"):
        loader(split, micro_batch_size=64).steps_in_epoch(0)


def test_token_ids_outside_the_vocabulary_are_corrupt(tmp_path):
    """Ids at or above the model's vocabulary once reached the embedding and crashed training."""
    write_split(tmp_path / "v", "cc12m", "val", 8, samples_per_shard=8, vocab_size=256)

    def past_the_vocabulary(tokens):
        tokens[2] = 256
        return tokens

    replace_tokens(tmp_path / "v/shard-00000-0000.tar", "0000005", past_the_vocabulary)
    assert sum(len(b) for b in ValLoader(tmp_path / "v", batch_size=8)) == 8  # without a vocabulary: unchecked
    val = ValLoader(tmp_path / "v", batch_size=8, vocab_size=256)
    assert sum(len(b) for b in val) == 7 and val.corrupt == 1


def test_augmentation_is_seeded_by_position_and_replayed_on_resume(split):
    from pipeline.data.preprocess import Augment
    augment = Augment(crop_scale=(0.5, 1.0), hflip=True)
    plain = epoch_batches(loader(split), 1)
    augmented = epoch_batches(loader(split, augment=augment), 1)
    assert same(augmented, epoch_batches(loader(split, augment=augment, num_workers=2), 1))  # reproducible
    assert all(torch.equal(a.text, p.text) for a, p in zip(augmented, plain))  # the same samples, in order
    assert sum(not torch.equal(a.pixels, p.pixels) for a, p in zip(augmented, plain)) == len(plain)  # changed
    lo = loader(split, augment=augment)
    it = lo.iter_epoch(1)
    first = [next(it) for _ in range(3)]
    it.close()
    resumed = loader(split, augment=augment)
    resumed.load_state_dict(lo.state_dict())
    assert same(augmented, first + list(resumed.iter_epoch(1)))


def test_batches_carry_uint8_pixels_and_normalise_where_they_are():
    from pipeline.data.loader import Batch
    from pipeline.data.preprocess import normalize
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    batch = Batch(pixels, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)).to(torch.device("cpu"))
    assert batch.pixels.dtype == torch.uint8 and torch.equal(batch.images, normalize(pixels))


def test_load_shards_are_made_square_by_the_loader_exactly_as_inference_makes_them(tmp_path):
    from support.trainkit import write_download

    from pipeline.config import build_config
    from pipeline.data.loader import Manifest, read_shards
    from pipeline.data.preprocess import decode_image, prepare_image
    from pipeline.data.shard import shard_split

    write_download(tmp_path, {"val": 12}, corrupt=(5,))  # image 5: a good header, pixels cut short
    cfg = build_config({"preset": "smoke", "data": {"shard": {"resize_at": "load", "resize_mode": "letterbox"}}})
    shard_split("cc12m", "val", tmp_path / "splits/val.parquet", tmp_path / "tokens/val.npy",
                tmp_path / "download", tmp_path / "shards", cfg.data.shard)
    manifest = Manifest.load(tmp_path / "shards")
    assert (manifest.resize_at, manifest.resize_mode, manifest.samples) == ("load", "letterbox", 12)

    with tarfile.open(tmp_path / "download/00000.tar") as tar:
        source = {m.name[:-4]: tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")}
    keys = [json.loads(s["json"])["source"].split(":")[1]
            for s in read_shards([manifest.root / f for f, _ in manifest.shards], [0])]
    expected = [prepare_image(decode_image(source[key]), 32, "letterbox") for key in keys if key != "000000005"]

    val = ValLoader(tmp_path / "shards", batch_size=4)
    assert torch.equal(torch.cat([b.pixels for b in val]), torch.stack(expected))  # in shard order
    assert val.corrupt == 1

    train = loader(tmp_path / "shards", micro_batch_size=4, grad_accum_steps=1)
    seen = torch.cat([b.pixels for b in epoch_batches(train)])
    assert all(any(torch.equal(image, e) for e in expected) for image in seen)
    assert train.corrupt_total == 1  # the stream that held it ran short and started over

    # Decoded on the device (the CPU here): the downloads of varied sizes decode together and are made
    # square there; the JPEG cut short fails the batched call, is found alone, and is counted.
    val = ValLoader(tmp_path / "shards", batch_size=4, decode_on="device")
    assert torch.equal(torch.cat([b.pixels for b in val]), torch.stack(expected)) and val.corrupt == 1
    train = loader(tmp_path / "shards", micro_batch_size=4, grad_accum_steps=1, decode_on="device")
    seen = torch.cat([b.pixels for b in epoch_batches(train)])
    assert all(any(torch.equal(image, e) for e in expected) for image in seen)
    assert train.corrupt_total == train.corrupt_on_device == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_decoding_on_the_device_gives_the_batches_the_workers_give(split, workers):
    """train.decode_on device (on the CPU here: the same libjpeg-turbo as the workers' decode_image):
    the same micro-batches, pixel for pixel, augmented or not, in training and in validation."""
    from pipeline.data.preprocess import Augment

    for augment in (Augment(), Augment(crop_scale=(0.5, 1.0), hflip=True)):
        there = epoch_batches(loader(split, num_workers=workers, augment=augment), 1)
        here = epoch_batches(loader(split, num_workers=workers, augment=augment, decode_on="device"), 1)
        assert same(there, here) and all(torch.equal(a.pixels, b.pixels) for a, b in zip(there, here))
    there = list(ValLoader(split, batch_size=8, num_workers=workers))
    here = list(ValLoader(split, batch_size=8, num_workers=workers, decode_on="device"))
    assert same(there, here) and len(here) == 9  # 16, 16, 16, 16, 6 samples: batches of 8 cut within a shard


def test_decoding_on_the_device_restarts_exactly_mid_epoch(split):
    full = epoch_batches(loader(split, num_workers=2, decode_on="device"), 1)
    lo = loader(split, num_workers=2, decode_on="device")
    it = lo.iter_epoch(1)
    first = [next(it) for _ in range(5)]
    it.close()
    resumed = loader(split, num_workers=2, decode_on="device")
    resumed.load_state_dict(lo.state_dict())
    assert same(full, first + list(resumed.iter_epoch(1)))


def test_an_image_the_device_cannot_decode_is_counted_and_its_row_repeats_the_next(tmp_path, capsys):
    """The workers cannot replace an image they never decode: its row in the micro-batch takes the
    next decodable sample's image and tokens, so the batch keeps its size (DDP gathers it)."""
    write_split(tmp_path / "c", "cc12m", "train", 40, samples_per_shard=10, corrupt=(3, 17))
    lo = loader(tmp_path / "c", shuffle_buffer=1, decode_on="device")
    batches = epoch_batches(lo)
    assert len(batches) == 2 * lo.steps_in_epoch(0) and all(len(b) == 4 for b in batches)
    assert lo.corrupt_total == 2 and lo.state_dict()["corrupt_on_device"] == 2
    repeats = [(b, i) for b in batches for i in range(len(b) - 1) if torch.equal(b.pixels[i], b.pixels[i + 1])]
    assert len(repeats) == 2 and all(torch.equal(b.text[i], b.text[i + 1]) for b, i in repeats)
    assert capsys.readouterr().err.count("cannot be decoded on cpu; counted as corrupt") == 2
    val = ValLoader(tmp_path / "c", batch_size=8, decode_on="device")
    assert sum(len(b) for b in val) == 38 and val.corrupt == 2
    # Which row it repeats: the next decodable one, after the last row the first (a function of the
    # micro-batch alone, so a resumed run repeats the same).
    with tarfile.open(tmp_path / "c/shard-00000-0000.tar") as tar:
        jpegs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")][:3]  # 0, 1, 2: decodable
    bad = b"not a jpeg at all"
    for encoded, rows in (([bad, jpegs[0], bad, jpegs[1]], [1, 1, 3, 3]), ([jpegs[0], jpegs[1], jpegs[2], bad], [0, 1, 2, 0])):
        seq = torch.arange(4).view(4, 1)
        chunk = {"images": encoded, "seeds": [0] * 4, "names": [f"sample {i}" for i in range(4)]}
        pixels, tokens = lo._decode_on_device([chunk], seq)
        assert tokens.flatten().tolist() == rows
        assert all(torch.equal(pixels[i], pixels[r]) for i, r in enumerate(rows))
    with pytest.raises(ValueError, match=r"train.decode_on = 'gpu' is invalid: allowed workers, device"):
        loader(tmp_path / "c", decode_on="gpu")


def test_a_manifest_with_an_unknown_resize_at_is_refused_by_name(tmp_path):
    from pipeline.data.loader import Manifest

    manifest = write_split(tmp_path, "cc12m", "val", 4)
    assert Manifest.load(tmp_path).resize_at == "shard"  # a manifest from before the switch
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "resize_at": "gpu"}))
    with pytest.raises(ValueError, match=r"manifest.json: resize_at 'gpu': allowed shard, load"):
        Manifest.load(tmp_path)
