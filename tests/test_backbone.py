"""The Flax ResNet backbone and its checkpoints (tiny configs; nothing is downloaded)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from transformers import ResNetConfig

from cxrfeat.backbone import (
    RANDOM_WEIGHTS_WARNING,
    ResNet,
    announce_random_weights,
    count_params,
    init_shapes,
    load_backbone,
)
from cxrfeat.errors import UserError
from cxrfeat.weights import save_checkpoint

TINY = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 2, 1])
VARIANTS = {
    "bottleneck": ResNetConfig(**TINY),
    "bottleneck-downsample-first-stage-and-in-bottleneck": ResNetConfig(
        **TINY, downsample_in_first_stage=True, downsample_in_bottleneck=True
    ),
    "basic": ResNetConfig(embedding_size=8, hidden_sizes=[8, 12, 16, 24], depths=[2, 1, 2, 1], layer_type="basic"),
}


def images(shape=(3, 64, 64, 3), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def tiny_checkpoint(folder, seed=0, config=None):
    """A checkpoint folder in transformers' format, written without torch from seeded random weights."""
    backbone = load_backbone("random", seed=seed, config=config or ResNetConfig(**TINY))
    return save_checkpoint(backbone, folder), backbone


# ------------------------------------------------------------------------------------ architecture


def test_resnet50_parameter_count_matches_the_paper():
    shapes = init_shapes(ResNet.from_config(ResNetConfig()))
    # Table II: ResNet50 23,508,032 = conv kernels + BN scale and bias; running statistics are not parameters.
    assert count_params(shapes["params"]) == 23_508_032
    assert count_params(shapes["batch_stats"]) == 2 * 26_560  # a mean and a var per BN channel


@pytest.fixture(scope="module")
def resnet50():
    """The random-weight ResNet-50 (seed 0), built once for the tests that only read it."""
    return load_backbone("random", seed=0)


def test_random_resnet50_embeds_224_images_to_2048(resnet50):
    backbone = resnet50
    assert backbone.dim == 2048
    assert count_params(backbone.params) == 23_508_032
    out = backbone.embed(images((2, 224, 224, 3)))
    assert out.shape == (2, 2048) and out.dtype == np.float32
    assert np.isfinite(np.asarray(out)).all()
    assert backbone.description["random"] is True and backbone.description["seed"] == 0
    assert backbone.description["architecture"]["hidden_sizes"] == [256, 512, 1024, 2048]


def test_random_weights_are_seeded_and_initialised_like_transformers(resnet50):
    cfg = ResNetConfig(**TINY)
    a, b, c = (load_backbone("random", seed=s, config=cfg) for s in (3, 3, 4))
    leaves = jax.tree.leaves
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a.params), leaves(b.params), strict=True))
    assert not np.array_equal(a.embed(images()), c.embed(images()))
    np.testing.assert_array_equal(a.embed(images()), b.embed(images()))
    # Big enough to check the He-normal (fan_out) scale: ResNet-50's last 3x3 conv.
    r50 = resnet50
    kernel = np.asarray(r50.params["encoder"]["stages_3"]["layers_0"]["layer_1"]["convolution"]["kernel"])
    assert kernel.shape == (3, 3, 512, 512)
    assert abs(kernel.std() / np.sqrt(2 / (512 * 9)) - 1) < 0.01 and abs(kernel.mean()) < 1e-3
    bn = r50.params["embedder"]["embedder"]["normalization"]
    stats = r50.batch_stats["embedder"]["embedder"]["normalization"]
    assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)
    assert np.all(stats["mean"] == 0) and np.all(stats["var"] == 1)


def test_batchnorm_uses_running_statistics_so_an_image_ignores_its_batch():
    backbone = load_backbone("random", seed=1, config=ResNetConfig(**TINY))
    x = images((4, 64, 64, 3), seed=2)
    alone = backbone.embed(x[:1])
    together = backbone.embed(x)[:1]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    # apply() needs no mutable collections: nothing is updated (Flax refuses an update of an immutable
    # collection while tracing, so tracing the call for its output shape checks it without running it op by op).
    out = jax.eval_shape(backbone.module.apply, {"params": backbone.params, "batch_stats": backbone.batch_stats}, x)
    assert out.shape == (4, 32)


