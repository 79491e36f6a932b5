"""`cxrfeat verify`: check feature stores and image caches file by file against their checksums.

The same check every reader runs before using a store (`FeatureStore.open`): every chunk file of
every array must exist and match the sha256 recorded when it was written. Files are hashed on
threads straight from disk (no decoding, no Python loop over rows). A store that cannot even be
opened (damaged metadata, not a store) is reported as damaged and the others are still checked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrfeat.errors import UserError, human_bytes
from cxrfeat.imagecache import KIND, ImageCache
from cxrfeat.store import Damage, FeatureStore, store_key


@dataclass
class Verdict:
    path: Path
    state: str  # "ok", "damaged", "incomplete"
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    damage: list[Damage] = field(default_factory=list)
    message: str = ""

    def lines(self) -> list[str]:
        if self.state == "ok":
            return [f"ok: {self.path}: {self.files} files ({human_bytes(self.bytes)}) match their checksums "
                    f"({self.seconds:.2f} s)"]
        out = [f"damaged: {self.path / d.key}: {d.problem}" + (f" (row chunk {d.chunk})" if d.chunk is not None else "")
               for d in self.damage]
        return out + [f"{'error' if self.state == 'damaged' else 'incomplete'}: {self.message}"]


def _kind(path: Path) -> type[FeatureStore]:
    try:
        kind = json.loads((path / "zarr.json").read_text()).get("attributes", {}).get("kind")
    except (OSError, ValueError):
        kind = None
    if kind == KIND:
        return ImageCache
    return FeatureStore


def stores_under(path: Path) -> list[Path]:
    """A store itself, or the stores in a folder (`features/<dataset>`) or two levels down (`features`)."""
    if (path / "zarr.json").is_file():
        return [path]
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    found = sorted((p for p in path.glob("*.zarr") if (p / "zarr.json").is_file()), key=store_key)
    found = found or sorted((p for p in path.glob("*/*.zarr") if (p / "zarr.json").is_file()), key=store_key)
    if not found:
        raise UserError(f"{path}: no feature store or image cache (.zarr) here")
    return found


def verify_store(path: str | Path) -> Verdict:
    """Verify one store (complete: every file; incomplete: the chunks written so far)."""
    path = Path(path)
    cls = _kind(path)
    t0 = time.perf_counter()
    try:
        store = cls.open(path, require_complete=False)
        damage = store.integrity()
    except UserError as e:  # unreadable metadata, a foreign folder...: this one fails, the others are checked
        return Verdict(path, "damaged", seconds=time.perf_counter() - t0, message=str(e))
    expected, _ = store.expected_files()
    present = [path / k for k in expected if (path / k).is_file()]
    v = Verdict(path, "ok", files=len(present), bytes=sum(p.stat().st_size for p in present),
                seconds=time.perf_counter() - t0, damage=damage)
    if damage:
        v.state = "damaged"
        v.message = store.damage_message(damage)
    elif not store.complete:
        v.state = "incomplete"
        v.message = store.incomplete_message() + " (the chunks written so far match their checksums)"
    return v
