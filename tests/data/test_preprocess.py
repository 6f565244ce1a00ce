"""The one image preprocessing (pipeline/data/preprocess.py): torchvision's decode and resize held to
the PIL path the project started with, the three resize modes, JPEG encoding, augmentation."""

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.data.preprocess import (IMAGENET_MEAN, IMAGENET_STD, LETTERBOX_FILL, Augment, decode_image,
                                      decode_images, encode_jpeg, normalize, prepare_image)


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Shapes of random colours on a random background, with a soft gradient (JPEG-friendly)."""
    rng = random.Random(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = np.array([rng.randrange(256) for _ in range(3)])[None, None, :]
    pixels = (base * (0.6 + 0.4 * x * y)).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(pixels, (height, width, 3)).copy())
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        draw.ellipse([x0, y0, x0 + rng.randrange(10, width), y0 + rng.randrange(10, height)],
                     fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def encoded(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def pil_prepare(data: bytes, size: int) -> np.ndarray:
    """The project's first preprocessing: PIL decode, convert("RGB"), bilinear resize to the square."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.int16)


def hwc(pixels: torch.Tensor) -> np.ndarray:
    return pixels.permute(1, 2, 0).numpy().astype(np.int16)


# Tolerance of the torchvision path against PIL's: at most one grey level (rounding), on under 5% of
# the values. Measured on these images: 0.02% (500x333 -> 64), 3.0% (333x500 -> 288, a gradient
# shrunk by only 13%: many values near .5), none when enlarging (640x480 -> 32 and 120x90 -> 288 exact).
MAX_LEVELS, MAX_FRACTION = 1, 0.05


