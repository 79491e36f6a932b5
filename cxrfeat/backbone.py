"""The Flax ResNet backbone: ResNet v1.5 exactly as transformers' `ResNetModel`, NHWC.

The module tree mirrors transformers' PyTorch module tree (`embedder/embedder`, `encoder/stages_0/
layers_1/layer_2`, `.../shortcut`), so that checkpoint keys map onto it mechanically
(`cxrfeat.weights`). v1.5: a strided bottleneck downsamples in its 3x3 convolution, not in the
first 1x1 (unless the config sets `downsample_in_bottleneck`).

BatchNorm always normalises with its running statistics (`use_running_average=True`), in
extraction and in fine-tuning alike: the statistics live in the `batch_stats` collection, which is
never handed to an optimizer, and an image's embedding never depends on the rest of its batch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from transformers import ResNetConfig

from cxrfeat.errors import UserError

BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default, which transformers' ResNet uses
ARCHITECTURE_KEYS = (
    "num_channels",
    "embedding_size",
    "hidden_sizes",
    "depths",
    "layer_type",
    "hidden_act",
    "downsample_in_first_stage",
    "downsample_in_bottleneck",
)

# transformers' `_init_weights`: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

RANDOM_WEIGHTS_WARNING = (
    "RANDOM BACKBONE WEIGHTS (--weights random): the ResNet has seeded random weights, not the "
    "pretrained microsoft/resnet-50 checkpoint. Its embeddings carry no ImageNet knowledge, so "
    "every AUROC computed from them is meaningless for research: use this only for smoke runs "
    "and demos. It is recorded as `random` (with its seed) in every store and run made from it. "
    "For real results pass `--weights microsoft/resnet-50` (needs the Hugging Face hub or its "
    "cache) or `--weights DIR` (a folder with config.json and model.safetensors)."
)


def announce_random_weights(seed: int | None = None) -> None:
    """Print `RANDOM_WEIGHTS_WARNING` as a red panel on stderr (callers do this for `--weights random`)."""
    from rich.console import Console
    from rich.panel import Panel

    title = "WARNING: random backbone weights" + (f" (seed {seed})" if seed is not None else "")
    Console(stderr=True, file=sys.stderr).print(
        Panel(RANDOM_WEIGHTS_WARNING, title=title, border_style="bold red", style="red")
    )


class ConvLayer(nn.Module):
    """Conv (no bias, padding k//2 on every side) + BatchNorm (+ ReLU): transformers' `ResNetConvLayer`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    activate: bool = True

    @nn.compact
    def __call__(self, x):
        # Explicit symmetric padding as in torch; "SAME" would pad (0, 1) for stride 2 on even sizes.
        pad = self.kernel_size // 2
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=he_normal_fan_out,
            name="convolution",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="normalization")(x)
        return nn.relu(x) if self.activate else x


