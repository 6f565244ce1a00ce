"""Webdataset loaders for the training shards (see pipeline/data/shard.py for the format).

Training: an epoch is a deterministic function of (seed, epoch, number of streams, batch sizes).
The shard order is shuffled with (seed, epoch) and the shards are dealt to `streams` streams (when a
split has fewer shards than streams, every stream reads all shards and keeps every streams-th
sample). Each stream shuffles its samples in a buffer seeded with (seed, epoch, stream). Every
micro-batch takes the same number of samples (a chunk) from each stream, so its content does not
depend on how streams are spread over processes and DataLoader workers: process r owns the streams
s with s % world_size == r and its workers split those. Every process yields the same number of
micro-batches, computed from the manifest (the shortest stream decides; the rest is dropped); a
stream that runs short because of corrupt samples starts over (deterministic padding), so DDP never
waits on a missing batch.

Corrupt samples (undecodable JPEG, bad token array, missing member, unreadable tar) are skipped and
counted, never fatal. Resume is exact: the position is the number of micro-batches consumed plus,
per stream, the number of shuffled samples read; a restarted epoch replays each stream's shuffle
without decoding and drops what was already read.

Images travel as uint8 (decoded with torchvision in the loader's worker processes, where a corrupt
sample can be replaced without changing the batch) and are normalised on the training device
(`Batch.images`): a quarter of float32's bytes to copy, and the arithmetic on the GPU when there is one.
Shards made with data.shard.resize_at: load hold the downloaded files; `decode_sample` makes them
square in those workers (pipeline/data/preprocess.py's prepare_image, as inference does).
With train.decode_on: device the workers only read and check (tokens, an image member present) and
send the encoded images; the training process decodes each micro-batch's images together on its
device (preprocess.decode_images: nvJPEG on a GPU, batched; libjpeg-turbo on the CPU, the same
pixels as the workers' decode) and makes them square and augments them there. An image the device
cannot decode is counted as corrupt and its row repeats a neighbour (`_decode_on_device` says why).
A worker stacks its chunks into shared-memory blocks the main process allocated for it (SharedRing),
sends a block's number, and the main process copies the chunks into the micro-batch, channels-last as
the decoder lays the pixels out (`join`); only a sample's image and tokens.npy members are read.
Fine-tuning may augment them (pipeline/data/preprocess.py's Augment); each sample's draws are seeded
by (seed, epoch, stream, position), so a resumed epoch replays them.

Validation: every sample exactly once, in shard order, batches of `batch_size` cut within a shard;
process r reads the shards i with i % world_size == r, so the batches do not depend on the number
of processes or workers.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import random
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from pipeline.data.preprocess import Augment, decode_image, decode_images, normalize, prepare_image
from pipeline.names import DECODE_ON, IMAGE_FIELDS, RESIZE_AT


class CorruptSample(ValueError):
    pass


@dataclass
class Batch:
    # (B, 3, H, W) uint8 as stored (after any augmentation): laid out channels-last (join), or contiguous
    # on the training device when decoded there (train.decode_on device)
    pixels: torch.Tensor
    text: torch.Tensor  # (B, L) int64: tokens[:, :-1] (last input token is CLS)
    targets: torch.Tensor  # (B, L) int64: tokens[:, 1:]

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch(self.pixels.to(device, non_blocking=nb), self.text.to(device, non_blocking=nb),
                     self.targets.to(device, non_blocking=nb))

    @property
    def images(self) -> torch.Tensor:
        """The model's input: float32, ImageNet-normalised, on the pixels' device."""
        return normalize(self.pixels)

    def __len__(self) -> int:
        return self.pixels.shape[0]


@dataclass(frozen=True)
class Manifest:
    root: Path
    shards: tuple[tuple[str, int], ...]  # (file, samples)
    samples: int
    image_size: int
    context_length: int
    resize_mode: str  # how the images are made square (pipeline/data/preprocess.py)
    resize_at: str  # where: shard (stored square) or load (stored as downloaded; decode_sample makes it)

    @classmethod
    def load(cls, shard_dir: str | Path) -> "Manifest":
        root = Path(shard_dir)
        path = root / "manifest.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no shard manifest (run the shard stage first)") from None
        shards = tuple((s["file"], int(s["samples"])) for s in data["shards"] if int(s["samples"]) > 0)
        if not shards:
            raise ValueError(f"{path}: the split has no samples")
        resize_at = data.get("resize_at", "shard")  # (older manifests: shard)
        if resize_at not in RESIZE_AT:
            raise ValueError(f"{path}: resize_at {resize_at!r}: allowed {', '.join(RESIZE_AT)}")
        return cls(root, shards, sum(n for _, n in shards), int(data["image_size"]),
                   int(data["context_length"]), data.get("resize_mode", "naive"), resize_at)  # (older: naive)

    def counts(self, files: list[str] | tuple[str, ...]) -> list[int]:
        """The samples each of these shard files holds."""
        per_file = dict(self.shards)
        return [per_file[f] for f in files]

    def check_fits(self, model_cfg: Any) -> "Manifest":
        """The shards were made for this model's image size and context length (else: reshard)."""
        if (self.image_size, self.context_length) != (model_cfg.image_size, model_cfg.context_length):
            raise ValueError(f"{self.root}: the shards have image_size {self.image_size} and context_length "
                             f"{self.context_length}; model.image_size is {model_cfg.image_size} and "
                             f"model.context_length {model_cfg.context_length}: rerun the shard stage")
        return self


