"""Augmented views on the device: horizontal flip (p = 0.5) and rotation uniform in ±15 degrees.

Everything works on NHWC batches of preprocessed (normalised) images and is jittable. Each view is
drawn from its own key, `fold_in(fold_in(key(seed), row), view)`, so the same (seed, row, view)
always gives the same augmentation whatever batch the row is in.

Rotation is about the image centre ((H - 1) / 2, (W - 1) / 2) with bilinear interpolation;
positive angles turn the image counter-clockwise as displayed (row 0 at the top), like
`np.rot90`. Pixels that come from outside the image are filled with 0 in the normalised space,
i.e. the ImageNet mean colour (dm-pix's default `cval=0` on normalised inputs). The flip, when
drawn, is applied before the rotation.

Angles are in degrees and converted once, here: a public implementation of the paper passed 15 to
a function that takes radians (±859 degrees); `tests/test_augment.py` checks the drawn range.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_DEGREES = 15.0
FLIP_P = 0.5
FILL = 0.0

AUGMENTATION: dict = {
    "hflip_p": FLIP_P,
    "rotation_degrees": [-MAX_DEGREES, MAX_DEGREES],
    "rotation_distribution": "uniform",
    "order": "flip, then rotate",
    "interpolation": "bilinear",
    "rotation_centre": "image centre ((H-1)/2, (W-1)/2); positive = counter-clockwise",
    "fill": "0 in normalised space (the ImageNet mean colour)",
    "applied_to": "the preprocessed 224x224 normalised image, on the device",
    "keys": "view v of row r: fold_in(fold_in(jax.random.key(seed), r), v); "
    "flip ~ bernoulli(split(k)[0], 0.5), angle ~ uniform(split(k)[1], -15, 15) degrees",
    "view_0": "the plain image (no augmentation)",
}


def hflip(images: jax.Array) -> jax.Array:
    """Mirror NHWC images left-right."""
    return images[:, :, ::-1, :]


def _rotate_one(image: jax.Array, radians: jax.Array) -> jax.Array:
    h, w, _ = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    c, s = jnp.cos(radians), jnp.sin(radians)
    # Output pixel (y, x) samples the input at the inverse rotation of (y, x).
    src_y = c * y + s * x + cy
    src_x = -s * y + c * x + cx
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    wy, wx = (src_y - y0)[..., None], (src_x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

    def tap(yy, xx):
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        v = image[jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)]
        return jnp.where(inside[..., None], v, jnp.asarray(FILL, image.dtype))

    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    return (top * (1 - wy) + bottom * wy).astype(image.dtype)


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotate each NHWC image by its own angle in degrees (B,), bilinear, about the centre."""
    radians = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    radians = jnp.broadcast_to(radians, images.shape[:1])
    return jax.vmap(_rotate_one)(images, radians)


def draw(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-key (flip: bool, angle in degrees) — the random choices of `random_augment`."""

    def one(key):
        kf, ka = jax.random.split(key)
        return jax.random.bernoulli(kf, FLIP_P), jax.random.uniform(ka, (), jnp.float32, -MAX_DEGREES, MAX_DEGREES)

    return jax.vmap(one)(keys)


def random_augment(images: jax.Array, keys: jax.Array) -> jax.Array:
    """Flip with p = 0.5, then rotate uniformly in ±15 degrees; one key per image."""
    flip, degrees = draw(keys)
    images = jnp.where(flip[:, None, None, None], hflip(images), images)
    return rotate(images, degrees)


def view_keys(seed: int | jax.Array, rows, view: int | jax.Array) -> jax.Array:
    """Keys (B,) for view `view` of the given dataset rows: fold_in(fold_in(key(seed), row), view)."""
    base = jax.random.key(seed)
    rows = jnp.asarray(rows, jnp.uint32)
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base, r), view))(rows)


def make_views(images: jax.Array, seed: int | jax.Array, rows, views: int) -> jax.Array:
    """(B, H, W, C) -> (B, views, H, W, C): view 0 the plain image, views 1.. augmented from (seed, row, view)."""
    images = jnp.asarray(images)
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    out = [images]
    for v in range(1, views):
        out.append(random_augment(images, view_keys(seed, rows, v)))
    return jnp.stack(out, axis=1)

