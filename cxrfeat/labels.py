"""Canonical disease labels, the paper's three tasks (CXR-8, CXR-14, CXR-19) and wider label sets.

The canonical order is the paper's Table I order (NIH-CXR-LT training occurrence, most common
first) for the 19 NIH-CXR-LT labels, then the findings that only the CXR-LT challenges label
(`EXTRA_LABELS`, in a fixed order). The paper's tasks and `all` follow this order (qubit i = label i);
a `--tasks-file` task keeps the file's order (docs/design.md "Labels and tasks").

Label sets (`LABEL_SETS`): `nih-cxr-lt` (the 19), `cxr-lt-2023` (the 26 classes of the CXR-LT 2023
release of MIMIC-CXR-LT, `No Finding` among them) and `cxr-lt-2024` (its 40 long-tailed classes,
`Normal` among them, which is a class of that challenge and kept as its own label). `No Finding` is
kept in stores but is never a task label.
"""

from __future__ import annotations

import re

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


class Task(str):
    """A task: a label list (qubits follow its order) with a name, which is also its run-folder name.

    A `str` (its name, e.g. `cxr-8`), so it prints, sorts and serialises (JSON) as the name; the paper's
    tasks are `Task.paper(8)` etc. A task named `all` with no labels yet is resolved against a store's
    label names by `resolve_tasks`. `named`: the name the user gave it (`--task-name`), else None (a
    default name, which a sweep may replace by the name it already gave the same labels).
    """

    labels: tuple[str, ...] | None
    named: str | None

    def __new__(cls, name: str, labels=None, named: str | None = None):
        self = super().__new__(cls, name)
        self.labels = tuple(labels) if labels is not None else None
        self.named = named
        return self

    def __reduce__(self):
        return (Task, (str(self), self.labels, self.named))

    @classmethod
    def paper(cls, n: int) -> Task:
        return cls(f"cxr-{n}", TASKS[n])

    @property
    def n(self) -> int:
        return len(self.labels or ())


ALL = "all"


def task_labels(task: int | str) -> tuple[str, ...]:
    """The labels of a task: a `Task`, or 8, 14, 19 (also 'cxr-8' or 'CXR-14'), in canonical order."""
    if isinstance(task, Task) and task.labels is not None:
        return task.labels
    key = str(task).lower().removeprefix("cxr-").removeprefix("cxr")
    try:
        return TASKS[int(key)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(map(str, TASKS))}, all, "
                         f"or a label list with --tasks-file") from None


def task_name(task: int | str) -> str:
    """'cxr-8' style name used in run folders (a `Task`'s own name)."""
    if isinstance(task, Task):
        return str(task)
    try:
        return f"cxr-{len(task_labels(task))}"
    except ValueError:
        if isinstance(task, str) and task.strip():  # already a task's (folder) name, e.g. 'cxr-40'
            return task
        raise


def as_task(task: int | str) -> Task:
    """A `Task` for a paper task number or name, or the task itself."""
    if isinstance(task, Task):
        return task
    labels = task_labels(task)
    return Task(f"cxr-{len(labels)}", labels)


def _name_for(labels: tuple[str, ...], default: str) -> str:
    """`cxr-N` for the paper's sets; otherwise `default` (never a paper task's name for other labels)."""
    for n, paper in TASKS.items():
        if labels == paper:
            return f"cxr-{n}"
    if default in {f"cxr-{n}" for n in TASKS}:
        return default.replace("cxr-", "labels-")
    return default


# The paper's datasets: stores of these hold the paper's labels (and the CXR-LT findings), and a task
# made of all their labels keeps the `cxr-N` name; a task of any other dataset's labels is named after it.
PAPER_DATASETS = ("nih-cxr-lt", "mimic-cxr-lt")
_SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_TOOLKIT_TASK = re.compile(r"^(cxr-?)?\d+$", re.IGNORECASE)  # 8, cxr8, CXR-14: the names of label counts


def slug(text: str) -> str:
    """`text` as a folder-safe name (lower case; runs of other characters become one `-`), "" if none is left."""
    out = re.sub(r"[^a-z0-9._-]+", "-", str(text).strip().lower())
    return re.sub(r"^[^a-z]+", "", out).rstrip("-._")[:64]


def check_name(name: str, option: str, example: str) -> str:
    """A user-given name that names a folder (`--task-name`, `cxrfeat extract --name`): returned stripped,
    or a one-line `UserError` when it is empty, unsafe in a folder name, or one of the paper's names."""
    from cxrfeat.errors import UserError

    name = (name or "").strip()
    if not name:
        raise UserError(f"{option} is empty: give a name such as {example}")
    if not _SAFE_NAME.match(name):
        raise UserError(f"{option} {name!r}: it names a folder, so use only letters, digits, '.', '_' and '-', "
                        f"starting with a letter (at most 64 characters), e.g. {example}")
    if _TOOLKIT_TASK.match(name) or name.lower() in (ALL, *PAPER_DATASETS, *LABEL_SETS):
        raise UserError(f"{option} {name!r}: that name is the paper's or the toolkit's (CXR-8, CXR-14 and CXR-19 "
                        f"are the paper's label sets, cxr-N and 'all' label counts, {', '.join(PAPER_DATASETS)} "
                        f"its datasets); choose your own, e.g. {example}")
    return name


