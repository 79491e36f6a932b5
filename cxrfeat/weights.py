"""ResNet checkpoints in transformers' format, read and written without torch (safetensors + numpy).

Our Flax module tree mirrors transformers' module tree, so a checkpoint key is the Flax path with
`_<i>` spelt `.<i>` and the leaf renamed (`hf_key`):

    params      encoder/stages_0/layers_1/layer_2/convolution/kernel  <-> encoder.stages.0.layers.1.layer.2.convolution.weight
    params      .../normalization/scale | bias                        <-> .../normalization.weight | bias
    batch_stats .../normalization/mean  | var                         <-> .../normalization.running_mean | running_var

Conv kernels are OIHW in torch and HWIO in Flax. `ResNetForImageClassification` checkpoints prefix
every backbone key with `resnet.` and add `classifier.*` (ignored); `num_batches_tracked` is ignored.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import ResNetConfig

from cxrfeat.atomic import read_json, write_bytes, write_text
from cxrfeat.errors import UserError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
BACKBONE_PREFIX = "resnet."
IGNORED_PREFIXES = ("classifier.",)
IGNORED_SUFFIXES = (".num_batches_tracked",)

_LEAF_TO_HF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_INDEXED = re.compile(r"^(.*)_(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    config_path: Path
    weight_files: tuple[Path, ...]
    provenance: dict  # name and revision (hub) and sha256 of the weights


def hf_key(collection: str, path: tuple[str, ...]) -> str:
    """The transformers state-dict key of a Flax variable (see the module docstring)."""
    *modules, leaf = path
    parts = []
    for name in modules:
        m = _INDEXED.match(name)
        parts += [m.group(1), m.group(2)] if m else [name]
    return ".".join([*parts, _LEAF_TO_HF[(collection, leaf)]])


def _flatten(tree: dict, prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            yield from _flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _to_hf(array: np.ndarray) -> np.ndarray:
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array  # HWIO -> OIHW


def _from_hf(array: np.ndarray) -> np.ndarray:
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array  # OIHW -> HWIO


def _hf_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ where from


def resolve(weights: str) -> Checkpoint:
    """A local checkpoint folder, or else a hub name fetched through the Hugging Face cache.

    A name that is neither a folder nor `random` but close to it (`randon`, `rnadom`, `Random`) is
    refused at once with "did you mean random?", before any network access.
    """
    path = Path(weights).expanduser()
    if path.is_dir():
        return _from_folder(path)
    check_name(weights)
    if path.exists():
        raise UserError(f"--weights {weights}: give the checkpoint folder (config.json + model.safetensors), not a file")
    # A hub id is `name` or `owner/name`; anything else that names no folder is a path typo.
    if weights.startswith((".", "/", "~")) or weights.count("/") > 1 or "\\" in weights:
        raise UserError(f"--weights {weights}: no such folder")
    return _from_hub(weights)


def check_name(weights: str) -> None:
    """Refuse, without touching the network, a `--weights` that is no folder but looks like a typo of `random`."""
    if looks_like_random(weights) and not Path(weights).expanduser().is_dir():
        raise UserError(f"--weights {weights}: no such folder; did you mean random? "
                        f"(`--weights random`: a random-weight backbone for smoke runs)")


def looks_like_random(weights: str) -> bool:
    """True for a likely typo of `random` (not `random` itself): one or two letters off, or another case."""
    name = weights.strip()
    if name == "random" or "/" in name or "\\" in name:
        return False
    return name.lower() == "random" or bool(difflib.get_close_matches(name.lower(), ["random"], n=1, cutoff=0.6))


def _from_folder(folder: Path) -> Checkpoint:
    folder = folder.resolve()
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise UserError(f"--weights {folder}: no {CONFIG_NAME} in this folder (expected a save_pretrained folder)")
    if (folder / WEIGHTS_NAME).is_file():
        files = (folder / WEIGHTS_NAME,)
    elif (folder / WEIGHTS_INDEX_NAME).is_file():
        index = read_json(folder / WEIGHTS_INDEX_NAME, what=f"the weights index of checkpoint {folder}",
                          remedy="save the checkpoint again (save_pretrained)")
        if not isinstance(index.get("weight_map"), dict):
            raise UserError(f"{folder / WEIGHTS_INDEX_NAME}: no `weight_map` object: the weights index of checkpoint "
                            f"{folder} is damaged; save the checkpoint again (save_pretrained)")
        files = tuple(folder / str(name) for name in sorted(set(index["weight_map"].values())))
    else:
        hint = ""
        if any(folder.glob("*.bin")):
            hint = " (only a PyTorch .bin checkpoint: re-save it with save_pretrained to get safetensors)"
        raise UserError(f"--weights {folder}: no {WEIGHTS_NAME} in this folder{hint}")
    provenance = {"name": str(folder), "sha256": _digest(files)}
    return Checkpoint(config_path, files, provenance)


def _digest(files: tuple[Path, ...]) -> str:
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def _hub_answered(error: Exception) -> bool:
    """True when the hub was reached and said no (unknown repo or file), not when it was unreachable."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        from huggingface_hub.errors import RevisionNotFoundError
    except ImportError:  # pragma: no cover - older huggingface_hub
        RevisionNotFoundError = RepositoryNotFoundError  # noqa: N806
    if isinstance(error, LocalEntryNotFoundError):
        return False
    return isinstance(error, EntryNotFoundError | RepositoryNotFoundError | RevisionNotFoundError)


