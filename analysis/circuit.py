"""The report's drawing of a DQC head (the paper's Fig. 2) at a run's width and depth.

`columns(n, layers)` is the circuit as the drawing lays it out: a list of time steps, each a list
of `Gate`s on distinct qubits — H on every qubit, RY(α_k) on qubit k (the angles from the pre
layer), then per layer l RY(θ_l,k) on every qubit and the CNOT ring k→k+1, …, n−1→0 (one CNOT 0→1
at n = 2), then Z measurements. It is written from docs/design.md "The models", not from
`heads.export`, so that `tests/test_report_circuit.py` can hold the drawing against the exported
Qiskit circuit. Each gate carries the export's parameter name (`angle_k`, `theta_l_k`), drawn as
α_k and θ_l,k.

`circuit_figure(...)` draws those steps with matplotlib, every gate an artist whose gid is
`gate:<step>:<name>:<qubits>:<param>`: the classical pre layer (blue, as in the paper), the encoding
(light blue), the trained rotations (yellow), the CNOTs (white), the measurements, and the post layer
(orange) whose output j is label j (named in the task's label order). Qubit k is input k of the post
layer; every label mixes every qubit, so qubit wires are named q[k], not by a label. Sizes are in
inches (one axes unit = one inch), so a 19-qubit, 3-layer circuit keeps 7–8 pt text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from analysis import figures as F
from analysis.figures import plt

PRE_COLOR = "#9ecae1"  # the paper's blue: preprocessing
ENCODE_COLOR = "#deebf7"  # the encoding carries the pre layer's outputs
THETA_COLOR = "#ffe066"  # the paper's yellow: trained circuit parameters
POST_COLOR = "#fdae6b"  # the paper's orange: postprocessing
ROW = 0.34  # inches between qubit wires
BOX_H = 0.25
CX_STEP = 0.17  # inches between the CNOTs of a ring (a ring is n steps: its CNOTs share qubits)
DOT_R, TARGET_R = 0.035, 0.072
FONT = 7.5


@dataclass(frozen=True)
class Gate:
    """One gate: `name` as Qiskit names it ('h', 'ry', 'cx', 'measure'); `qubits` (control, target) for
    'cx'; `param` the export's parameter name of an 'ry' ('angle_k' input, 'theta_l_k' trained)."""

    name: str
    qubits: tuple[int, ...]
    param: str | None = None


def _width(count: int) -> int:
    return len(str(count - 1))


def columns(n: int, layers: int) -> list[list[Gate]]:
    """The drawn time steps of the DQC with n qubits and `layers` layers (module docstring)."""
    if n < 2 or layers < 1:
        raise ValueError(f"a DQC has at least 2 qubits and 1 layer, not {n} and {layers}")
    wq, wl = _width(n), _width(layers)
    steps = [[Gate("h", (k,)) for k in range(n)],
             [Gate("ry", (k,), f"angle_{k:0{wq}d}") for k in range(n)]]
    ring = [(0, 1)] if n == 2 else [(k, (k + 1) % n) for k in range(n)]
    for lay in range(layers):
        steps.append([Gate("ry", (k,), f"theta_{lay:0{wl}d}_{k:0{wq}d}") for k in range(n)])
        steps += [[Gate("cx", pair)] for pair in ring]
    steps.append([Gate("measure", (k,)) for k in range(n)])
    return steps


def symbol(param: str) -> str:
    """The drawn name of an export parameter: angle_07 -> α_7, theta_1_07 -> θ_1,7 (mathtext)."""
    if m := re.fullmatch(r"angle_(\d+)", param):
        return rf"$R_Y(\alpha_{{{int(m[1])}}})$"
    if m := re.fullmatch(r"theta_(\d+)_(\d+)", param):
        return rf"$R_Y(\theta_{{{int(m[1])},{int(m[2])}}})$"
    raise ValueError(f"not a DQC parameter name: {param!r}")


def _text_width(text: str, size: float) -> float:
    from matplotlib.textpath import TextPath

    return TextPath((0, 0), text, size=size).get_extents().width / 72.0


def _gid(step: int, g: Gate) -> str:
    return f"gate:{step}:{g.name}:{','.join(map(str, g.qubits))}:{g.param or ''}"


def _box(ax, x: float, y: float, w: float, text: str, color: str, gid: str, size: float = FONT):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - BOX_H / 2), w, BOX_H, boxstyle="round,pad=0,rounding_size=0.03",
                                fc=color, ec="0.15", lw=0.7, zorder=3, gid=gid))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, zorder=4)