def test_embed_compiles_once_per_batch_shape():
    backbone = load_backbone("random", seed=0, config=ResNetConfig(**TINY))
    backbone.embed(images((2, 64, 64, 3)))
    backbone.embed(images((2, 64, 64, 3), seed=1))
    assert backbone.traces == 1
    backbone.embed(images((5, 64, 64, 3)))
    assert backbone.traces == 2


def test_random_weights_warning_is_loud(capsys):
    assert "random" in RANDOM_WEIGHTS_WARNING.lower() and "--weights" in RANDOM_WEIGHTS_WARNING
    announce_random_weights(seed=7)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "RANDOM BACKBONE WEIGHTS" in captured.err and "seed 7" in captured.err


def test_description_is_json():
    backbone = load_backbone("random", seed=5, config=ResNetConfig(**TINY))
    assert json.loads(json.dumps(backbone.description)) == backbone.description


# ------------------------------------------------------------------------------------ checkpoints


def test_saved_checkpoint_round_trips(tmp_path):
    folder, original = tiny_checkpoint(tmp_path / "ckpt", seed=2)
    loaded = load_backbone(str(folder))
    np.testing.assert_array_equal(loaded.embed(images()), original.embed(images()))
    assert loaded.description["name"] == str(folder.resolve())
    assert len(loaded.description["sha256"]) == 64 and loaded.description["random"] is False
    assert loaded.description["architecture"] == original.description["architecture"]


def test_classifier_checkpoint_keys_load(tmp_path):
    """`ResNetForImageClassification` layout: `resnet.` prefix and a classifier to ignore."""
    folder, original = tiny_checkpoint(tmp_path / "ckpt", seed=2)
    tensors = load_file(folder / "model.safetensors")
    tensors = {f"resnet.{k}": v for k, v in tensors.items()}
    tensors["classifier.1.weight"] = np.zeros((2, 32), np.float32)
    tensors["classifier.1.bias"] = np.zeros((2,), np.float32)
    tensors["resnet.embedder.embedder.normalization.num_batches_tracked"] = np.array(0, np.int64)
    save_file(tensors, folder / "model.safetensors")
    loaded = load_backbone(str(folder))
    np.testing.assert_array_equal(loaded.embed(images()), original.embed(images()))


def _rewrite(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
    folder, _ = tiny_checkpoint(tmp_path / "ckpt")
    key = "encoder.stages.2.layers.1.layer.1.normalization.running_var"
    _rewrite(folder, lambda t: t.pop(key))
    with pytest.raises(UserError, match=r"1 missing tensor\(s\): " + key.replace(".", r"\.")):
        load_backbone(str(folder))

    folder, _ = tiny_checkpoint(tmp_path / "ckpt2")
    _rewrite(folder, lambda t: t.update({"encoder.stages.9.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(UserError, match=r"unexpected tensor\(s\): encoder\.stages\.9\.extra\.weight"):
        load_backbone(str(folder))

    folder, _ = tiny_checkpoint(tmp_path / "ckpt3")
    conv = "encoder.stages.0.layers.0.layer.1.convolution.weight"
    _rewrite(folder, lambda t: t.update({conv: np.zeros((2, 2, 1, 3), np.float32)}))
    with pytest.raises(UserError, match=conv.replace(".", r"\.") + r" is \[2, 2, 1, 3\], expected \[2, 2, 3, 3\]"):
        load_backbone(str(folder))

    folder, _ = tiny_checkpoint(tmp_path / "ckpt4")
    _rewrite(folder, lambda t: t[conv].__setitem__((0, 0, 0, 0), np.nan))
    with pytest.raises(UserError, match="NaN"):
        load_backbone(str(folder))


def test_config_and_checkpoint_must_agree(tmp_path):
    folder, _ = tiny_checkpoint(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["depths"] = [1, 1, 1, 1]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"unexpected tensor\(s\): encoder\.stages\.2\.layers\.1\."):
        load_backbone(str(folder))


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "model.safetensors").write_bytes(b"not safetensors"), "cannot read it as safetensors"),
        (lambda d: (d / "config.json").write_text('{"model_type": "vit"}'), "not 'resnet'"),
        (lambda d: (d / "config.json").write_text('{"model_type": "resnet", "hidden_act": "gelu"}'), "only relu"),
    ],
)
def test_broken_folders_are_clear_errors(tmp_path, setup, message):
    folder, _ = tiny_checkpoint(tmp_path / "ckpt")
    setup(folder)
    with pytest.raises(UserError, match=message):
        load_backbone(str(folder))