def check_task_name(name: str) -> str:
    """`--task-name`: see `check_name`."""
    return check_name(name, "--task-name", "clinic-3")


def default_task_name(labels: tuple[str, ...], dataset: str | None) -> str:
    """The name of a task of all the labels of `dataset`'s store when the user gives none: `cxr-N` for the
    paper's sets and for the paper's datasets (`PAPER_DATASETS`, or unknown); else `<dataset>-<N>`
    (e.g. `clinic-3`), so a task of a user's own labels is named after their data, never `CXR-N`."""
    n = len(labels)
    own = slug(dataset or "")
    if dataset is None or dataset in PAPER_DATASETS or not own:
        return _name_for(labels, f"cxr-{n}")
    return _name_for(labels, f"{own}-{n}")


def read_tasks_file(path) -> Task:
    """A task from a file: one label name a line (aliases allowed; blank lines and `#` comments ignored),
    or one line naming a label set (`nih-cxr-lt`, `cxr-lt-2023`, `cxr-lt-2024`). Its name is the file's stem
    (or `cxr-N` when the labels are a paper task)."""
    from pathlib import Path

    from cxrfeat.errors import UserError

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--tasks-file {path}: cannot read it ({e})") from None
    names = [ln.split("#", 1)[0].strip() for ln in lines]
    names = [n for n in names if n]
    if len(names) == 1 and names[0].lower() in LABEL_SETS:
        labels = tuple(n for n in LABEL_SETS[names[0].lower()] if n != NO_FINDING)
    else:
        labels = tuple(dict.fromkeys(canonical(n) for n in names))
        if NO_FINDING in labels:
            raise UserError(f"--tasks-file {path}: {NO_FINDING!r} is never a task label")
    if len(labels) < 2:
        raise UserError(f"--tasks-file {path}: a task needs at least 2 labels, found {len(labels)}")
    stem = slug(path.stem) or "labels"
    return Task(_name_for(labels, f"{stem}-{len(labels)}"), labels)


def task_sort_key(name: str) -> tuple[int, str]:
    """Sort key of task names: by the number that ends the name (`cxr-8` < `cxr-14` < `cxr-19` <
    `labels-40`), then by name; names without one last."""
    m = re.search(r"(\d+)$", str(name))
    return (int(m.group(1)) if m else 10**9, str(name))


def resolve_tasks(tasks, available, dataset: str | None = None) -> list[Task]:
    """Tasks with `all` replaced by every label in `available` (the label names of `dataset`'s store) but
    `No Finding`, in that order, named as the user named it (`--task-name`) or by `default_task_name`;
    duplicates (by name) dropped. Other tasks are returned as they are."""
    out: dict[str, Task] = {}
    for t in tasks:
        t = as_task(t) if str(t) != ALL else t
        if str(t) == ALL and t.labels is None:
            labels = tuple(n for n in available if n != NO_FINDING)
            t = Task(t.named or default_task_name(labels, dataset), labels, t.named)
        out.setdefault(str(t), t)
    return list(out.values())


def parse_task_specs(spec: str, tasks_file=None, task_name: str | None = None) -> list[Task]:
    """Parse `--tasks 8,14,19,all` (and `--tasks-file FILE`) into tasks, duplicates dropped.

    `all` stays unresolved (`Task('all')`) until `resolve_tasks` sees the training store's labels.
    `task_name` (`--task-name`) names the one task made from the data's own labels: `all` or the tasks
    file's; the paper's tasks keep their names. A bad name is a one-line `UserError`.
    """
    from cxrfeat.errors import UserError

    named = check_task_name(task_name) if task_name is not None else None
    out: dict[str, Task] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        t = Task(ALL) if part.lower() == ALL else as_task(part)
        out.setdefault(str(t), t)
    own = [ALL] if ALL in out else []
    if tasks_file is not None:
        t = read_tasks_file(tasks_file)
        if str(t) not in {f"cxr-{n}" for n in TASKS}:
            own.append(str(t))
        out.setdefault(str(t), t)
    if not out:
        raise ValueError("--tasks is empty: give e.g. 8,14,19 or all")
    if named is not None:
        if len(own) != 1:
            raise UserError("--task-name names the one task made from your data's own labels (--tasks all or "
                            "--tasks-file; the paper's tasks 8, 14 and 19 keep their names): "
                            + (f"this command makes {len(own)} ({' and '.join(own)}); give them in two commands"
                               if own else "this command makes none"))
        t = out[own[0]]
        renamed = Task(ALL, None, named) if str(t) == ALL else Task(named, t.labels, named)
        out = {(str(renamed) if k == own[0] else k): (renamed if k == own[0] else v) for k, v in out.items()}
    return list(out.values())


def parse_task_option(spec: str, option: str = "--tasks") -> list[int]:
    """`parse_tasks` for a command-line option: a bad value is a one-line UserError naming the option."""
    from cxrfeat.errors import UserError

    try:
        return parse_tasks(spec)
    except ValueError as e:
        raise UserError(f"{option}: {e}") from None


def parse_tasks(spec: str) -> list[int]:
    """Parse a `--tasks 8,14,19` option of the paper's tasks into label counts (duplicates dropped)."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            out.append(len(task_labels(part)))
    if not out:
        raise ValueError("--tasks is empty: give e.g. 8,14,19")
    return list(dict.fromkeys(out))