def _meter(ax, x: float, y: float, gid: str) -> None:
    from matplotlib.patches import Arc, FancyBboxPatch

    w = 0.30
    ax.add_patch(FancyBboxPatch((x - w / 2, y - BOX_H / 2), w, BOX_H, boxstyle="round,pad=0,rounding_size=0.03",
                                fc="white", ec="0.15", lw=0.7, zorder=3, gid=gid))
    ax.add_patch(Arc((x, y - 0.06), 0.2, 0.2, theta1=20, theta2=160, lw=0.7, zorder=4))
    ax.plot([x, x + 0.07], [y - 0.06, y + 0.07], lw=0.7, color="0.15", zorder=4)


def _cnot(ax, x: float, yc: float, yt: float, gid: str) -> None:
    from matplotlib.patches import Circle

    ax.plot([x, x], [yc, yt + (TARGET_R if yt < yc else -TARGET_R)], lw=0.8, color="0.1", zorder=3, gid=gid)
    ax.add_patch(Circle((x, yc), DOT_R, fc="0.1", ec="0.1", zorder=4))
    ax.add_patch(Circle((x, yt), TARGET_R, fc="white", ec="0.1", lw=0.8, zorder=4))
    ax.plot([x - TARGET_R, x + TARGET_R], [yt, yt], lw=0.8, color="0.1", zorder=5)
    ax.plot([x, x], [yt - TARGET_R, yt + TARGET_R], lw=0.8, color="0.1", zorder=5)


def _step_widths(steps: list[list[Gate]], size: float) -> list[float]:
    """Each step's width: one for all encoding steps, one for all trained-rotation steps (the width of
    their longest label: a mathtext layout is slow, so one per kind)."""
    longest: dict[str, str] = {}
    for step in steps:
        for g in step:
            if g.name == "ry":
                kind, text = g.param.split("_")[0], symbol(g.param)
                if len(text) > len(longest.get(kind, "")):
                    longest[kind] = text
    ry = {kind: _text_width(text, size) + 0.16 for kind, text in longest.items()}
    return [CX_STEP if s[0].name == "cx" else ry[s[0].param.split("_")[0]] if s[0].name == "ry" else 0.42
            for s in steps]


