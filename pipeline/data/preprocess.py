"""Image preprocessing (docs/paper.md §Image preprocessing), one definition for every path: the shard
stage resizes with `prepare_image`, and training, evaluation and inference all see what it made.

    any image -> RGB -> image_size x image_size, bilinear (PIL)       prepare_image  (shard, inference)
    uint8 (B, 3, S, S) -> [0, 1] -> ImageNet mean / std normalised    normalize      (loader, inference)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def prepare_image(image: Image.Image, image_size: int) -> Image.Image:
    """The model's input image: RGB, squashed to a square of `image_size` with bilinear resampling."""
    return image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image -> uint8 (3, H, W)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [0, 1] -> ImageNet mean/std normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
