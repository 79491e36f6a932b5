"""Preprocessing equals the AutoImageProcessor of microsoft/resnet-50 (transformers' PIL backend)."""

import json

import numpy as np
import pytest
from PIL import Image

from cxrfeat.errors import UserError
from cxrfeat.preprocess import PREPROCESSING, ImageError, _open, load_and_preprocess, preprocess

# microsoft/resnet-50's preprocessor_config.json, as published on the hub.
HUB_PREPROCESSOR_CONFIG = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    """transformers' own processor for that checkpoint, built offline from its config files."""
    from transformers import AutoImageProcessor, ResNetConfig

    folder = tmp_path_factory.mktemp("resnet-50")
    (folder / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR_CONFIG))
    ResNetConfig().save_pretrained(folder)
    proc = AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert proc.size["shortest_edge"] == 224 and proc.crop_pct == 0.875 and proc.resample == 3
    return proc


def _reference(processor, img):
    out = processor(images=img, do_convert_rgb=True, return_tensors=None)["pixel_values"][0]
    return np.moveaxis(np.asarray(out), 0, -1)  # CHW -> HWC


def _random_image(rng, mode, h, w):
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    a = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    # Smooth content as well as noise, so bicubic overshoot and clipping are exercised.
    a[: h // 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode=mode)


@pytest.mark.parametrize(
    ("mode", "h", "w"),
    [("L", 1024, 1024), ("L", 300, 257), ("RGB", 225, 400), ("RGBA", 513, 611), ("LA", 100, 80), ("RGB", 224, 224),
     ("L", 97, 131)],
)
def test_preprocess_equals_transformers_processor(processor, tmp_path, mode, h, w):
    rng = np.random.default_rng(h * w)
    img = _random_image(rng, mode, h, w)
    ref = _reference(processor, img)
    out = preprocess(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    # Same uint8 bicubic resize, crop offsets and float32 arithmetic: equal, not merely close.
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    # Through a file, as extraction reads it (grey stays one channel until after the resize).
    path = tmp_path / "x.png"
    img.save(path)
    np.testing.assert_allclose(load_and_preprocess(path), ref, rtol=0, atol=1e-6)


def test_palette_image_is_converted_like_transformers(processor, tmp_path):
    img = _random_image(np.random.default_rng(1), "RGB", 260, 300).convert("P")
    np.testing.assert_allclose(preprocess(img), _reference(processor, img), atol=1e-6)


def test_16_bit_grey_is_stretched_to_8_bit(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(100, 4096, (240, 260), dtype=np.uint16)  # 12-bit data in a 16-bit PNG
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    img = _open(path)
    expected = np.round((a - a.min()) * (255.0 / (a.max() - a.min()))).astype(np.uint8)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), expected)
    np.testing.assert_allclose(load_and_preprocess(path), preprocess(Image.fromarray(expected)), atol=1e-6)


def test_bad_files_raise_image_error_naming_the_file(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageError, match=r"missing.png: image file not found"):
        load_and_preprocess(missing)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"junk.png: unreadable or corrupt image"):
        load_and_preprocess(junk)
    good = tmp_path / "good.png"
    _random_image(np.random.default_rng(0), "L", 300, 300).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match=r"cut.png"):
        load_and_preprocess(cut)
    assert issubclass(ImageError, UserError)


def test_preprocessing_description_is_json_and_names_the_reference():
    text = json.dumps(PREPROCESSING)
    assert "microsoft/resnet-50" in text
    assert PREPROCESSING["resize_shortest_edge"] == 256 and PREPROCESSING["center_crop"] == [224, 224]
    assert PREPROCESSING["mean"] == pytest.approx([0.485, 0.456, 0.406])