class BasicLayer(nn.Module):
    """Two 3x3 convs with a residual connection (projected by a 1x1 conv + BN when the shape changes)."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        if x.shape[-1] != self.features or self.stride != 1:
            residual = ConvLayer(self.features, 1, self.stride, activate=False, name="shortcut")(x)
        h = ConvLayer(self.features, 3, self.stride, name="layer_0")(x)
        h = ConvLayer(self.features, 3, activate=False, name="layer_1")(h)
        return nn.relu(h + residual)


class BottleNeckLayer(nn.Module):
    """1x1 reduce (by 4), 3x3, 1x1 expand, residual; the stride sits in the 3x3 conv (v1.5)."""

    features: int
    stride: int = 1
    downsample_in_bottleneck: bool = False
    reduction: int = 4

    @nn.compact
    def __call__(self, x):
        residual = x
        if x.shape[-1] != self.features or self.stride != 1:
            residual = ConvLayer(self.features, 1, self.stride, activate=False, name="shortcut")(x)
        reduced = self.features // self.reduction
        first, middle = (self.stride, 1) if self.downsample_in_bottleneck else (1, self.stride)
        h = ConvLayer(reduced, 1, first, name="layer_0")(x)
        h = ConvLayer(reduced, 3, middle, name="layer_1")(h)
        h = ConvLayer(self.features, 1, activate=False, name="layer_2")(h)
        return nn.relu(h + residual)


class Stage(nn.Module):
    features: int
    depth: int
    stride: int
    layer_type: str
    downsample_in_bottleneck: bool

    @nn.compact
    def __call__(self, x):
        for j in range(self.depth):
            stride = self.stride if j == 0 else 1
            if self.layer_type == "bottleneck":
                dib = self.downsample_in_bottleneck if j == 0 else False
                x = BottleNeckLayer(self.features, stride, dib, name=f"layers_{j}")(x)
            else:
                x = BasicLayer(self.features, stride, name=f"layers_{j}")(x)
        return x


class Embeddings(nn.Module):
    """The stem: 7x7/2 conv + BN + ReLU, then 3x3/2 max pool with padding 1."""

    embedding_size: int

    @nn.compact
    def __call__(self, x):
        x = ConvLayer(self.embedding_size, 7, 2, name="embedder")(x)
        # flax pads max_pool with -inf, as torch's MaxPool2d does.
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Encoder(nn.Module):
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    layer_type: str
    downsample_in_first_stage: bool
    downsample_in_bottleneck: bool

    @nn.compact
    def __call__(self, x):
        for i, (width, depth) in enumerate(zip(self.hidden_sizes, self.depths, strict=True)):
            stride = 2 if (i > 0 or self.downsample_in_first_stage) else 1
            x = Stage(width, depth, stride, self.layer_type, self.downsample_in_bottleneck, name=f"stages_{i}")(x)
        return x


class ResNet(nn.Module):
    """ResNet v1.5 from a `ResNetConfig`: images (B, H, W, C) -> pooled embeddings (B, hidden_sizes[-1])."""

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    layer_type: str = "bottleneck"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False

    @classmethod
    def from_config(cls, config: ResNetConfig) -> ResNet:
        arch = architecture(config)
        return cls(
            num_channels=arch["num_channels"],
            embedding_size=arch["embedding_size"],
            hidden_sizes=tuple(arch["hidden_sizes"]),
            depths=tuple(arch["depths"]),
            layer_type=arch["layer_type"],
            downsample_in_first_stage=arch["downsample_in_first_stage"],
            downsample_in_bottleneck=arch["downsample_in_bottleneck"],
        )

    @nn.compact
    def __call__(self, images):
        if images.shape[-1] != self.num_channels:
            raise ValueError(f"images must be NHWC with {self.num_channels} channels, got shape {images.shape}")
        x = Embeddings(self.embedding_size, name="embedder")(images)
        x = Encoder(
            self.hidden_sizes,
            self.depths,
            self.layer_type,
            self.downsample_in_first_stage,
            self.downsample_in_bottleneck,
            name="encoder",
        )(x)
        return jnp.mean(x, axis=(1, 2))  # transformers' AdaptiveAvgPool2d((1, 1)), flattened


def architecture(config: ResNetConfig) -> dict[str, Any]:
    """The config's architecture essentials (JSON-able); a clear error for what this module cannot build."""
    arch = {key: getattr(config, key) for key in ARCHITECTURE_KEYS}
    arch["hidden_sizes"] = [int(v) for v in arch["hidden_sizes"]]
    arch["depths"] = [int(v) for v in arch["depths"]]
    if arch["layer_type"] not in ("bottleneck", "basic"):
        raise UserError(f"ResNet layer_type {arch['layer_type']!r} is not supported (bottleneck or basic)")
    if arch["hidden_act"] != "relu":
        raise UserError(f"ResNet hidden_act {arch['hidden_act']!r} is not supported (only relu)")
    if len(arch["hidden_sizes"]) != len(arch["depths"]) or not arch["depths"] or min(arch["depths"]) < 1:
        raise UserError(f"ResNet config has hidden_sizes {arch['hidden_sizes']} but depths {arch['depths']}")
    return arch


