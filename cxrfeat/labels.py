"""Canonical disease labels, the paper's three tasks (CXR-8, CXR-14, CXR-19) and wider label sets.

The canonical order is the paper's Table I order (NIH-CXR-LT training occurrence, most common
first) for the 19 NIH-CXR-LT labels, then the findings that only the CXR-LT challenges label
(`EXTRA_LABELS`, in a fixed order). Within a task, labels (and so qubits) follow this order.

Label sets (`LABEL_SETS`): `nih-cxr-lt` (the 19), `cxr-lt-2023` (the 26 classes of the CXR-LT 2023
release of MIMIC-CXR-LT, `No Finding` among them) and `cxr-lt-2024` (its 40 long-tailed classes,
`Normal` among them, which is a class of that challenge and kept as its own label). `No Finding` is
kept in stores but is never a task label.
"""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "Infiltration",
    "Effusion",
    "Atelectasis",
    "Nodule",
    "Mass",
    "Pneumothorax",
    "Consolidation",
    "Pleural Thickening",
    "Cardiomegaly",
    "Emphysema",
    "Edema",
    "Subcutaneous Emphysema",
    "Fibrosis",
    "Pneumonia",
    "Tortuous Aorta",
    "Calcification of the Aorta",
    "Pneumoperitoneum",
    "Pneumomediastinum",
    "Hernia",
)

NO_FINDING = "No Finding"

# Findings labelled by CXR-LT 2023 (MIMIC-CXR-LT) and CXR-LT 2024 beyond the 19 NIH-CXR-LT labels,
# in the order that follows the 19 in the canonical order: 2023's additions, then 2024's.
EXTRA_LABELS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "Pleural Other",
    "Support Devices",
    "Adenopathy",
    "Azygos Lobe",
    "Clavicle Fracture",
    "Fissure",
    "Granuloma",
    "Hydropneumothorax",
    "Infarction",
    "Kyphosis",
    "Lobar Atelectasis",
    "Pulmonary Embolism",
    "Pulmonary Hypertension",
    "Rib Fracture",
    "Round(ed) Atelectasis",
    "Tuberculosis",
    "Normal",
)

# Every label name the readers know, in canonical order (`No Finding` last).
KNOWN_LABELS: tuple[str, ...] = LABELS + EXTRA_LABELS

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "nih-cxr-lt": LABELS,
    "cxr-lt-2023": tuple(n for n in KNOWN_LABELS if n in {
        "Atelectasis", "Calcification of the Aorta", "Cardiomegaly", "Consolidation", "Edema", "Emphysema",
        "Enlarged Cardiomediastinum", "Fibrosis", "Fracture", "Hernia", "Infiltration", "Lung Lesion",
        "Lung Opacity", "Mass", "Nodule", "Effusion", "Pleural Other", "Pleural Thickening", "Pneumomediastinum",
        "Pneumonia", "Pneumoperitoneum", "Pneumothorax", "Subcutaneous Emphysema", "Support Devices",
        "Tortuous Aorta"}) + (NO_FINDING,),
    "cxr-lt-2024": LABELS + EXTRA_LABELS,
}

_CXR8 = {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax"}
_CXR14 = _CXR8 | {"Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural Thickening", "Hernia"}
_CXR19 = set(LABELS)

TASKS: dict[int, tuple[str, ...]] = {
    8: tuple(name for name in LABELS if name in _CXR8),
    14: tuple(name for name in LABELS if name in _CXR14),
    19: tuple(name for name in LABELS if name in _CXR19),
}

# Spellings seen in the public label files, mapped to the canonical names.
ALIASES: dict[str, str] = {
    "Pleural_Thickening": "Pleural Thickening",
    "Pleural Effusion": "Effusion",
    "Subcutaneous_Emphysema": "Subcutaneous Emphysema",
    "Tortuous_Aorta": "Tortuous Aorta",
    "Calcification_of_the_Aorta": "Calcification of the Aorta",
    "Calcification of Aorta": "Calcification of the Aorta",
    "No_Finding": NO_FINDING,
    "Enlarged_Cardiomediastinum": "Enlarged Cardiomediastinum",
    "Lung_Lesion": "Lung Lesion",
    "Lung_Opacity": "Lung Opacity",
    "Pleural_Other": "Pleural Other",
    "Support_Devices": "Support Devices",
    "Azygos_Lobe": "Azygos Lobe",
    "Clavicle_Fracture": "Clavicle Fracture",
    "Lobar_Atelectasis": "Lobar Atelectasis",
    "Pulmonary_Embolism": "Pulmonary Embolism",
    "Pulmonary_Hypertension": "Pulmonary Hypertension",
    "Rib_Fracture": "Rib Fracture",
    "Round(ed)_Atelectasis": "Round(ed) Atelectasis",
    "Rounded Atelectasis": "Round(ed) Atelectasis",
    "Round Atelectasis": "Round(ed) Atelectasis",
}


def canonical(name: str) -> str:
    """The canonical spelling of a label column name (unchanged when it is not a known alias)."""
    name = name.strip()
    return ALIASES.get(name, name)


def task_labels(task: int | str) -> tuple[str, ...]:
    """The labels of task 8, 14 or 19 (also accepts 'cxr-8' or 'CXR-14'), in canonical order."""
    key = str(task).lower().removeprefix("cxr-").removeprefix("cxr")
    try:
        return TASKS[int(key)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(map(str, TASKS))}") from None


def task_name(task: int | str) -> str:
    """'cxr-8' style name used in run folders."""
    return f"cxr-{len(task_labels(task))}"


def parse_tasks(spec: str) -> list[int]:
    """Parse a `--tasks 8,14,19` option."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            out.append(len(task_labels(part)))
    if not out:
        raise ValueError("--tasks is empty: give e.g. 8,14,19")
    return out
