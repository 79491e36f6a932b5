"""Fixtures shared by the tests that run real images through a tiny ResNet (extraction, fine-tuning)."""

import pytest
from transformers import ResNetConfig

from cxrfeat.synth import write_synthetic

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