def test_a_missing_folder_is_not_mistaken_for_a_hub_name(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_backbone(str(tmp_path / "nowhere" / "resnet"))


def test_unreachable_hub_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import, so patch the constant too
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError) as error:
        load_backbone("microsoft/resnet-50")
    message = str(error.value)
    assert "HF_HUB_OFFLINE is set" in message and "--weights DIR" in message and "--weights random" in message


def test_hub_name_loads_from_the_cache_offline_and_records_the_revision(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--cxr-qtl--tiny-resnet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _, original = tiny_checkpoint(repo / "snapshots" / commit, seed=6)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    loaded = load_backbone("cxr-qtl/tiny-resnet")
    assert loaded.description["name"] == "cxr-qtl/tiny-resnet"
    assert loaded.description["revision"] == commit and len(loaded.description["sha256"]) == 64
    np.testing.assert_array_equal(loaded.embed(images()), original.embed(images()))


def test_config_is_only_for_random_weights(tmp_path):
    folder, _ = tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="random"):
        load_backbone(str(folder), config=ResNetConfig(**TINY))


# ------------------------------------------------------------------------------------ parity with transformers


def _torch_model(torch, cls, config, seed):
    """transformers' PyTorch model with random weights and random BN affine and running statistics."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _torch_embed(torch, model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    return out.pooler_output.flatten(1).numpy()


@pytest.mark.parity
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("size", [64, 75])  # 75: odd sizes exercise the padding of every strided layer
def test_matches_transformers_resnet(tmp_path, variant, size):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    from transformers import ResNetModel

    model = _torch_model(torch, ResNetModel, VARIANTS[variant], seed=0)
    model.save_pretrained(tmp_path)
    backbone = load_backbone(str(tmp_path))
    x = images((3, size, size, 3), seed=1)
    ours = np.asarray(backbone.embed(x))
    theirs = _torch_embed(torch, model, x)
    assert ours.shape == theirs.shape == (3, backbone.dim)
    assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
    assert np.abs(theirs).max() > 0.1  # the comparison is not between two near-zero outputs


@pytest.mark.parity
def test_image_classification_checkpoint_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    from transformers import ResNetForImageClassification

    config = ResNetConfig(**TINY, num_labels=5)
    model = _torch_model(torch, ResNetForImageClassification, config, seed=1)
    model.save_pretrained(tmp_path)
    backbone = load_backbone(str(tmp_path))
    x = images(seed=3)
    with torch.no_grad():
        theirs = model.resnet(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).pooler_output.flatten(1).numpy()
    assert np.abs(np.asarray(backbone.embed(x)) - theirs).max() < 1e-4


@pytest.mark.parity
def test_transformers_reads_our_checkpoints(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    from transformers import ResNetModel

    folder, backbone = tiny_checkpoint(tmp_path / "ckpt", seed=4, config=VARIANTS["basic"])
    model = ResNetModel.from_pretrained(folder).eval()
    x = images(seed=5)
    assert np.abs(np.asarray(backbone.embed(x)) - _torch_embed(torch, model, x)).max() < 1e-4
