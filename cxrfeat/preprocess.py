"""Image decoding and preprocessing, equal to the `AutoImageProcessor` of `microsoft/resnet-50`.

That checkpoint's `preprocessor_config.json` names a ConvNeXt processor (in transformers 5 the
`resnet` model type maps to `ConvNextImageProcessor`/`ConvNextImageProcessorPil`) with
`size=224, crop_pct=0.875, resample=3 (bicubic)` and the ImageNet mean/std. For sizes below 384
it resizes the short side to int(224 / 0.875) = 256 with PIL bicubic on the uint8 image (the
long side to int(256 * long / short)), centre-crops 224 x 224 (top = (h - 224) // 2), rescales
by 1/255 and normalises. `tests/test_preprocess.py` checks `preprocess` against that processor.

Grey images are resized as one channel and then repeated to RGB: PIL's bicubic resampling works
per channel with the same rounding, so this equals resizing the RGB image, at a third of the cost.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrfeat.errors import UserError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # IMAGENET_DEFAULT_MEAN
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)  # IMAGENET_DEFAULT_STD
CROP = 224
CROP_PCT = 0.875
RESIZE = int(CROP / CROP_PCT)  # 256

PREPROCESSING: dict = {
    "reference": "AutoImageProcessor of microsoft/resnet-50 (ConvNextImageProcessor: size 224, crop_pct 0.875)",
    "convert": "RGB (grey repeated; alpha composited on white as transformers does; 16-bit min-max scaled to 8-bit)",
    "resize_shortest_edge": RESIZE,
    "resample": "bicubic (PIL, on uint8)",
    "center_crop": [CROP, CROP],
    "rescale_factor": 1 / 255,
    "mean": MEAN.tolist(),
    "std": STD.tolist(),
    "layout": "HWC float32",
}


# The largest image decoded: 8192 x 8192 pixels, twice the side of the largest plausible radiograph
# (digital detectors give at most ~4300 x 4300; NIH PNGs are 1024 x 1024). A bigger file is refused
# before its pixels are decoded (a "decompression bomb" would exhaust memory); `--skip-bad` skips it.
# Set the environment variable CXR_MAX_IMAGE_PIXELS to change it.
MAX_PIXELS_ENV = "CXR_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192
# Pillow's own guard (a warning above 89 M pixels, an error above twice that, raised inside
# `Image.open`) is replaced by ours, which runs on the header before any pixel is decoded and names
# the size and the setting.
Image.MAX_IMAGE_PIXELS = None


def max_pixels() -> int:
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_PIXELS_ENV}={raw!r}: must be a positive number of pixels (default {DEFAULT_MAX_PIXELS})")
    return value


class ImageError(UserError):
    """A missing, unreadable, truncated, corrupt or oversized image file (the message names the file)."""


def _open(path: str | Path) -> Image.Image:
    """Decode fully (so truncation shows here) and reduce to mode 'L' (grey) or 'RGB'."""
    path = Path(path)
    limit = max_pixels()
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise ImageError(f"{path}: image of {w} x {h} = {w * h:,} pixels is larger than the limit of "
                                 f"{limit:,} (a decompression bomb, or not a radiograph); set {MAX_PIXELS_ENV} "
                                 f"to allow it")
            im.load()
            return _to_l_or_rgb(im)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large to decode safely ({e})") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except PermissionError:
        raise ImageError(f"{path}: image file not readable (permission denied)") from None
    except MemoryError:
        raise ImageError(f"{path}: out of memory decoding the image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: unreadable or corrupt image ({e})") from e


def _to_l_or_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("L", "RGB"):
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit radiographs often use only 10-14 bits: stretch the image's own range to 8 bits.
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        # As transformers' convert_to_rgb: composite on white.
        rgba = im.convert("RGBA")
        out = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        # Grey + alpha stays grey (R = G = B, so converting to L is exact).
        return out.convert("L") if im.mode == "LA" else out
    if im.mode == "1":
        return im.convert("L")
    return im.convert("RGB")


def resize_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to 256, as transformers computes it."""
    if width <= height:
        return int(RESIZE * height / width), RESIZE
    return RESIZE, int(RESIZE * width / height)


def preprocess(img: Image.Image) -> np.ndarray:
    """PIL image -> float32 (224, 224, 3) normalised HWC array, like microsoft/resnet-50's processor."""
    if img.mode not in ("L", "RGB"):
        img = _to_l_or_rgb(img)
    h, w = resize_size(img.height, img.width)
    a = np.asarray(img.resize((w, h), resample=Image.Resampling.BICUBIC))
    top, left = (h - CROP) // 2, (w - CROP) // 2
    a = a[top : top + CROP, left : left + CROP]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (x - MEAN) / STD


def load_and_preprocess(path: str | Path) -> np.ndarray:
    """Decode and preprocess one image file (grey images stay one channel until after the resize)."""
    return preprocess(_open(path))
