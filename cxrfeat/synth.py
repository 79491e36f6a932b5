"""A SYNTHETIC chest X-ray dataset in the NIH-CXR-LT layout, plus an external set in the MIMIC layout.

Nothing here is real data. The images are grey "chest-like" pictures (body, two lungs, heart
shadow, ribs, diaphragm, noise) on which each disease label draws its own pattern: a texture with
a label-specific kind (stripes, checks, rings, dots, speckle or a solid blob), spatial frequency,
sign and place, with a random phase, strength and position jitter per image. The patterns are
coarse and strong on purpose: the demo embeds the images with a *random-weight* ResNet50 (no
pretrained weights offline), and a linear head on its pooled features must still separate labels.

Labels follow the long tail of the paper's Table I (NIH training counts; the external set the
MIMIC column) in order, compressed (`prevalence`) so that the tail survives in splits of a few
hundred rows, with a floor so that every label has a few positives in every split (AUROC stays
defined). They co-occur through a latent "sickness" factor plus factors shared by related findings
(e.g. Cardiomegaly and Edema). Exactly `k` positives per label and split are drawn as the `k` rows
with the largest latent score. `No Finding` = no label positive.

The external set is shifted like a second hospital: other exposure (gamma), contrast, noise,
blur, a taller field of view and JPEG files; some label cells are blank or -1 (unknown), and a
few LATERAL views are listed that readers must drop.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cxrfeat import __version__
from cxrfeat.errors import UserError
from cxrfeat.labels import KNOWN_LABELS, LABELS, NO_FINDING

# Table I of the paper: NIH-CXR-LT training counts (of 78,605 images) and MIMIC-CXR-LT test counts
# (of 48,860 frontal images).
NIH_TRAIN = dict(zip(LABELS, (12739, 7919, 7587, 4359, 3689, 2432, 2626, 1998, 1590, 1327, 1283, 957, 1138, 806,
                              598, 368, 214, 88, 130), strict=True))
NIH_TRAIN_ROWS = 78605
MIMIC_TEST = dict(zip(LABELS, (1781, 14586, 14014, 1309, 1006, 3282, 3232, 590, 14703, 649, 8444, 572, 271, 8242,
                               547, 704, 136, 176, 739), strict=True))
MIMIC_TEST_ROWS = 48860

# Findings that tend to occur together share a latent factor (on top of the global one).
GROUPS = (
    ("Effusion", "Pleural Thickening", "Atelectasis"),
    ("Cardiomegaly", "Edema"),
    ("Infiltration", "Consolidation", "Pneumonia"),
    ("Pneumothorax", "Subcutaneous Emphysema", "Pneumomediastinum", "Pneumoperitoneum"),
    ("Tortuous Aorta", "Calcification of the Aorta"),
    ("Nodule", "Mass"),
    ("Emphysema", "Fibrosis"),
)


@dataclass(frozen=True)
class Pattern:
    """How one label changes the image: a texture inside a soft ellipse (coordinates in [-1, 1])."""

    u: float  # centre, left-right
    v: float  # centre, top-bottom
    ru: float  # radii
    rv: float
    kind: str  # stripes-h, stripes-v, checks, rings, dots, speckle, blob
    freq: float  # cycles per unit length (the image is 2 units wide)
    amp: float  # signed strength in intensity units (image in [0, 1])


# One row per label, in canonical order. Kinds, frequencies and signs differ between labels so that
# each label has its own texture statistics, which survive global average pooling.
PATTERNS: dict[str, Pattern] = dict(zip(LABELS, (
    Pattern(0.00, 0.05, 0.80, 0.45, "speckle", 6.0, 0.30),    # Infiltration: patchy, both lungs
    Pattern(0.00, 0.62, 0.85, 0.22, "blob", 0.0, 0.40),       # Effusion: white bases
    Pattern(0.00, 0.35, 0.75, 0.25, "stripes-h", 3.0, 0.35),  # Atelectasis: plate-like lines
    Pattern(-0.35, -0.30, 0.35, 0.35, "dots", 9.0, 0.45),     # Nodule: small round spots
    Pattern(0.40, 0.00, 0.30, 0.30, "blob", 0.0, 0.40),       # Mass: one big opacity
    Pattern(0.00, -0.60, 0.85, 0.25, "blob", 0.0, -0.35),     # Pneumothorax: dark apices
    Pattern(-0.40, 0.30, 0.35, 0.30, "checks", 2.5, 0.40),    # Consolidation
    Pattern(0.00, 0.00, 0.95, 0.70, "stripes-v", 10.0, 0.25), # Pleural Thickening
    Pattern(0.05, 0.30, 0.45, 0.35, "rings", 2.0, 0.35),      # Cardiomegaly
    Pattern(0.00, -0.20, 0.85, 0.50, "rings", 6.0, -0.30),    # Emphysema: dark bullae
    Pattern(0.00, 0.05, 0.55, 0.40, "stripes-v", 4.0, 0.35),  # Edema: perihilar lines
    Pattern(0.00, 0.00, 0.95, 0.85, "stripes-h", 12.0, -0.30),# Subcutaneous Emphysema
    Pattern(0.00, -0.40, 0.80, 0.35, "checks", 8.0, 0.30),    # Fibrosis: reticular
    Pattern(0.40, 0.35, 0.35, 0.30, "speckle", 2.5, 0.40),    # Pneumonia
    Pattern(-0.05, -0.35, 0.30, 0.30, "rings", 12.0, 0.35),   # Tortuous Aorta
    Pattern(0.05, -0.50, 0.30, 0.25, "dots", 4.0, 0.50),      # Calcification of the Aorta
    Pattern(0.00, 0.80, 0.80, 0.20, "stripes-h", 7.0, -0.40), # Pneumoperitoneum: below the diaphragm
    Pattern(0.00, -0.10, 0.25, 0.65, "stripes-v", 16.0, -0.40),# Pneumomediastinum
    Pattern(0.00, 0.50, 0.30, 0.30, "checks", 4.5, -0.40),    # Hernia
), strict=True))


@dataclass(frozen=True)
class Site:
    """Acquisition of one hospital: how intensities are mapped and what noise is added."""

    gamma: float = 1.0
    contrast: float = 1.0
    offset: float = 0.0
    noise: float = 0.035
    blur: float = 0.0
    aspect: float = 1.0  # height / width of the image


# Found by fitting linear heads on random-weight ResNet50 features of the demo-sized data: the
# patterns must be this strong for a linear head to learn them within the paper's training budget.
PATTERN_GAIN = 2.2
# Every image is rescaled to this RMS contrast around mid-grey, so that exposure does not grow with
# the number of findings (the random network's feature norm follows image contrast).
IMAGE_RMS = 0.26

NIH_SITE = Site()
MIMIC_SITE = Site(gamma=0.8, contrast=0.85, offset=0.06, noise=0.06, blur=0.8, aspect=1.1)


KINDS = ("stripes-h", "stripes-v", "checks", "rings", "dots", "speckle", "blob")


def _extra_pattern(k: int) -> Pattern:
    """The pattern of the k-th label beyond the 19 (`--labels N`, N > 19): drawn once from a fixed seed."""
    rng = np.random.default_rng([20241, k])
    kind = KINDS[k % len(KINDS)]
    return Pattern(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.55, 0.55)), float(rng.uniform(0.2, 0.45)),
                   float(rng.uniform(0.2, 0.45)), kind, 0.0 if kind == "blob" else float(rng.uniform(2.0, 14.0)),
                   float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.45)))


MAX_LABELS = len(KNOWN_LABELS)


def label_names(n_labels: int) -> tuple[str, ...]:
    """The first `n_labels` known labels in canonical order: the 19 NIH-CXR-LT labels, then the CXR-LT ones."""
    if not 2 <= n_labels <= MAX_LABELS:
        raise UserError(f"--labels must be between 2 and {MAX_LABELS} (the labels the readers know), got {n_labels}")
    return KNOWN_LABELS[:n_labels]


def tail_counts(base: dict[str, int], names) -> dict[str, int]:
    """Table I counts for the 19, continued for the labels beyond them by a geometric tail below the rarest."""
    low = min(base.values())
    extra = [n for n in names if n not in base]
    return {**{n: base[n] for n in names if n in base},
            **{n: max(8, round(low * 0.92 ** (k + 1))) for k, n in enumerate(extra)}}


for _k, _name in enumerate(KNOWN_LABELS[len(LABELS):]):
    PATTERNS[_name] = _extra_pattern(_k)


# ------------------------------------------------------------------------------------------ labels
def prevalence(counts: dict[str, int], rows: int) -> dict[str, float]:
    """Table I counts -> per-label prevalence, the tail compressed (square root of the ratio to the
    most common label) so that the order and the long tail survive in splits of a few hundred rows."""
    top = max(counts.values()) / rows
    return {name: top * math.sqrt(c / rows / top) for name, c in counts.items()}


def positives_per_label(n: int, prev: dict[str, float]) -> dict[str, int]:
    """Positive counts for a split of n rows, with a floor of a few per label (so AUROC is defined)."""
    floor = max(3, math.ceil(0.015 * n))
    cap = max(1, n // 2)
    return {name: min(cap, max(floor, round(n * p))) for name, p in prev.items()}


def draw_labels(n: int, prev: dict[str, float], rng: np.random.Generator, names=LABELS) -> np.ndarray:
    """(n, len(names)) 0/1 labels with exactly `positives_per_label` positives each, co-occurring via
    latent factors. The random stream for the first 19 labels does not depend on `names`."""
    sick = rng.standard_normal(n)
    group_of = {name: g for g, names in enumerate(GROUPS) for name in names}
    shared = rng.standard_normal((n, len(GROUPS)))
    counts = positives_per_label(n, prev)
    y = np.zeros((n, len(names)), np.int8)
    for j, name in enumerate(names):
        g = group_of.get(name)
        z = 0.55 * sick + rng.standard_normal(n) * (0.6 if g is not None else 0.835)
        if g is not None:
            z += 0.55 * shared[:, g]
        y[np.argsort(-z, kind="stable")[: counts[name]], j] = 1
    return y


# ------------------------------------------------------------------------------------------ images
class _Painter:
    """Draws synthetic radiographs of one size (coordinate grids are built once)."""

    def __init__(self, height: int, width: int, site: Site):
        self.h, self.w, self.site = height, width, site
        self.u = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
        self.v = np.linspace(-1, 1, height, dtype=np.float32)[:, None]

    def _ellipse(self, cu, cv, ru, rv, soft=0.15):
        d = np.sqrt(((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2)
        return np.clip((1.0 - d) / soft, 0.0, 1.0)

    def background(self, rng: np.random.Generator) -> np.ndarray:
        du, dv = rng.uniform(-0.04, 0.04, 2)
        u, v = self.u - du, self.v - dv
        body = self._ellipse(du, dv + 0.05, 0.92, 1.05, soft=0.25)
        img = 0.06 + 0.40 * body
        lungs = self._ellipse(du - 0.40, dv - 0.05, 0.30, 0.60) + self._ellipse(du + 0.40, dv - 0.05, 0.30, 0.60)
        ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (2.6 * (v + 0.35 * u**2)) + rng.uniform(0, 2 * np.pi))
        img = img - lungs * (0.22 - 0.07 * ribs)
        img = img + 0.22 * self._ellipse(du + 0.05, dv + 0.30, 0.28, 0.28, soft=0.35)  # heart
        img = img + 0.20 * np.clip((v - 0.55 - 0.25 * u**2) / 0.08, 0, 1) * body  # diaphragm
        img = img + 0.12 * self._ellipse(du, dv - 0.2, 0.09, 0.9, soft=0.5)  # spine / mediastinum
        # Smooth per-image variation (exposure, soft tissue).
        low = Image.fromarray(rng.normal(0.0, 1.0, (6, 6)).astype(np.float32), mode="F")
        img = img + 0.04 * np.asarray(low.resize((self.w, self.h), Image.Resampling.BICUBIC))
        return img

    def pattern(self, p: Pattern, rng: np.random.Generator) -> np.ndarray:
        cu, cv = p.u + rng.uniform(-0.05, 0.05), p.v + rng.uniform(-0.05, 0.05)
        env = self._ellipse(cu, cv, p.ru, p.rv, soft=0.35)
        f, ph = 2 * np.pi * p.freq, rng.uniform(0, 2 * np.pi, 2)
        u, v = self.u - cu, self.v - cv
        if p.kind == "stripes-h":
            tex = 0.5 + 0.5 * np.sin(f * v + ph[0])
        elif p.kind == "stripes-v":
            tex = 0.5 + 0.5 * np.sin(f * u + ph[0])
        elif p.kind == "checks":
            tex = 0.5 + 0.5 * np.sign(np.sin(f * u + ph[0]) * np.sin(f * v + ph[1]))
        elif p.kind == "rings":
            tex = 0.5 + 0.5 * np.sin(f * np.sqrt(u**2 + v**2) + ph[0])
        elif p.kind == "dots":
            tex = np.clip(np.sin(f * u + ph[0]) * np.sin(f * v + ph[1]) * 2.5 - 1.5, 0, 1)
        elif p.kind == "speckle":
            k = max(2, int(round(p.freq * 2)))
            small = Image.fromarray(rng.uniform(0, 1, (k, k)).astype(np.float32), mode="F")
            tex = np.clip((np.asarray(small.resize((self.w, self.h), Image.Resampling.BILINEAR)) - 0.45) * 3, 0, 1)
        elif p.kind == "blob":
            tex = 1.0
        else:  # pragma: no cover - the table above is fixed
            raise ValueError(p.kind)
        return PATTERN_GAIN * p.amp * rng.uniform(0.6, 1.3) * env * tex

    def draw(self, y: np.ndarray, rng: np.random.Generator, names=LABELS) -> np.ndarray:
        """uint8 (H, W) image for one 0/1 label row (labels `names`)."""
        img = self.background(rng)
        for j in np.flatnonzero(y):
            img = img + self.pattern(PATTERNS[names[j]], rng)
        s = self.site
        c = img - 0.45
        img = 0.45 + c * (IMAGE_RMS / max(1e-6, float(np.sqrt(np.mean(c**2)))))
        img = np.clip(img, 0, 1) ** s.gamma * s.contrast + s.offset
        img = img + rng.normal(0.0, s.noise, img.shape)
        out = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
        if s.blur:
            out = out.filter(ImageFilter.GaussianBlur(s.blur * self.w / 256))
        return np.asarray(out)


# ------------------------------------------------------------------------------------------ writers
def write_synthetic(
    out_dir: str | Path,
    *,
    n_train: int = 400,
    n_val: int = 100,
    n_test: int = 200,
    n_external: int = 200,
    image_size: int = 256,
    seed: int = 0,
    n_labels: int = len(LABELS),
) -> dict:
    """Write `out_dir/nih-cxr-lt/` and `out_dir/mimic-cxr-lt/` (SYNTHETIC); returns a summary dict.

    `n_labels` disease labels (`label_names`): the paper's 19 by default; more (up to 40) adds the
    CXR-LT findings after them with a continued long tail (for wide DQC heads, e.g. `--tasks all`).
    With the default 19 the files are exactly those of earlier versions.

    An earlier synthetic dataset in the same place is replaced; a folder that is not marked
    synthetic (no README.txt saying so) is never touched.
    """
    for name, n in (("--n-train", n_train), ("--n-val", n_val), ("--n-test", n_test), ("--n-external", n_external)):
        if n < 2:
            raise UserError(f"{name} must be at least 2 (a split needs positives and negatives), got {n}")
    if not 32 <= image_size <= 2048:
        raise UserError(f"--image-size must be between 32 and 2048, got {image_size}")
    names = label_names(n_labels)
    out_dir = Path(out_dir)
    targets = {"nih": out_dir / "nih-cxr-lt", "mimic": out_dir / "mimic-cxr-lt"}
    for path in targets.values():
        if path.exists() and not _overwritable(path):
            raise UserError(f"{path} exists and is not a synthetic dataset (no README.txt saying SYNTHETIC); "
                            f"refusing to overwrite it: choose another OUT_DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir))
    try:
        nih = _write_nih(tmp / "nih-cxr-lt", {"train": n_train, "val": n_val, "test": n_test}, image_size, seed, names)
        mimic = _write_mimic(tmp / "mimic-cxr-lt", n_external, image_size, seed, names)
        for path in targets.values():
            if path.exists():
                shutil.rmtree(path)
            (tmp / path.name).rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "synthetic": True,
        "out_dir": str(out_dir),
        "image_size": image_size,
        "seed": seed,
        "labels": list(names),
        "nih-cxr-lt": {"path": str(targets["nih"]), **nih},
        "mimic-cxr-lt": {"path": str(targets["mimic"]), **mimic},
    }


def is_synthetic(data_dir: str | Path) -> bool:
    """Whether a data folder says it is synthetic: its README.txt mentions "synthetic" (any case), as
    the one `cxrfeat synth` writes does. Recorded as `synthetic` in stores, image caches and runs."""
    readme = Path(data_dir) / "README.txt"
    return readme.is_file() and "synthetic" in readme.read_text(errors="ignore").lower()


def _overwritable(path: Path) -> bool:
    """Stricter than `is_synthetic`, as it guards a deletion: the upper-case SYNTHETIC of our README."""
    readme = path / "README.txt"
    return readme.is_file() and "SYNTHETIC" in readme.read_text(errors="ignore")


def _readme(kind: str, layout: str, image_size: int, seed: int, counts: dict) -> str:
    lines = [
        f"SYNTHETIC DATA - NOT REAL CHEST X-RAYS ({kind}).",
        "",
        f"Written by `cxrfeat synth` (cxr-qtl {__version__}), seed {seed}, image width {image_size}.",
        f"Layout: {layout}.",
        "Each disease label draws its own texture on a chest-like grey picture; label frequencies follow the",
        "long tail of Table I of the paper (with a floor of a few positives per label and split).",
        "Use it for demos and tests only: numbers obtained on it say nothing about chest X-ray diagnosis.",
        "",
        "rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
    ]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _write_nih(root: Path, sizes: dict[str, int], image_size: int, seed: int, names=LABELS) -> dict:
    prev = prevalence(tail_counts(NIH_TRAIN, names), NIH_TRAIN_ROWS)
    painter = _Painter(image_size, image_size, NIH_SITE)
    splits = {}
    patient = 1
    for s, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, 1, s])
        y = draw_labels(n, prev, rng, names)
        ids, subj = [], []
        while len(ids) < n:  # patient-disjoint splits, 1-4 images per patient
            for k in range(min(n - len(ids), int(rng.integers(1, 5)))):
                ids.append(f"{patient:08d}_{k:03d}.png")
                subj.append(f"{patient:08d}")
            patient += 1
        splits[split] = (ids, subj, y, rng)
    # Images sorted by id over at most 12 folders images_001/images ... like the NIH download.
    all_ids = sorted(i for ids, *_ in splits.values() for i in ids)
    per_folder = max(1, math.ceil(len(all_ids) / min(12, max(1, len(all_ids) // 50 + 1))))
    folder = {i: root / f"images_{k // per_folder + 1:03d}" / "images" for k, i in enumerate(all_ids)}
    for f in set(folder.values()):
        f.mkdir(parents=True, exist_ok=True)
    header = ["id", *names, NO_FINDING, "subj_id"]
    counts = {}
    for split, (ids, subj, y, rng) in splits.items():
        for k, (i, row) in enumerate(zip(ids, y, strict=True)):
            im = Image.fromarray(painter.draw(row, rng, names), mode="L")
            if k % 23 == 7:  # a few RGBA files, as in the NIH download (opaque alpha)
                im = im.convert("RGBA")
            im.save(folder[i] / i, compress_level=1)
        nf = (y.sum(1) == 0).astype(int)
        _write_csv(root / f"miccai2023_nih-cxr-lt_labels_{split}.csv", header,
                   [[i, *r.tolist(), f, sj] for i, r, f, sj in zip(ids, y, nf, subj, strict=True)])
        counts[split] = {"rows": len(ids), "positives": dict(zip(names, y.sum(0).tolist(), strict=True))}
    (root / "README.txt").write_text(_readme(
        "NIH-CXR-LT layout", "miccai2023_nih-cxr-lt_labels_{train,val,test}.csv; PNGs in images_0NN/images/",
        image_size, seed, {k: v["rows"] for k, v in counts.items()}))
    return counts


def _write_mimic(root: Path, n: int, image_size: int, seed: int, names=LABELS) -> dict:
    rng = np.random.default_rng([seed, 2])
    prev = prevalence(tail_counts(MIMIC_TEST, names), MIMIC_TEST_ROWS)
    y = draw_labels(n, prev, rng, names)
    painter = _Painter(round(image_size * MIMIC_SITE.aspect), image_size, MIMIC_SITE)
    # Unknown cells: blank (not mentioned) or -1 (uncertain); every label keeps its floor of known positives.
    cells = y.astype(object)
    floor = min(positives_per_label(n, prev).values())
    unknown = rng.random(y.shape) < 0.08
    for j in range(len(names)):
        hidden = np.flatnonzero((y[:, j] == 1) & unknown[:, j])
        short = floor - (int(y[:, j].sum()) - len(hidden))
        unknown[hidden[: max(0, short)], j] = False
    cells[unknown] = np.where(rng.random(int(unknown.sum())) < 0.6, "", "-1.0")
    cells[~unknown] = np.where(y[~unknown] == 1, "1.0", "0.0")
    n_lateral = max(1, n // 12)
    is_lateral = np.zeros(n + n_lateral, bool)
    is_lateral[rng.choice(n + n_lateral, n_lateral, replace=False)] = True
    # A column that is no label the readers know (the real files have such columns): readers ignore it.
    header = ["dicom_id", "subject_id", "study_id", "path", "ViewPosition", *names, NO_FINDING, "Reports Available"]
    rows, frontal_ids = [], []
    k = 0
    subject = 10000032
    for r in range(n + n_lateral):
        subject += int(rng.integers(1, 40))
        study = 50000000 + int(rng.integers(0, 9999999))
        dicom = "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, 5))
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        if is_lateral[r]:
            label_cells = ["0.0"] * len(names) + ["1.0"]
            view, pixels = "LATERAL", painter.draw(np.zeros(len(names), np.int8), rng, names)
        else:
            label_cells = [*cells[k].tolist(), "1.0" if y[k].sum() == 0 else "0.0"]
            view, pixels = ("PA" if rng.random() < 0.6 else "AP"), painter.draw(y[k], rng, names)
            frontal_ids.append(dicom)
            k += 1
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(path, quality=90)
        rows.append([dicom, subject, study, rel, view, *label_cells, int(rng.random() < 0.3)])
    root.mkdir(parents=True, exist_ok=True)
    _write_csv(root / "miccai2023_mimic-cxr-lt_labels_test.csv", header, rows)
    known_pos = dict(zip(names, ((y == 1) & ~unknown).sum(0).tolist(), strict=True))
    counts = {"test": {"rows": n, "lateral_rows_dropped_by_readers": n_lateral, "positives": known_pos,
                       "unknown_cells": int(unknown.sum())}}
    (root / "README.txt").write_text(_readme(
        "MIMIC-CXR-LT layout, external test set, shifted acquisition",
        "miccai2023_mimic-cxr-lt_labels_test.csv (dicom_id, subject_id, study_id, path, ViewPosition, labels); "
        "JPEGs under files/pXX/pNNNNNNNN/sNNNNNNNN/", image_size, seed,
        {"test (frontal)": n, "lateral (dropped)": n_lateral}))
    return counts
