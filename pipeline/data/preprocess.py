"""Image preprocessing (docs/paper.md §Image preprocessing), one definition for every path, with
torchvision's decoders and transforms: training, evaluation and inference all see what `prepare_image`
makes. Where it runs is `data.shard.resize_at`: `shard` stores its square as a JPEG (so training sees
it compressed once more), `load` stores the downloaded bytes and the loader runs it, as inference does.

    encoded bytes -> (width, height), header only                probe_image       (shard, resize_at load)
    encoded bytes -> uint8 RGB (3, H, W)                         decode_image      (shard, loader, inference)
    [encoded bytes] -> [uint8 RGB (3, H, W) on a device]         decode_images     (training, train.decode_on device)
    uint8 (3, H, W) -> uint8 (3, S, S): naive | letterbox | crop prepare_image     (shard or loader, inference)
    uint8 (3, S, S) -> JPEG bytes                                encode_jpeg       (shard, resize_at shard)
    uint8 (3, S, S) -> random crop / flip, same size             augment           (fine-tuning loader, opt-in)
    uint8 (B, 3, S, S) -> [0, 1] -> ImageNet mean / std          normalize         (on the training device)

The resize is bilinear with antialiasing, which matches PIL's bilinear `resize` (the project's first
implementation) to within one grey level on a few pixels in a thousand (tests/data/test_preprocess.py
holds it to that), so the demo's shards are those of the PIL path up to JPEG rounding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as _tv_decode_image
from torchvision.io import decode_jpeg as _tv_decode_jpeg
from torchvision.io import encode_jpeg as _tv_encode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Letterbox padding: the normalisation mean as a colour, so the padding is zero after `normalize`
# (as Prismatic pads with its image processor's mean).
LETTERBOX_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)
RESIZE_MODES = ("naive", "letterbox", "crop")


def as_byte_tensor(data: bytes) -> torch.Tensor:
    """Encoded image bytes as the 1-D uint8 tensor torchvision's decoders take (copied: writable)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_image(data: bytes) -> torch.Tensor:
    """JPEG, PNG, WebP or GIF bytes -> uint8 RGB (3, H, W), fully decoded: a truncated or corrupt file
    raises here (RuntimeError), never later. Grey, palette, CMYK and alpha images become RGB (alpha
    dropped, as PIL's convert("RGB")). Other formats PIL reads (BMP, TIFF) are decoded by PIL."""
    try:
        return _tv_decode_image(as_byte_tensor(data), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        if "Unsupported image file" not in str(e):
            raise
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = image.convert("RGB")
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous()


JPEG_SIGNATURE = b"\xff\xd8\xff"


def decode_images(encoded: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """A batch of encoded images -> uint8 RGB (3, H, W) each on `device`, or None for one that cannot
    be decoded. The JPEGs are decoded together by torchvision's `decode_jpeg(list, device=...)`:
    nvJPEG, batched, on a GPU; on the CPU libjpeg-turbo, the decoder `decode_image` calls, so the
    pixels are decode_image's exactly. A call fails whole when one image fails, so then each JPEG is
    decoded alone; one the device cannot decode (nvJPEG does not take every JPEG libjpeg-turbo does),
    and every other format, goes through `decode_image` on the CPU and is moved to the device."""
    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if data[:3] == JPEG_SIGNATURE]
    if jpegs:
        tensors = [as_byte_tensor(encoded[i]) for i in jpegs]
        if device.type == "cuda":
            # The CUDA decoder allocates its outputs on this stream but writes them from its own
            # stream without waiting for this one, so it may overwrite memory that kernels queued
            # here still read (pytorch/vision#9606): let them finish first.
            torch.cuda.current_stream(device).synchronize()
        try:
            decoded = _tv_decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = []
            for data in tensors:
                try:
                    decoded.append(_tv_decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        for i, pixels in zip(jpegs, decoded):
            out[i] = pixels
    for i, data in enumerate(encoded):
        if out[i] is None:
            try:
                out[i] = decode_image(data).to(device)
            except Exception:  # noqa: BLE001 - any decoder's failure: the caller counts it
                pass
    return out


def probe_image(data: bytes) -> tuple[int, int]:
    """(width, height) read from the header alone (PIL's lazy open, some 40 µs): raises on bytes that
    are no image format PIL knows or whose header is cut short. Pixels that are corrupt behind a good
    header pass; decode_image finds them."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def prepare_image(pixels: torch.Tensor, image_size: int, resize_mode: str = "naive") -> torch.Tensor:
    """The model's input image, uint8 (3, image_size, image_size), bilinear with antialiasing:

    naive      squash the whole image to the square (the paper's; the aspect ratio is not kept)
    letterbox  pad the short side to a square with LETTERBOX_FILL, centred, then resize
    crop       resize the short side to image_size, then take the centre square
    """
    if resize_mode == "letterbox":
        height, width = pixels.shape[-2:]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        pixels = F.pad(pixels, [left, top, side - width - left, side - height - top], fill=list(LETTERBOX_FILL))
    elif resize_mode == "crop":
        pixels = F.resize(pixels, image_size, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        return F.center_crop(pixels, [image_size, image_size])
    elif resize_mode != "naive":
        raise ValueError(f"resize_mode {resize_mode!r}: allowed {', '.join(RESIZE_MODES)}")
    return F.resize(pixels, [image_size, image_size], interpolation=F.InterpolationMode.BILINEAR, antialias=True)


def encode_jpeg(pixels: torch.Tensor, quality: int) -> bytes:
    """uint8 (3, H, W) -> JPEG bytes (libjpeg's defaults: byte-identical to PIL's save at this quality)."""
    return _tv_encode_jpeg(pixels.contiguous(), quality=quality).numpy().tobytes()


@dataclass(frozen=True)
class Augment:
    """Training augmentation of a prepared image (opt-in per phase; the paper states none).

    crop_scale: RandomResizedCrop's area range (aspect ratio in [3/4, 4/3], torchvision's default),
                resized back to the image's size; None: no crop.
    hflip:      random horizontal flip with probability 1/2. Off by default: captions say "left"/"right".
    """

    crop_scale: tuple[float, float] | None = None
    hflip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_scale is not None or self.hflip

    def __call__(self, pixels: torch.Tensor, seed: int) -> torch.Tensor:
        """The same (image, seed) always gives the same output: the seed fixes every random draw, so
        a resumed epoch replays its augmentations exactly."""
        if not self.active:
            return pixels
        steps = []
        if self.crop_scale is not None:
            size = list(pixels.shape[-2:])
            steps.append(v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True))
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        # The transforms draw on the CPU's default generator whatever the pixels' device; seeding only
        # it (torch.manual_seed would also reseed the GPU's, which dropout draws from) inside fork_rng
        # leaves the training process's own random streams as they were.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return v2.Compose(steps)(pixels)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1] -> ImageNet mean/std normalised, on the images' device,
    contiguous whatever the images' layout (the loaders' batches are channels-last: the conversion
    transposes them as it reads them). (Divided by 255 rather than F.to_dtype's multiply by 1/255:
    bit-identical to the first version.)"""
    return F.normalize(images.to(torch.float32, memory_format=torch.contiguous_format) / 255.0,
                       IMAGENET_MEAN, IMAGENET_STD)