def circuit_figure(labels: list[str], layers: int, path: str | Path, *, title: str | None = None,
                   caption: str = "", marks=(), dim: int | None = None, feature_norm: bool = False) -> Path:
    """Draw the DQC of len(labels) qubits and `layers` layers (module docstring) into `path` (PNG).

    `labels`: the task's labels in its order (post-layer output j is labels[j]); `dim`: the embedding
    size the pre layer reads (None: D); `feature_norm`: the run standardised features first;
    `caption`: one line of provenance under the drawing; `marks`: the report's provenance marks."""
    n = len(labels)
    steps = columns(n, layers)
    widths = _step_widths(steps, FONT)
    gap = 0.12  # between a gate step and the next group
    # left: pre-layer box, wire names; right: meters, post-layer box, label names
    pre_lines = ["pre layer", rf"$x \in \mathbb{{R}}^{{{dim or 'D'}}}$", *(["standardised"] if feature_norm else []),
                 f"Dense {dim or 'D'}→{n}", "tanh · π/2", rf"$\rightarrow\ \alpha_0 … \alpha_{{{n - 1}}}$"]
    post_lines = ["post layer", f"Dense {n}→{n}", "sigmoid", "→ label outputs"]
    pre_w = max(_text_width(t, FONT) for t in pre_lines) + 0.2
    name_w = _text_width(f"q[{n - 1}] |0⟩", FONT) + 0.12
    label_w = max(_text_width(lab, FONT + 0.5) for lab in labels) + 0.15
    post_w = max(_text_width(t, FONT) for t in post_lines) + 0.2
    body = sum(widths) + gap * (2 + layers)
    left = 0.15 + pre_w + 0.25 + name_w
    width = left + body + 0.15 + 0.3 + post_w + 0.12 + label_w + 0.1
    rows_h = (n - 1) * ROW
    text_h = max(len(pre_lines), len(post_lines)) * FONT * 1.45 / 72 + 0.1
    box_h = max(rows_h + BOX_H + 0.1, text_h)
    header, caption_h = 0.45, 0.28
    top_band = (0.3 if marks else 0.0) + (0.32 if title else 0.05)
    height = top_band + header + box_h + caption_h + 0.05
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    y0 = height - top_band - header - (box_h - rows_h) / 2  # qubit 0's wire, at the top
    ys = [y0 - k * ROW for k in range(n)]
    mid = (ys[0] + ys[-1]) / 2

    def tall_box(x, w, lines, color, gid):
        from matplotlib.patches import FancyBboxPatch

        ax.add_patch(FancyBboxPatch((x, mid - box_h / 2), w, box_h, boxstyle="round,pad=0,rounding_size=0.06",
                                    fc=color, ec="0.2", lw=0.8, zorder=3, gid=gid))
        ax.text(x + w / 2, mid, "\n".join(lines), ha="center", va="center", fontsize=FONT, linespacing=1.45, zorder=4)

    tall_box(0.15, pre_w, pre_lines, PRE_COLOR, "pre-layer")
    wire_start = 0.15 + pre_w + 0.25
    for k, y in enumerate(ys):
        ax.annotate("", (wire_start - 0.02, y), (0.15 + pre_w + 0.02, y),
                    arrowprops={"arrowstyle": "-|>", "lw": 0.5, "color": "0.45", "mutation_scale": 6})
        ax.text(wire_start + name_w - 0.06, y, f"q[{k}] |0⟩", ha="right", va="center", fontsize=FONT)
    # the gate steps, left to right; groups (encoding, each layer, measurement) separated by `gap`
    x = left
    spans: list[tuple[str, float, float]] = []
    group_start = x
    for i, (step, w) in enumerate(zip(steps, widths, strict=True)):
        g0 = step[0]
        starts_group = g0.name == "measure" or (g0.name == "ry" and g0.param.startswith("theta"))
        if starts_group:
            spans.append(("encoding" if not spans else f"layer {len(spans) - 1}", group_start, x))
            x += gap
            group_start = x
        cx = x + w / 2
        for g in step:
            gid = _gid(i, g)
            if g.name == "h":
                _box(ax, cx, ys[g.qubits[0]], 0.3, "H", "white", gid)
            elif g.name == "ry":
                color = ENCODE_COLOR if g.param.startswith("angle") else THETA_COLOR
                _box(ax, cx, ys[g.qubits[0]], w - 0.08, symbol(g.param), color, gid)
            elif g.name == "cx":
                _cnot(ax, cx, ys[g.qubits[0]], ys[g.qubits[1]], gid)
            else:
                _meter(ax, cx, ys[g.qubits[0]], gid)
        x += w
    spans.append(("measure Z", group_start, x))
    end = x
    for y in ys:
        ax.plot([left - 0.05, end + 0.05], [y, y], lw=0.7, color="0.35", zorder=1)
    # a bracket and name over each group
    top = ys[0] + BOX_H / 2 + 0.1
    for name, a, b in spans:
        ax.plot([a + 0.02, a + 0.02, b - 0.02, b - 0.02], [top, top + 0.06, top + 0.06, top], lw=0.7, color="0.3")
        ax.text((a + b) / 2, top + 0.1, name, ha="center", va="bottom", fontsize=FONT + 0.5)
    post_x = end + 0.15 + 0.3
    for y in ys:
        ax.annotate("", (post_x - 0.02, y), (end + 0.07, y),
                    arrowprops={"arrowstyle": "-|>", "lw": 0.5, "color": "0.45", "mutation_scale": 6})
    ax.text((end + post_x) / 2, ys[-1] - BOX_H / 2 - 0.03, r"$\langle Z_k\rangle$", ha="center", va="top",
            fontsize=FONT, color="0.3")
    tall_box(post_x, post_w, post_lines, POST_COLOR, "post-layer")
    lab_x = post_x + post_w + 0.12
    ax.text(lab_x, top + 0.1, "label (output j)", ha="left", va="bottom", fontsize=FONT + 0.5)
    for j, (lab, y) in enumerate(zip(labels, ys, strict=True)):
        ax.text(lab_x, y, lab, ha="left", va="center", fontsize=FONT + 0.5, gid=f"label:{j}")
    if title:
        F.stamp(fig, marks)
        fig.text(0.5, 1 - ((0.3 if marks else 0.0) + 0.06) / height, title, ha="center", va="top", fontsize=10.5)
    else:
        F.stamp(fig, marks)
    if caption:
        # one line in smaller type when it is long; two lines of 5.5 pt when it is longer still
        size = FONT - 0.5
        size *= min(1.0, (width - 0.3) / _text_width(caption.replace("$", r"\$"), size))
        if size < 5.5:
            import textwrap

            size = 5.5
            chars = int(len(caption) * (width - 0.3) / _text_width(caption.replace("$", r"\$"), size))
            caption = "\n".join(textwrap.wrap(caption, max(20, chars))[:2])
        fig.text(0.1 / width, 0.06 / height, caption, ha="left", va="bottom", fontsize=size, color="0.3")
    return F.save(fig, Path(path))
