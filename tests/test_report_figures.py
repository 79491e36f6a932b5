"""The report's figures read as a reviewer reads them: legends are the marks, one marker per task and one
scale across a figure set, one colour range per metric, the provenance inside every plot area, and flags
that say whose they are. Each figure function is called on small hand-made numbers; the figure object is
kept (after `save`) and its artists inspected."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import figures as F
from analysis.summary import Comparison, GroupStat, ModelStat

FLAG = "⚠ saturated circuit inputs in 3/3 seeds"


@pytest.fixture
def figs(monkeypatch):
    """Every figure saved during the test (closed, still inspectable)."""
    kept = []
    real = F.save

    def keep(fig, path):
        kept.append(fig)
        return real(fig, path)

    monkeypatch.setattr(F, "save", keep)
    return kept


def _stat(task, model, ts="nih-cxr-lt", label=None, mean=0.7, flag=""):
    return ModelStat(task, model, ts, label, {1: mean - 0.02, 2: mean, 3: mean + 0.02}, flag)


def _watermarks(ax):
    return [t for t in ax.texts if t.get_gid() == F.WATERMARK_GID]


def test_legend_swatches_are_the_bars_and_stars_explained_only_when_drawn(figs, tmp_path):
    stats_ = [_stat(t, m, flag=FLAG if m == "dqc" else "") for t in ("cxr-8", "cxr-14") for m in ("cdl", "dqc")]
    comps = [Comparison(stats_[0], stats_[1]), Comparison(stats_[2], stats_[3])]
    F.mean_auroc_figure(stats_, comps, tmp_path / "f5.png")
    fig = figs[-1]
    ax = fig.axes[0]
    handles = ax.get_legend().legend_handles
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["CDL", "DQC", "⚠ failed a sanity check (no stars)"]
    bars = [p for p in ax.patches if p.get_fill()]
    overlay = [p for p in ax.patches if not p.get_fill()]
    # each model's swatch has its bars' face and hatch; the flag entry is the red hatched overlay
    for handle, model in zip(handles[:2], ("cdl", "dqc"), strict=True):
        drawn = [b for b in bars if b.get_label() == F.model_name(model) or b.get_facecolor() == handle.get_facecolor()]
        assert drawn and all(np.allclose(b.get_facecolor(), handle.get_facecolor()) for b in drawn)
    assert overlay and handles[2].get_hatch() == overlay[0].get_hatch() == "xxx"
    assert np.allclose(handles[2].get_edgecolor(), overlay[0].get_edgecolor())
    foot = " ".join(t.get_text() for t in fig.texts)
    assert "*: p < 0.05" not in foot  # every comparison is flagged: no star is drawn, none explained

    F.mean_auroc_figure([_stat("cxr-8", "cdl"), _stat("cxr-8", "dqc", mean=0.6)],
                        [Comparison(_stat("cxr-8", "cdl"), _stat("cxr-8", "dqc", mean=0.6))], tmp_path / "g.png")
    assert "*: p < 0.05" in " ".join(t.get_text() for t in figs[-1].texts)
    assert [t.get_text() for t in figs[-1].axes[0].get_legend().get_texts()] == ["CDL", "DQC"]


def test_per_label_chart_shows_evidence_clipping_and_whose_flag(figs, tmp_path):
    comps = [Comparison(_stat("cxr-8", "cdl", label=lab, mean=m), _stat("cxr-8", "dqc", label=lab, mean=0.6, flag=FLAG))
             for lab, m in (("Effusion", 0.7), ("Hernia", 0.99))]
    F.per_label_figure(comps, tmp_path / "p.png", "t", positives={"Effusion": 40, "Hernia": 3})
    fig = figs[-1]
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["Effusion (40)", "Hernia (3)"]
    hernia_bars = [p for p in ax.patches if p.get_fill() and abs(p.get_x() + p.get_width() / 2 - 1) < 0.5]
    assert hernia_bars and all(p.get_alpha() == pytest.approx(0.4) for p in hernia_bars)  # 3 positives: pale
    foot = " ".join(t.get_text() for t in fig.texts)
    assert "clipped at 1.0" in foot  # 0.99 + 0.02 > 1
    assert "DQC's runs failed a sanity check" in foot and "not at fault" in foot  # the run's flag, not the label's
    assert "pale: < 10 test positives" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_volcano_plots_share_markers_and_scale(figs, tmp_path):
    def pts(tasks, p):
        return [{"label": f"L{i}", "task": t, "test_set": "nih-cxr-lt", "pct_diff": 5.0 * (i + 1), "p": p, "flag": ""}
                for t in tasks for i in range(3)]

    markers = F.task_markers(["cxr-8", "cxr-14", "cxr-19"])
    everything = pts(["cxr-8"], 1e-4) + pts(["cxr-14", "cxr-19"], 0.2)
    F.volcano_figure(pts(["cxr-8"], 1e-4), tmp_path / "a.png", "a", markers=markers, scale_points=everything)
    F.volcano_figure(pts(["cxr-14", "cxr-19"], 0.2), tmp_path / "b.png", "b", markers=markers,
                     scale_points=everything)
    a, b = (f.axes[0] for f in figs[-2:])
    assert a.get_ylim() == b.get_ylim() and a.get_xlim() == b.get_xlim()
    assert a.get_ylim()[0] < 0  # a point at p = 1 is drawn whole, not half under the axis

    def legend(fig):
        leg = fig.legends[0]
        return {t.get_text(): h.get_marker() for t, h in zip(leg.get_texts(), leg.legend_handles, strict=True)
                if hasattr(h, "get_marker")}

    assert legend(figs[-2])["CXR-8"] == markers["cxr-8"] == "o"
    assert legend(figs[-1])["CXR-14"] == markers["cxr-14"] != "o"  # not the first marker of its own figure
    assert any("p = 0.05" in t.get_text() for t in figs[-1].legends[0].get_texts())  # the dashed line explained


def test_volcano_labels_stay_clear_of_axis_texts_and_frame(figs, tmp_path):
    from matplotlib.text import Text

    rng = np.random.default_rng(3)
    points = [{"label": f"Label {i}", "task": "cxr-8", "test_set": "t", "pct_diff": float(x), "p": float(p), "flag": ""}
              for i, (x, p) in enumerate(zip(rng.uniform(5, 60, 12), 10 ** -rng.uniform(0, 1.5, 12), strict=True))]
    F.volcano_figure(points, tmp_path / "v.png", "v")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figs[-1]
    ax = fig.axes[0]
    FigureCanvasAgg(fig).draw()  # closed by save: a fresh canvas to measure on
    renderer = fig.canvas.get_renderer()
    anns = [a for a in ax.texts if a.__class__.__name__ == "Annotation"]
    others = [t for t in ax.texts if t not in anns and t.get_gid() != F.WATERMARK_GID]
    frame = ax.get_window_extent(renderer)
    boxes = [Text.get_window_extent(a, renderer) for a in anns]
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        assert not any(box.overlaps(t.get_window_extent(renderer)) for t in others), anns[i].get_text()
        assert not any(box.overlaps(boxes[j]) for j in range(i))


def test_heatmap_one_colour_range_per_metric_and_flagged_cells(figs, tmp_path):
    def panel(model, values, flagged=None):
        return {"label": f"{model} · val loss", "row_key": None, "row_values": [None], "col_key": "lr",
                "col_values": [1e-3, 3e-3], "values": np.array([values]), "selected": (0, 0), "digits": 4,
                "better": "low", "metric": "val_loss:", "flagged": np.array([flagged or [False, False]])}

    F.grid_heatmap_figure([[panel("CDL", [0.888, 0.894], [False, True])], [panel("DQC", [0.40, 0.60])]],
                          tmp_path / "g.png", "grid")
    fig = figs[-1]
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2 and images[0].get_clim() == images[1].get_clim() == (0.40, 0.894)
    assert sum(t.get_text() == "⚠" for ax in fig.axes for t in ax.texts) == 1
    assert "failed a sanity check" in " ".join(t.get_text() for t in fig.texts).replace("\n", " ")


def test_watermark_inside_every_plot_area_when_marked(figs, tmp_path):
    marks = ("SYNTHETIC DATA", "RANDOM-WEIGHT BACKBONE")
    groups = [GroupStat("cxr-8", m, "nih-cxr-lt", g, labs, {1: 0.6, 2: 0.7})
              for m in ("cdl", "dqc") for g, labs in (("head", ("A", "B")), ("tail", ("Hernia",)))]
    F.long_tail_figure(groups, tmp_path / "lt.png", marks)
    fig = figs[-1]
    plot_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert plot_axes and all(len(_watermarks(ax)) == 1 for ax in plot_axes)
    assert _watermarks(plot_axes[0])[0].get_text() == "SYNTHETIC DATA\nRANDOM-WEIGHT BACKBONE"
    assert [t.get_text() for t in plot_axes[0].get_xticklabels()] == ["head\n2 labels", "tail\n1 label:\nHernia"]
    F.long_tail_figure(groups, tmp_path / "lt2.png", ())
    assert not any(_watermarks(ax) for ax in figs[-1].axes)


def test_long_tail_names_of_one_label_groups_never_touch(figs, tmp_path):
    """Groups of one label each (a user's own 3-label task) are named by that label under the bar: long
    names wrap until no two tick labels overlap on the drawn figure."""
    names = ("Subcutaneous Emphysema", "Calcification of the Aorta", "Pneumomediastinum")
    groups = [GroupStat("clinic-3", m, "clinic", g, (lab,), {1: 0.6, 2: 0.7})
              for m in ("cdl", "dqc") for g, lab in zip(("head", "medium", "tail"), names, strict=True)]
    F.long_tail_figure(groups, tmp_path / "lt.png", ())
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figs[-1]
    canvas = FigureCanvasAgg(fig)  # the saved figure, drawn again to measure its text
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        if not labels:
            continue
        assert [" ".join(t.get_text().split("\n")[2:]) for t in labels] == list(names)  # every word still shown
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), boxes


def test_report_subset_draws_only_the_chosen_tasks(tmp_path):
    """`analysis report --tasks/--models/--test-sets`: a sweep of CXR-8 and CXR-14 reported for CXR-14 on one
    test set draws no CXR-8 figure; its volcano plot is named for CXR-14, not for the paper's CXR-8 labels."""
    from test_report import make_sweep  # the hand-built sweep of tests/test_report.py

    from analysis.report import build_report
    from cxrfeat.errors import UserError

    sweep = make_sweep(tmp_path, tasks=(8, 14), extra=())
    out = tmp_path / "reports" / "cxr14"
    build_report(runs=sweep, out=out, resamples=20, tasks=["14"], models=["cdl", "dqc"], test_sets=["nih-cxr-lt"])
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert "volcano_cxr-14.png" in names and not any("cxr-8" in n or "cxr8" in n or "mimic" in n for n in names)
    text = (out / "report.md").read_text()
    assert "cxr-8" not in text.lower() and "CXR-8 labels" not in text
    with pytest.raises(UserError, match="--tasks 27: this sweep has no such task; it has cxr-8, cxr-14"):
        build_report(runs=sweep, out=tmp_path / "x", tasks=["27"])


def test_volcano_groups_follow_the_sweeps_tasks():
    from analysis.report import volcano_groups
    from cxrfeat.labels import TASKS

    def pts(task, labels):
        return [{"task": task, "label": lab} for lab in labels]

    paper = volcano_groups(["cxr-8", "cxr-14"], pts("cxr-8", TASKS[8]) + pts("cxr-14", TASKS[14]))
    assert [k for k, _, _ in paper] == ["cxr8", "cxr14_added"]
    alone = volcano_groups(["cxr-14"], pts("cxr-14", TASKS[14]))  # no CXR-8 in the sweep: no "CXR-8 labels"
    assert [(k, w) for k, w, _ in alone] == [("cxr-14", "CXR-14 labels")] and len(alone[0][2]) == 14
    own = volcano_groups(["spine"], pts("spine", ["Scoliosis", "Implant", "Fracture"]))
    assert [(k, w) for k, w, _ in own] == [("spine", "SPINE labels")]
