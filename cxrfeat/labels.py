"""Canonical disease labels and the paper's three tasks (CXR-8, CXR-14, CXR-19).

The canonical order is the paper's Table I order (NIH-CXR-LT training occurrence, most common
first). Within a task, labels (and so qubits) follow this order.
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
