"""Fixtures shared by the tests that run real images through a tiny ResNet (extraction, fine-tuning)."""

import os
import tempfile
from pathlib import Path

# JAX's persistent compilation cache, shared by the test processes (xdist workers and the CLI
# subprocesses the tests start): the suite compiles the same small programs many times (every sweep
# builds its groups' programs afresh), and a cache hit returns the executable XLA would build again,
# so nothing that is checked changes. Set before JAX is imported; an existing setting is kept.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"cxr-qtl-test-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(1 << 30))  # bytes; least recently used evicted

import pytest  # noqa: E402
from transformers import ResNetConfig  # noqa: E402

from cxrfeat.synth import write_synthetic  # noqa: E402

# A ResNet small enough for 2 CPU cores: the architecture code is the real one, only the sizes shrink.
TINY_RESNET = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 24], depths=[1, 1, 1, 1], layer_type="basic")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic dataset: 12/6/6 NIH-layout images and 6 external ones, 64 px."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, n_train=12, n_val=6, n_test=6, n_external=6, image_size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def backbone():
    """The tiny ResNet with seeded random weights."""
    from cxrfeat.backbone import load_backbone

    return load_backbone("random", seed=0, config=ResNetConfig(**TINY_RESNET))
