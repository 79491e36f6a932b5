"""Augmented views: properties of flip and rotation, the ±15 degree range, and (seed, row, view) determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrfeat.augment import AUGMENTATION, draw, hflip, make_views, random_augment, rotate, view_keys


def _images(b=3, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype(np.float32)


def test_rotation_by_zero_is_the_identity():
    x = _images(h=33, w=40)
    np.testing.assert_array_equal(np.asarray(rotate(x, jnp.zeros(3))), x)


@pytest.mark.parametrize("size", [32, 33])
def test_rotation_by_90_matches_rot90_counter_clockwise(size):
    x = _images(h=size, w=size)
    out = np.asarray(rotate(x, jnp.array([90.0, 90.0, -90.0])))
    np.testing.assert_allclose(out[:2], np.rot90(x[:2], k=1, axes=(1, 2)), atol=1e-4)
    np.testing.assert_allclose(out[2], np.rot90(x[2], k=-1, axes=(0, 1)), atol=1e-4)
    # 180 degrees is both flips.
    np.testing.assert_allclose(np.asarray(rotate(x, jnp.full(3, 180.0))), x[:, ::-1, ::-1], atol=1e-4)


def test_small_rotation_turns_the_image_the_right_way():
    # A bright dot right of the centre moves up (towards row 0) under a positive (counter-clockwise) angle.
    x = np.zeros((1, 41, 41, 1), np.float32)
    x[0, 20, 35] = 1.0
    out = np.asarray(rotate(x, jnp.array([10.0])))[0, ..., 0]
    rows, cols = np.nonzero(out > 0.05)
    assert rows.mean() < 20 and cols.mean() > 30
    assert abs(out.sum() - 1.0) < 0.02  # a rotation keeps the mass (bilinear: nearly)


def test_rotation_fills_outside_with_zero():
    x = np.ones((1, 21, 21, 1), np.float32)
    out = np.asarray(rotate(x, jnp.array([45.0])))[0, ..., 0]
    assert out[0, 0] == 0.0 and out[10, 10] == pytest.approx(1.0)


def test_two_flips_are_the_identity():
    x = _images()
    np.testing.assert_array_equal(np.asarray(hflip(hflip(x))), x)
    np.testing.assert_array_equal(np.asarray(hflip(x)), x[:, :, ::-1])


def test_angles_are_degrees_within_15_and_flips_half():
    keys = view_keys(0, np.arange(4000), 1)
    flip, degrees = (np.asarray(a) for a in draw(keys))
    assert np.abs(degrees).max() <= 15.0
    assert np.abs(degrees).max() > 14.0  # not radians-sized, not a narrow range either
    assert abs(np.mean(np.abs(degrees)) - 7.5) < 0.5  # uniform on [-15, 15]
    assert 0.45 < flip.mean() < 0.55
    assert AUGMENTATION["rotation_degrees"] == [-15.0, 15.0] and AUGMENTATION["hflip_p"] == 0.5


def test_random_augment_is_flip_then_rotate_by_the_drawn_angle():
    x = _images(b=16)
    keys = view_keys(3, np.arange(16), 2)
    flip, degrees = draw(keys)
    expected = rotate(jnp.where(flip[:, None, None, None], x[:, :, ::-1], x), degrees)
    np.testing.assert_array_equal(np.asarray(random_augment(x, keys)), np.asarray(expected))
    assert 0 < int(flip.sum()) < 16


def test_views_depend_only_on_seed_row_and_view():
    x = _images(b=5, seed=1)
    rows = np.array([10, 11, 12, 13, 14])
    fn = jax.jit(make_views, static_argnums=3)
    views = np.asarray(fn(x, 7, rows, 4))
    assert views.shape == (5, 4, 32, 32, 3)
    np.testing.assert_array_equal(views[:, 0], x)  # view 0 is the plain image
    # Another batch composition: reversed order, and a row alone in a batch with a stranger.
    order = np.array([4, 3, 2, 1, 0])
    again = np.asarray(fn(x[order], 7, rows[order], 4))
    np.testing.assert_allclose(again, views[order], atol=1e-6)
    pair = np.asarray(fn(np.stack([x[2], _images(b=1, seed=9)[0]]), 7, np.array([12, 99]), 4))
    np.testing.assert_allclose(pair[0], views[2], atol=1e-6)
    # Different views, rows and seeds draw different augmentations.
    assert not np.allclose(views[:, 1], views[:, 2])
    assert not np.allclose(np.asarray(fn(x, 8, rows, 4)), views)
    same_image = np.asarray(fn(np.repeat(x[:1], 2, 0), 7, np.array([10, 11]), 2))
    assert not np.allclose(same_image[0, 1], same_image[1, 1])


def test_view_keys_are_fold_ins_of_seed_row_view():
    keys = view_keys(5, np.array([0, 123]), 3)
    ref = jax.random.fold_in(jax.random.fold_in(jax.random.key(5), 123), 3)
    np.testing.assert_array_equal(jax.random.key_data(keys[1]), jax.random.key_data(ref))