@pytest.mark.parametrize("width,height,size", [(500, 333, 64), (333, 500, 288), (640, 480, 32), (120, 90, 288)])
def test_naive_resize_matches_the_pil_path_within_the_stated_tolerance(width, height, size):
    data = encoded(photo_like(width, height, seed=width), quality=90)
    ours = hwc(prepare_image(decode_image(data), size))
    theirs = pil_prepare(data, size)
    difference = np.abs(ours - theirs)
    assert ours.shape == theirs.shape == (size, size, 3)
    assert difference.max() <= MAX_LEVELS
    assert (difference > 0).mean() < MAX_FRACTION


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"),
                                      ("RGBA", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP")])
def test_decode_gives_pils_rgb_pixels_exactly(mode, fmt):
    data = encoded(photo_like(80, 60, seed=3).convert(mode), fmt)
    with Image.open(io.BytesIO(data)) as image:
        expected = np.array(image.convert("RGB"), dtype=np.int16)
    assert np.array_equal(hwc(decode_image(data)), expected)  # BMP through the PIL fallback


def test_truncated_or_foreign_bytes_raise_at_decode():
    data = encoded(photo_like(200, 150, seed=4), quality=90)
    with pytest.raises(RuntimeError, match="truncated"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(Exception):  # noqa: B017 - PIL's UnidentifiedImageError (an OSError) for non-images
        decode_image(b"not an image at all" * 10)


def test_a_batch_decoded_together_is_decode_images_one_by_one_and_a_bad_one_is_none():
    """decode_images (train.decode_on device; the CPU here) decodes a batch's JPEGs in one call and
    anything else one by one: the pixels are decode_image's exactly, a grey or CMYK JPEG comes out
    RGB, and an image no decoder reads is None without costing the others."""
    good = [encoded(photo_like(90, 60, seed=i), quality=85) for i in range(3)]
    grey, cmyk = (encoded(photo_like(50, 70, seed=9).convert(mode), "JPEG") for mode in ("L", "CMYK"))
    png = encoded(photo_like(40, 40, seed=8).convert("P"), "PNG")
    batch = [good[0], grey, png, good[1], cmyk, good[2]]
    out = decode_images(batch, torch.device("cpu"))
    assert all(torch.equal(x, decode_image(data)) for x, data in zip(out, batch))
    assert all(x.shape[0] == 3 for x in out)
    cut = good[1][: len(good[1]) // 2]  # a JPEG's header and half its pixels: the batched call fails
    out = decode_images([good[0], cut, b"not an image at all" * 4, png], torch.device("cpu"))
    assert out[1] is None and out[2] is None
    assert torch.equal(out[0], decode_image(good[0])) and torch.equal(out[3], decode_image(png))


def test_encode_jpeg_is_pils_jpeg_byte_for_byte():
    pixels = prepare_image(decode_image(encoded(photo_like(300, 200, seed=5), quality=90)), 64)
    assert encode_jpeg(pixels, 95) == encoded(Image.fromarray(hwc(pixels).astype(np.uint8)), quality=95)


def stripes(width: int, height: int) -> torch.Tensor:
    """Three vertical stripes, red | green | blue, of equal width."""
    pixels = torch.zeros(3, height, width, dtype=torch.uint8)
    third = width // 3
    pixels[0, :, :third], pixels[1, :, third : 2 * third], pixels[2, :, 2 * third :] = 255, 255, 255
    return pixels


def test_the_three_resize_modes_on_a_non_square_image():
    wide = stripes(300, 100)
    naive, letterbox, crop = (prepare_image(wide, 30, mode) for mode in ("naive", "letterbox", "crop"))
    assert naive.shape == letterbox.shape == crop.shape == (3, 30, 30)
    # naive squashes: all three stripes stay, each a third of the width
    assert naive[:, 15, 5].tolist() == [255, 0, 0] and naive[:, 15, 15].tolist() == [0, 255, 0]
    assert naive[:, 15, 25].tolist() == [0, 0, 255]
    # letterbox keeps the aspect ratio: bands of the mean colour above and below, the stripes between
    assert letterbox[:, :9].flatten(1).unique(dim=1).T.tolist() == [list(LETTERBOX_FILL)]
    assert letterbox[:, 21:].flatten(1).unique(dim=1).T.tolist() == [list(LETTERBOX_FILL)]
    assert letterbox[:, 15, 5].tolist() == [255, 0, 0] and letterbox[:, 15, 25].tolist() == [0, 0, 255]
    # crop keeps the centre square: the green stripe (its outer columns blend with the neighbours)
    assert crop[:, :, 2:-2].flatten(1).unique(dim=1).T.tolist() == [[0, 255, 0]]
    assert crop[0, :, 0].max() > 0 and crop[2, :, -1].max() > 0  # red and blue only where they blend in
    # a tall image: letterbox pads left and right, crop keeps the middle rows
    tall = stripes(300, 100).transpose(1, 2)  # horizontal stripes, 100 wide and 300 high
    assert prepare_image(tall, 30, "crop")[:, 2:-2].flatten(1).unique(dim=1).T.tolist() == [[0, 255, 0]]
    assert prepare_image(tall, 30, "letterbox")[:, :, :9].flatten(1).unique(dim=1).T.tolist() == [list(LETTERBOX_FILL)]
    with pytest.raises(ValueError, match="resize_mode 'stretch'"):
        prepare_image(wide, 30, "stretch")


def test_letterbox_padding_is_zero_after_normalisation():
    padded = normalize(prepare_image(stripes(300, 100), 30, "letterbox")[None])
    assert padded[0, :, :9].abs().max() < 0.01  # the fill is the ImageNet mean, rounded to grey levels


def test_normalize_is_the_imagenet_formula():
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(normalize(pixels), (pixels.float() / 255.0 - mean) / std)


def test_augment_is_a_function_of_its_seed_and_off_by_default():
    pixels = prepare_image(decode_image(encoded(photo_like(200, 200, seed=6))), 32)
    assert not Augment().active and Augment()(pixels, seed=1) is pixels
    crop = Augment(crop_scale=(0.3, 0.6))
    assert torch.equal(crop(pixels, seed=7), crop(pixels, seed=7))  # the same seed, the same crop
    outs = [crop(pixels, seed=s) for s in range(6)]
    assert all(o.shape == pixels.shape and o.dtype == torch.uint8 for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) == 6  # different seeds, different crops
    flip = Augment(hflip=True)
    flipped = [torch.equal(flip(pixels, seed=s), pixels.flip(-1)) for s in range(40)]
    unchanged = [torch.equal(flip(pixels, seed=s), pixels) for s in range(40)]
    assert all(f or u for f, u in zip(flipped, unchanged)) and 10 < sum(flipped) < 30  # p = 1/2
    state = torch.random.get_rng_state()
    crop(pixels, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone


def test_augment_leaves_the_gpu_generators_alone(monkeypatch):
    """The training process augments on its device with train.decode_on device: reseeding the GPU's
    generators there (torch.manual_seed does) would tie its dropout masks to the augmentation seeds."""
    pixels = torch.zeros(3, 16, 16, dtype=torch.uint8)
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    Augment(crop_scale=(0.5, 1.0), hflip=True)(pixels, seed=5)
    assert calls == []