# ----------------------------------------------------------------------------- samples


def image_member(sample: dict) -> bytes:
    """A sample's encoded image (its first IMAGE_FIELDS member); CorruptSample if it has none."""
    field = next((f for f in IMAGE_FIELDS if f in sample), None)
    if field is None:
        raise CorruptSample(f"no image member ({', '.join(IMAGE_FIELDS)})")
    return sample[field]


def square_image(pixels: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """A decoded image as the model takes it: the stored square (resize_at shard; CorruptSample if it
    is not image_size a side), or the stored download made square here (load), on its own device."""
    size = manifest.image_size
    if manifest.resize_at == "load":
        return prepare_image(pixels, size, manifest.resize_mode)
    if pixels.shape[1:] != (size, size):
        raise CorruptSample(f"image is {pixels.shape[2]}x{pixels.shape[1]}, expected {size}x{size}")
    return pixels


def sample_tokens(sample: dict, context_length: int, vocab_size: int | None = None) -> torch.Tensor:
    """A sample's token ids, int64 (context_length + 1,); CorruptSample if unusable, ids outside
    [0, vocab_size) included (they would crash the embedding)."""
    try:
        tokens = parse_tokens(sample["tokens.npy"], context_length)
    except Exception as e:  # noqa: BLE001 - a missing member or a bad array: skip and count
        raise CorruptSample(f"tokens.npy: {type(e).__name__}: {e}") from None
    if tokens.shape != (context_length + 1,) or tokens.dtype.kind not in "iu":
        raise CorruptSample(f"tokens have shape {tokens.shape} and dtype {tokens.dtype}, "
                            f"expected ({context_length + 1},) integers")
    if vocab_size is not None and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise CorruptSample(f"token ids in [{tokens.min()}, {tokens.max()}], outside the vocabulary [0, {vocab_size})")
    return torch.from_numpy(tokens.astype(np.int64))


def decode_sample(sample: dict, manifest: Manifest,
                  vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (image uint8 (3, S, S), tokens int64 (context_length + 1,)), decoded on the CPU;
    CorruptSample if either is unusable."""
    data = image_member(sample)
    try:
        pixels = square_image(decode_image(data), manifest)
    except CorruptSample:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure: skip and count
        raise CorruptSample(f"{type(e).__name__}: {e}") from None
    return pixels, sample_tokens(sample, manifest.context_length, vocab_size)


def worker_sample(sample: dict, manifest: Manifest, vocab_size: int | None,
                  on_device: bool) -> tuple[torch.Tensor | bytes, torch.Tensor]:
    """What a loader's worker makes of a sample: decode_sample's (image, tokens), or with
    train.decode_on device (encoded image, tokens), the image left for the device to decode."""
    if on_device:
        return image_member(sample), sample_tokens(sample, manifest.context_length, vocab_size)
    return decode_sample(sample, manifest, vocab_size)


def checked_decode_on(decode_on: str) -> str:
    if decode_on not in DECODE_ON:
        raise ValueError(f"train.decode_on = {decode_on!r} is invalid: allowed {', '.join(DECODE_ON)}")
    return decode_on


def decode_on_device(encoded: list[bytes], manifest: Manifest, device: torch.device) -> list[torch.Tensor | None]:
    """Encoded images -> the model's squares (square_image) on `device`, decoded there together
    (preprocess.decode_images); None for one that cannot be decoded or is no valid square."""
    squares: list[torch.Tensor | None] = []
    for pixels in decode_images(encoded, device):
        try:
            squares.append(None if pixels is None else square_image(pixels, manifest))
        except CorruptSample:
            squares.append(None)
    return squares


@functools.cache
def npy_header(context_length: int) -> bytes:
    """The bytes before the data in the shard stage's token files (np.save of int32, context_length + 1)."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(context_length + 1, dtype=np.int32))
    return buffer.getvalue()[: -4 * (context_length + 1)]


def parse_tokens(data: bytes, context_length: int) -> np.ndarray:
    """A sample's `tokens.npy`. The shard stage always writes the same header, so the array is read
    straight from the bytes after it (about 1 us, against np.load's 60-150 us, which parses the
    header as a Python literal each time); any other valid .npy file goes through np.load."""
    header = npy_header(context_length)
    if data.startswith(header) and len(data) == len(header) + 4 * (context_length + 1):
        return np.frombuffer(data, dtype="<i4", offset=len(header))
    return np.load(io.BytesIO(data), allow_pickle=False)


TRAINING_MEMBERS = (*IMAGE_FIELDS, "tokens.npy")  # what the loaders read of a sample; the rest is skipped


WEBDATASET_META = re.compile(r"__[^/]*__($|/)")  # members webdataset's reader skips (its skip_meta)


def tar_members(paths: list[Path], handler, select=None) -> Iterator[dict]:
    """Each tar's regular members in order, as webdataset's tar_file_expander yields them (a dict of
    fname, data and __url__ per member, then {} at the end of each tar, the end-of-shard mark that
    its group_by_keys expects), `select`ed by name. Read with tarfile's random-access mode, one read
    per member: webdataset's reader opens the tar as a stream ("r|*"), which reads a member in 10 kB
    blocks and joins and slices them. Reading a sample's JPEG (96 kB, as the paper preset's downloads)
    and tokens took 98-107 us that way and 76-81 us this way, in one process. A tar that cannot be
    opened or read any further calls `handler` once and ends there. webdataset's grouping of the
    members into samples is used as is."""
    for path in paths:
        try:
            with tarfile.open(path) as tar:
                while (info := tar.next()) is not None:
                    tar.members.clear()  # (tarfile would keep every header: a whole shard's, unused)
                    name = info.name
                    if not info.isreg() or WEBDATASET_META.match(name) or (select is not None and not select(name)):
                        continue
                    yield {"fname": name, "data": tar.extractfile(info).read(), "__url__": str(path)}
        except (OSError, tarfile.TarError, EOFError) as exn:
            handler(exn)
        yield {}


def read_shards(paths: list[Path], errors: list[int], expected: list[int] | None = None,
                members: tuple[str, ...] | None = None) -> Iterator[dict]:
    """Raw samples (dicts of bytes by extension, grouped by webdataset's group_by_keys) of the tars
    in order; an unreadable tar or member is skipped. `members`: the extensions to read (None: all),
    so the loaders do not copy out the caption and metadata they never use. When the iteration ends,
    errors[0] holds what was lost: with `expected` (each file's sample count from the manifest) every
    sample a damaged tar did not yield (a truncated tar loses all the samples after the damage, not
    one), else the number of read errors."""
    read_errors = [0]

    def handler(exn: Exception) -> bool:
        read_errors[0] += 1
        return True  # skip and go on

    yielded: Counter = Counter()
    wanted = None if members is None else tuple(f".{ext}" for ext in members)
    select = None if wanted is None else (lambda name: name.endswith(wanted))
    for sample in group_by_keys(tar_members(paths, handler, select), handler=handler):
        yielded[sample.get("__url__")] += 1
        yield sample
    if expected is None:
        errors[0] += read_errors[0]
    else:
        errors[0] += sum(max(0, n - yielded[str(path)]) for path, n in zip(paths, expected))


def shuffled(items: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    """A reproducible shuffle buffer: fill, then emit a random element and refill its slot."""
    buffer: list = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class StreamPlan:
    files: tuple[str, ...]
    stride: int  # keep raw sample i (counted over the files, in order) when i % stride == offset
    offset: int
    length: int  # samples the manifest promises this stream


def plan_epoch(manifest: Manifest, seed: int, epoch: int, streams: int) -> list[StreamPlan]:
    order = list(manifest.shards)
    random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    if len(order) >= streams:  # shard-level: each stream reads its own shards
        return [StreamPlan(tuple(f for f, _ in order[s::streams]), 1, 0, sum(n for _, n in order[s::streams]))
                for s in range(streams)]
    files, total = tuple(f for f, _ in order), manifest.samples  # sample-level: all read all, keep 1/streams
    return [StreamPlan(files, streams, s, len(range(s, total, streams))) for s in range(streams)]


def join(tensors: list[torch.Tensor], stacked: bool) -> torch.Tensor:
    """torch.stack (stacked) or torch.cat of CPU images (3, H, W) or batches (B, 3, H, W) into a batch
    laid out channels-last, as one single-threaded copy (numpy's).

    Channels-last because decoders lay images out that way: torchvision's (3, H, W) image is a view of
    its (H, W, 3) pixels, and so is a resize's output, so the copy is a plain memcpy (4 us for an image
    of 288 px) rather than a transposition (36 us); `normalize` makes the model's float input
    contiguous. Numpy's copy rather than torch's: a torch copy this large is split over torch's OpenMP
    threads, which busy-wait for each other when the cores are also running DataLoader workers or
    other processes (measured on 2 shared cores: the in-process loader then spent 1.8 ms of CPU per
    image instead of 0.3 ms)."""
    arrays = [t.movedim(-3, -1).numpy() for t in tensors]
    return torch.from_numpy(np.stack(arrays) if stacked else np.concatenate(arrays)).movedim(-1, -3)


PREFETCH_FACTOR = 2  # chunks each DataLoader worker may have ready or in flight (PyTorch's default)


def as_sent(chunk: dict) -> dict:
    """The DataLoader's collate_fn for chunks: none. Its default (default_convert, run in the worker)
    turns the tokens' numpy array into a tensor, which then travels in a fresh shared-memory block
    per chunk (a file, a mapping and its page faults on both sides) instead of inside the message."""
    return chunk


class SharedRing:
    """A DataLoader worker's reusable shared-memory blocks for the chunks it sends.

    Sending a tensor from a worker needs it in shared memory, and each send costs: a fresh block per
    chunk (what PyTorch's default_collate allocates) about 5 ms for 32 images of 288 px, more than
    decoding them (nearly all of it the kernel's page faults on new /dev/shm pages); even a block sent
    again passes its file descriptor through a socket to the worker's resource-sharer thread every
    time. So the main process allocates each worker's ring before the workers start (they inherit it
    with the dataset), a worker stacks a chunk into its next block and sends only the block's number,
    and the main process copies every chunk out (into the micro-batch) before it can be overwritten.
    That is safe because the DataLoader delivers chunks in order and sends a worker its next request
    only as it hands out that worker's earlier chunk: when a worker writes a chunk, at most
    PREFETCH_FACTOR of its earlier chunks are in flight and at most `chunks_per_step` are waiting,
    uncopied, for the rest of their micro-batch, so PREFETCH_FACTOR + chunks_per_step + 1 blocks are
    never written while still in use."""

    def __init__(self, chunks_per_step: int, chunk_shape: tuple[int, ...]):
        size = PREFETCH_FACTOR + chunks_per_step + 1
        self.blocks = [torch.empty(chunk_shape, dtype=torch.uint8, memory_format=torch.channels_last).share_memory_()
                       for _ in range(size)]  # (channels-last, as `join` says why)
        self.turn = 0  # (each worker advances its own copy)

    def stack(self, tensors: list[torch.Tensor]) -> int:
        """torch.stack into the next block; -> the block's number."""
        slot, self.turn = self.turn % len(self.blocks), self.turn + 1
        torch.stack(tensors, out=self.blocks[slot])
        return slot


def augment_seed(seed: int, epoch: int, stream: int, position: int) -> int:
    """The seed of one training sample's augmentation: a function of where it is in the epoch."""
    return random.Random(f"augment:{seed}:{epoch}:{stream}:{position}").getrandbits(63)


class _TrainChunks(IterableDataset):
    """Yields, for micro-batches k = start..end-1 and each stream of this worker, a chunk of samples."""

    def __init__(self, loader: "TrainLoader", epoch: int, start: int, end: int,
                 positions: dict[int, int], corrupt: dict[int, int], rings: list[SharedRing]):
        self.loader, self.epoch, self.start, self.end = loader, epoch, start, end
        self.positions, self.corrupt = positions, corrupt
        self.rings = rings  # one per DataLoader worker (none in the main process)

    def _items(self, s: int, plan: StreamPlan) -> Iterator[dict]:
        """The stream's shuffled raw samples, started over as often as needed (padding)."""
        lo = self.loader
        for repeat in itertools.count():
            errors = [0]
            raw = read_shards([lo.manifest.root / f for f in plan.files], errors, lo.manifest.counts(plan.files),
                              TRAINING_MEMBERS)
            kept = (x for i, x in enumerate(raw) if i % plan.stride == plan.offset)
            rng = random.Random(f"samples:{lo.seed}:{self.epoch}:{s}:{repeat}")
            produced = 0
            for item in shuffled(kept, lo.shuffle_buffer, rng):
                produced += 1
                yield item
            if plan.stride == 1 or plan.offset == 0:  # (all streams read all shards: count once)
                for _ in range(errors[0]):  # unreadable tars/members: reported as corrupt samples
                    yield None
            if produced == 0:
                raise RuntimeError(f"{lo.manifest.root}: training stream {s} has no readable sample")
            if repeat == 0 and produced < plan.length:
                print(f"{lo.manifest.root}: epoch {self.epoch + 1}, stream {s}: {produced} of the manifest's "
                      f"{plan.length} samples readable; the stream repeats its samples to keep processes in step",
                      file=sys.stderr, flush=True)

    def __iter__(self) -> Iterator[dict]:
        lo = self.loader
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = lo.rank_streams[worker::workers]
        plans = plan_epoch(lo.manifest, lo.seed, self.epoch, lo.streams)
        items, pos, bad = {}, {}, {}
        for s in mine:
            pos[s], bad[s] = self.positions.get(s, 0), self.corrupt.get(s, 0)
            items[s] = self._items(s, plans[s])
            for _ in range(pos[s]):  # resume: replay the shuffle without decoding
                next(items[s])
        on_device = lo.decode_on == "device"  # then a chunk carries the encoded images and their seeds
        ring = self.rings[worker] if info and not on_device else None  # in the main process: nothing to send
        for k in range(self.start, self.end):
            for s in mine:
                images, tokens, seeds, names, failures = [], [], [], [], 0
                while len(images) < lo.chunk:
                    item = next(items[s])
                    pos[s] += 1
                    try:
                        if item is None:
                            raise CorruptSample("unreadable tar member")
                        image, tok = worker_sample(item, lo.manifest, lo.vocab_size, on_device)
                    except CorruptSample:
                        bad[s] += 1
                        failures += 1
                        if failures > max(1000, plans[s].length):
                            raise RuntimeError(f"{lo.manifest.root}: stream {s}: no decodable sample") from None
                        continue
                    seed = augment_seed(lo.seed, self.epoch, s, pos[s]) if lo.augment.active else 0
                    if on_device:
                        seeds.append(seed)
                        names.append(f"{item['__url__']}: {item['__key__']}")
                    elif lo.augment.active:
                        image = lo.augment(image, seed)
                    images.append(image)
                    tokens.append(tok)
                # (tokens are small: from a worker, pickled with the message, no shared-memory handle to pass)
                tokens = torch.stack(tokens).numpy() if info else torch.stack(tokens)
                if not on_device:
                    images = join(images, stacked=True) if ring is None else ring.stack(images)
                yield {"k": k, "s": s, "worker": worker, "images": images, "tokens": tokens, "pos": pos[s],
                       "corrupt": bad[s], "seeds": seeds, "names": names}


class TrainLoader:
    """Micro-batches of one process for one epoch at a time; `state_dict()` is its exact position."""

    def __init__(self, shard_dir: str | Path, *, micro_batch_size: int, grad_accum_steps: int,
                 rank: int = 0, world_size: int = 1, streams: int = 0, num_workers: int = 0,
                 shuffle_buffer: int = 1000, seed: int = 0, max_steps_per_epoch: int = 0,
                 vocab_size: int | None = None, augment: Augment = Augment(), decode_on: str = "workers",
                 device: torch.device | str = "cpu"):
        self.manifest = Manifest.load(shard_dir)
        self.rank, self.world_size = rank, world_size
        self.decode_on, self.device = checked_decode_on(decode_on), torch.device(device)
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.micro_batch_size, self.grad_accum_steps = micro_batch_size, grad_accum_steps
        self.max_steps_per_epoch = max_steps_per_epoch
        self.streams = streams or world_size * max(1, num_workers)
        if self.streams % world_size:
            raise ValueError(f"train.data_streams = {self.streams} is invalid: allowed a multiple of "
                             f"the number of processes ({world_size})")
        per_rank = self.streams // world_size
        if per_rank % max(1, num_workers):
            raise ValueError(f"train.data_streams = {self.streams} is invalid: each process's "
                             f"{per_rank} streams must split evenly over train.num_workers = {num_workers}")
        if micro_batch_size % per_rank:
            raise ValueError(f"train.micro_batch_size = {micro_batch_size} is invalid: allowed a multiple "
                             f"of the streams per process ({per_rank} = data_streams / processes)")
        self.chunk = micro_batch_size // per_rank
        self.rank_streams = list(range(rank, self.streams, world_size))
        self.epoch, self.micro = 0, 0
        self.positions: dict[int, int] = {}
        self.corrupt: dict[int, int] = {}
        self.corrupt_on_device = 0  # images the device could not decode (decode_on device)
        self.vocab_size = vocab_size  # token ids at or above it are corrupt samples (None: not checked)
        self.augment = augment

    @classmethod
    def from_config(cls, shard_dir: str | Path, tcfg: Any, model_cfg: Any, *, rank: int = 0,
                    world_size: int = 1, augment: Augment = Augment(),
                    device: torch.device | str = "cpu") -> "TrainLoader":
        """The loader of a training run (`tcfg` is the `train:` section, `model_cfg` the model's) on
        `device`, where train.decode_on device decodes the images."""
        loader = cls(shard_dir, micro_batch_size=tcfg.micro_batch_size, grad_accum_steps=tcfg.grad_accum_steps,
                     rank=rank, world_size=world_size, streams=tcfg.data_streams, num_workers=tcfg.num_workers,
                     shuffle_buffer=tcfg.shuffle_buffer, seed=tcfg.seed, max_steps_per_epoch=tcfg.max_steps_per_epoch,
                     vocab_size=model_cfg.vocab_size, augment=augment, decode_on=tcfg.decode_on, device=device)
        loader.manifest.check_fits(model_cfg)
        return loader

    # ---------------------------------------------------------------- sizes
    def steps_in_epoch(self, epoch: int) -> int:
        """Optimiser steps in an epoch (the same on every process)."""
        shortest = min(p.length for p in plan_epoch(self.manifest, self.seed, epoch, self.streams))
        steps = shortest // self.chunk // self.grad_accum_steps
        if self.max_steps_per_epoch:
            steps = min(steps, self.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(
                f"{self.manifest.root}: {self.manifest.samples} samples in {self.streams} streams make no "
                f"optimiser step of {self.micro_batch_size} x {self.world_size} processes x "
                f"{self.grad_accum_steps} accumulation steps; lower train.micro_batch_size, "
                f"train.grad_accum_steps or train.data_streams")
        return steps

    @property
    def corrupt_total(self) -> int:
        return sum(self.corrupt.values()) + self.corrupt_on_device

    # ---------------------------------------------------------------- position
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "micro": self.micro, "streams": self.streams,
                "positions": {str(s): p for s, p in self.positions.items()},
                "corrupt": {str(s): c for s, c in self.corrupt.items()}, "corrupt_on_device": self.corrupt_on_device}

    def load_state_dict(self, state: dict) -> None:
        if state["streams"] != self.streams:
            raise ValueError(f"the checkpoint's data order has {state['streams']} streams, this run "
                             f"{self.streams}: resume with the same train.data_streams, processes and workers")
        self.epoch, self.micro = state["epoch"], state["micro"]
        self.positions = {int(s): p for s, p in state["positions"].items()}
        self.corrupt = {int(s): c for s, c in state["corrupt"].items()}
        self.corrupt_on_device = state.get("corrupt_on_device", 0)  # (older checkpoints: none)

    # ---------------------------------------------------------------- iteration
    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """This process's micro-batches of `epoch`, from the saved position if it is in `epoch`."""
        if epoch != self.epoch:
            self.epoch, self.micro, self.positions = epoch, 0, {}
        end = self.steps_in_epoch(epoch) * self.grad_accum_steps
        if self.micro >= end:
            return
        per_batch = len(self.rank_streams)
        size = self.manifest.image_size
        on_device = self.decode_on == "device"
        rings = [] if on_device else [SharedRing(per_batch // self.num_workers, (self.chunk, 3, size, size))
                                      for _ in range(self.num_workers)]
        dataset = _TrainChunks(self, epoch, self.micro, end, dict(self.positions), dict(self.corrupt), rings)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=as_sent,
                            prefetch_factor=PREFETCH_FACTOR if self.num_workers else None,
                            generator=torch.Generator().manual_seed(self.seed))
        pending: dict[int, dict[int, dict]] = {}
        for item in loader:
            if rings:  # a worker's chunk: the number of its ring block
                item["images"] = rings[item["worker"]].blocks[item["images"]]
            pending.setdefault(item["k"], {})[item["s"]] = item
            while len(pending.get(self.micro, ())) == per_batch:
                ready = pending.pop(self.micro)
                chunks = [ready[s] for s in sorted(ready)]
                for c in chunks:
                    self.positions[c["s"]], self.corrupt[c["s"]] = c["pos"], c["corrupt"]
                self.micro += 1
                seq = torch.cat([torch.as_tensor(c["tokens"]) for c in chunks])
                if on_device:
                    images, seq = self._decode_on_device(chunks, seq)
                else:  # (images are copied out even from one chunk: a worker's ring block is reused)
                    images = join([c["images"] for c in chunks], stacked=False) if rings or len(chunks) > 1 \
                        else chunks[0]["images"]
                yield Batch(images, seq[:, :-1].contiguous(), seq[:, 1:].contiguous())

    def _decode_on_device(self, chunks: list[dict], seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch's encoded images -> (uint8 (B, 3, S, S) on the device, its token rows).

        The workers could not replace an image the device cannot decode (they never decode one), so
        it is counted as corrupt and its row takes the micro-batch's next decodable sample (image and
        tokens, augmented with the row's own seed): the batch keeps its size, which DDP's gathers need,
        and the choice depends on the batch alone, so a resumed run makes it again."""
        encoded = [data for c in chunks for data in c["images"]]
        seeds = [seed for c in chunks for seed in c["seeds"]]
        names = [name for c in chunks for name in c["names"]]
        squares = decode_on_device(encoded, self.manifest, self.device)
        good = [i for i, x in enumerate(squares) if x is not None]
        if not good:
            raise RuntimeError(f"{self.manifest.root}: none of a micro-batch's {len(names)} images could be decoded "
                               f"on {self.device} (first: {names[0]}): train.decode_on workers decodes on the CPU")
        rows = []
        for i, pixels in enumerate(squares):
            if pixels is not None:
                rows.append(i)
                continue
            j = next((g for g in good if g > i), good[0])
            rows.append(j)
            self.corrupt_on_device += 1
            print(f"{names[i]}: the image cannot be decoded on {self.device}; counted as corrupt, its row "
                  f"repeats {names[j]}", file=sys.stderr, flush=True)
        images = [squares[r] for r in rows]
        if self.augment.active:
            images = [self.augment(image, seed) for image, seed in zip(images, seeds)]
        return torch.stack(images), seq[rows]


# ----------------------------------------------------------------------------- validation


class _ValBatches(IterableDataset):
    def __init__(self, loader: "ValLoader"):
        self.loader = loader

    def __iter__(self) -> Iterator[dict]:
        lo = self.loader
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        files = [f for f, _ in lo.manifest.shards][lo.rank::lo.world_size][worker::workers]
        on_device = lo.decode_on == "device"  # then the batch carries the encoded images
        gather = (lambda images: images) if on_device else functools.partial(join, stacked=True)
        for f in files:
            errors, bad = [0], 0
            images, tokens = [], []
            for sample in read_shards([lo.manifest.root / f], errors, lo.manifest.counts([f]), TRAINING_MEMBERS):
                try:
                    image, tok = worker_sample(sample, lo.manifest, lo.vocab_size, on_device)
                except CorruptSample:
                    bad += 1
                    continue
                images.append(image)
                tokens.append(tok)
                if len(images) == lo.batch_size:
                    yield {"images": gather(images), "tokens": torch.stack(tokens), "corrupt": bad}
                    images, tokens, bad = [], [], 0
            bad += errors[0]
            if images or bad:
                yield {"images": gather(images) if images else None,
                       "tokens": torch.stack(tokens) if tokens else None, "corrupt": bad}


class ValLoader:
    """This process's share of a validation split, each sample once; `corrupt` counts skipped samples."""

    def __init__(self, shard_dir: str | Path, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, vocab_size: int | None = None, decode_on: str = "workers",
                 device: torch.device | str = "cpu"):
        self.decode_on, self.device = checked_decode_on(decode_on), torch.device(device)
        self.manifest = Manifest.load(shard_dir)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers = min(num_workers, len(self.manifest.shards[rank::world_size]))
        self.corrupt = 0
        self.vocab_size = vocab_size

    @classmethod
    def from_config(cls, shard_dir: str | Path, tcfg: Any, model_cfg: Any, *, rank: int = 0,
                    world_size: int = 1, device: torch.device | str = "cpu") -> "ValLoader":
        loader = cls(shard_dir, batch_size=tcfg.val_batch_size, rank=rank, world_size=world_size,
                     num_workers=tcfg.num_workers, vocab_size=model_cfg.vocab_size, decode_on=tcfg.decode_on,
                     device=device)
        loader.manifest.check_fits(model_cfg)
        return loader

    def __iter__(self) -> Iterator[Batch]:
        self.corrupt = 0
        loader = DataLoader(_ValBatches(self), batch_size=None, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(0))
        for item in loader:
            self.corrupt += item["corrupt"]
            images, seq = item["images"], item["tokens"]
            if images is not None and self.decode_on == "device":  # an image the device cannot decode is skipped
                squares = decode_on_device(images, self.manifest, self.device)
                good = [i for i, x in enumerate(squares) if x is not None]
                self.corrupt += len(squares) - len(good)
                images, seq = (torch.stack([squares[i] for i in good]), seq[good]) if good else (None, None)
            if images is not None:
                yield Batch(images, seq[:, :-1].contiguous(), seq[:, 1:].contiguous())