HUB_TIMEOUT_S = 4.0  # one try at the hub: how long `resolve` waits for it to answer at all


def hub_offline() -> bool:
    """HF_HUB_OFFLINE=1 (read now, and as huggingface_hub read it at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_reachable(repo_id: str, timeout: float | None = None) -> str | None:
    """None when the hub answers one HEAD request about `repo_id` within `timeout` seconds (any HTTP status
    counts: the hub is there), else why not. One try, no retries; the wait is bounded even where DNS or a
    half-open connection hang, since the request runs on a daemon thread that is left behind after the timeout."""
    import urllib.error
    import urllib.request

    timeout = HUB_TIMEOUT_S if timeout is None else timeout
    url = f"{hub_endpoint()}/{repo_id}/resolve/main/{CONFIG_NAME}"
    answered = threading.Event()
    failure: list[str] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                pass
            answered.set()
        except urllib.error.HTTPError:  # an HTTP status (401, 404, 5xx): the hub is there
            answered.set()
        except Exception as e:  # noqa: BLE001 - unreachable, refused, TLS, timeout: not reachable
            reason = getattr(e, "reason", None) or e
            failure.append(f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if answered.is_set():
        return None
    return failure[0] if failure else f"no answer within {timeout:g} s"


def _offline_message(repo_id: str, why: str) -> str:
    from huggingface_hub import constants

    return (
        f"--weights {repo_id}: {why}, and the checkpoint is not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}). Either download the folder on a machine that can reach the hub "
        f"(`hf download {repo_id} --local-dir {repo_id.split('/')[-1]}`, or `save_pretrained`), copy it here "
        f"and pass `--weights DIR`, or fill this cache and set HF_HUB_OFFLINE=1 (no hub access at all); "
        f"or pass `--weights random` for a smoke run (random weights: the results mean nothing)."
    )


def _download(repo_id: str, *, local_only: bool) -> list[Path]:
    from huggingface_hub import hf_hub_download

    kwargs = {"local_files_only": True} if local_only else {"etag_timeout": HUB_TIMEOUT_S}
    return [Path(hf_hub_download(repo_id, name, **kwargs)) for name in (CONFIG_NAME, WEIGHTS_NAME)]


def _from_hub(repo_id: str) -> Checkpoint:
    """`config.json` and `model.safetensors` of a hub model, through the Hugging Face cache.

    The hub is tried once: with HF_HUB_OFFLINE=1, or when it does not answer within HUB_TIMEOUT_S, only
    the cache is read (huggingface_hub on its own retries an unreachable hub for ~25 s before giving up).
    """
    if hub_offline():
        why = "HF_HUB_OFFLINE is set (the hub is not asked)"
        online = False
    else:
        failure = hub_reachable(repo_id)
        online = failure is None
        why = f"the Hugging Face hub ({hub_endpoint()}) is unreachable ({failure}; tried once)"
    paths = None
    if online:
        try:
            paths = _download(repo_id, local_only=False)
        except Exception as online_error:  # noqa: BLE001 - classified below
            if _hub_answered(online_error):
                raise UserError(
                    f"--weights {repo_id}: the Hugging Face hub has no {WEIGHTS_NAME} for it "
                    f"({type(online_error).__name__}: {online_error})"
                ) from online_error
            why = f"fetching it from the Hugging Face hub failed ({type(online_error).__name__})"
    if paths is None:
        try:
            paths = _download(repo_id, local_only=True)
        except Exception:  # noqa: BLE001
            raise UserError(_offline_message(repo_id, why)) from None
    config_path, weights_path = paths
    # Cached files live in snapshots/<commit>/: that commit is the revision.
    revision = weights_path.parent.name if weights_path.parent.parent.name == "snapshots" else None
    provenance = {"name": repo_id, "revision": revision, "sha256": sha256_file(weights_path)}
    return Checkpoint(config_path, (weights_path,), provenance)


def read_config(path: Path) -> ResNetConfig:
    try:
        data = read_json(path, what="the model config of the checkpoint",
                         remedy="fetch it again (`cxrfeat weights NAME`) or save the checkpoint again")
    except OSError as e:
        raise UserError(f"{path}: not a readable JSON config ({e})") from e
    if data.get("model_type") != "resnet":
        raise UserError(f"{path}: model_type is {data.get('model_type')!r}, not 'resnet'")
    return ResNetConfig.from_dict(data)


# ------------------------------------------------------------------------------------ reading


def _read_tensors(files: tuple[Path, ...]) -> dict[str, tuple[np.ndarray, Path]]:
    """Backbone tensors by unprefixed key (classifier and BN counters dropped), with their file."""
    from safetensors import safe_open

    tensors: dict[str, tuple[np.ndarray, Path]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="np") as f:
                for key in f.keys():
                    name = key.removeprefix(BACKBONE_PREFIX)
                    if name.startswith(IGNORED_PREFIXES) or name.endswith(IGNORED_SUFFIXES):
                        continue
                    if name in tensors:
                        raise UserError(f"{file}: tensor {name} appears twice (with and without {BACKBONE_PREFIX!r})")
                    tensors[name] = (f.get_tensor(key), file)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken file, an unsupported dtype, ...
            raise UserError(f"{file}: cannot read it as safetensors ({type(e).__name__}: {e})") from e
    return tensors


def _examples(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def read_variables(files: tuple[Path, ...], expected: dict) -> dict:
    """`{"params": ..., "batch_stats": ...}` float32 numpy trees shaped like `expected` (shape structs).

    Every expected tensor must be present with the right shape and finite values, and nothing else
    (besides the classifier and BN counters) may be there: otherwise a `UserError` lists what is wrong.
    """
    tensors = _read_tensors(files)
    where = str(files[0]) if len(files) == 1 else f"{files[0].parent} (sharded)"
    wanted = {hf_key(col, path): (col, path, tuple(leaf.shape)) for col, tree in expected.items()
              for path, leaf in _flatten(tree)}
    missing = sorted(set(wanted) - set(tensors))
    unexpected = sorted(set(tensors) - set(wanted))
    wrong = [
        f"{key} is {list(tensors[key][0].shape)}, expected {list(_hf_shape(shape))}"
        for key, (_, _, shape) in sorted(wanted.items())
        if key in tensors and tuple(tensors[key][0].shape) != _hf_shape(shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_examples(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) with the wrong shape: {_examples(wrong, 3)}")
    if problems:
        raise UserError(f"{where}: checkpoint does not match the ResNet of its config.json: " + "; ".join(problems))

    out: dict = {}
    for key, (col, path, _) in wanted.items():
        array, file = tensors[key]
        array = _from_hf(np.asarray(array, dtype=np.float32))
        if not np.isfinite(array).all():
            raise UserError(f"{file}: tensor {key} has NaN or Inf values")
        node = out.setdefault(col, {})
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(array)
    return out


# ------------------------------------------------------------------------------------ writing


def save_checkpoint(backbone, folder: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` in `ResNetModel.save_pretrained`'s format.

    transformers (`ResNetModel.from_pretrained(folder)`) and `load_backbone(folder)` both read it:
    a fine-tuned backbone can leave the toolkit.
    """
    from safetensors.numpy import save

    folder = Path(folder)
    tensors = {}
    for col in ("params", "batch_stats"):
        tree = backbone.params if col == "params" else backbone.batch_stats
        for path, leaf in _flatten(tree):
            tensors[hf_key(col, path)] = np.ascontiguousarray(_to_hf(np.asarray(leaf, np.float32)))
    config = backbone.config.to_dict()
    config["architectures"] = ["ResNetModel"]
    write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_bytes(folder / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    return folder