def init_shapes(module: ResNet) -> dict:
    """Shapes and dtypes of `{"params": ..., "batch_stats": ...}` without computing anything."""
    dummy = jax.ShapeDtypeStruct((1, 32, 32, module.num_channels), jnp.float32)
    return jax.eval_shape(module.init, jax.random.key(0), dummy)


def random_variables(module: ResNet, seed: int) -> dict:
    """Seeded random variables as transformers initialises them: He-normal (fan_out) convs, BN 1/0/0/1.

    Drawn with numpy from the shapes alone (no forward pass to compile), so a seed gives the same
    weights on every platform.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":  # HWIO: fan_out = O * kh * kw, as torch's kaiming_normal_(mode="fan_out")
            std = math.sqrt(2.0 / (leaf.shape[3] * leaf.shape[0] * leaf.shape[1]))
            return jnp.asarray(rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(std))
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    # tree_map_with_path visits leaves in a fixed (sorted-key) order, so the draws are reproducible.
    return jax.tree_util.tree_map_with_path(draw, init_shapes(module))


def count_params(params) -> int:
    """Number of scalars in a parameter tree (arrays or `jax.ShapeDtypeStruct`s)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


@dataclass(eq=False)
class Backbone:
    """A ResNet with its weights; `embed` is the jitted forward pass."""

    module: nn.Module  # module.apply({"params": p, "batch_stats": s}, images) -> (B, D)
    params: dict  # trainable
    batch_stats: dict  # running statistics, never trained
    config: ResNetConfig
    description: dict  # JSON-able provenance: name, revision/sha256 or seed, architecture, random
    traces: int = field(default=0, init=False, repr=False)  # how often `embed` was traced (compiled)

    def __post_init__(self):
        def apply(params, batch_stats, images):
            self.traces += 1  # runs only while tracing
            images = jnp.asarray(images, jnp.float32)
            return self.module.apply({"params": params, "batch_stats": batch_stats}, images)

        self._embed = jax.jit(apply)

    @property
    def dim(self) -> int:
        return int(self.module.hidden_sizes[-1])

    def embed(self, images) -> jax.Array:
        """Preprocessed images (B, H, W, C), NHWC, float32 -> embeddings (B, dim) float32.

        Compiled once per input shape and dtype.
        """
        return self._embed(self.params, self.batch_stats, images)


def load_backbone(
    weights: str = "microsoft/resnet-50", *, seed: int = 0, config: ResNetConfig | None = None
) -> Backbone:
    """A backbone from a hub name, a local checkpoint folder, or `"random"`.

    - hub name (e.g. `microsoft/resnet-50`): `config.json` and `model.safetensors` through the Hugging
      Face cache; a clear `UserError` when neither the hub nor the cache has them.
    - folder: `config.json` + `model.safetensors` as written by `ResNetModel.save_pretrained` or
      `ResNetForImageClassification.save_pretrained` (the classifier is ignored).
    - `"random"`: `config` (default `ResNetConfig()`, the ResNet-50 of microsoft/resnet-50) with
      weights drawn from `seed`. Callers must announce it loudly (`announce_random_weights`).

    No torch is needed. `seed` and `config` are used only with `"random"`.
    """
    from cxrfeat import weights as weights_io

    if weights == "random":
        config = config if config is not None else ResNetConfig()
        module = ResNet.from_config(config)
        variables = random_variables(module, seed)
        description = {"name": "random", "random": True, "seed": int(seed)}
    else:
        if config is not None:
            raise ValueError("config= is only for weights='random'; a checkpoint brings its own config.json")
        checkpoint = weights_io.resolve(weights)
        config = weights_io.read_config(checkpoint.config_path)
        module = ResNet.from_config(config)
        variables = weights_io.read_variables(checkpoint.weight_files, init_shapes(module))
        variables = jax.tree.map(jnp.asarray, variables)
        description = {**checkpoint.provenance, "random": False}
    description["architecture"] = architecture(config)
    return Backbone(
        module=module,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        config=config,
        description=description,
    )
