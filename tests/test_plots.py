"""The front figure: labels that overlap nothing, lines of equal final score, one column wide."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from matplotlib.text import Text  # noqa: E402

from analysis.plots import COLUMN_WIDTH, _iso_final_lines, place_labels, plot_front  # noqa: E402

# Five baselines within 0.01 of each other (as on digits and Fashion-MNIST), the original beside them.
CLUSTER = [("scrub", 0.2158, 0.7560), ("advanced_neggrad", 0.2100, 0.7580), ("finetune", 0.2092, 0.7573),
           ("neggrad", 0.2142, 0.7547), ("cf_k", 0.2100, 0.7593), ("original", 0.2192, 0.7533),
           ("bad_teaching", 0.1925, 0.7467), ("retrain", 0.0375, 0.7420)]


def test_labels_overlap_no_label_and_no_marker():
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 3.1))
    xs, ys = [p[1] for p in CLUSTER], [p[2] for p in CLUSTER]
    ax.scatter(xs, ys, s=16)
    ax.set_xlim(0.0, 0.28)
    ax.set_ylim(0.73, 0.77)
    fig.tight_layout()
    texts = place_labels(ax, [(x, y, f"{m} (F 0.02)") for m, x, y in CLUSTER], list(zip(xs, ys)))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text itself, not its leader line
    assert len(boxes) == len(CLUSTER)
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1:]), texts[i].get_text()
        for x, y in zip(xs, ys):
            px, py = ax.transData.transform((x, y))
            assert not a.contains(px, py), (texts[i].get_text(), "covers a marker")
        inside = ax.get_window_extent(renderer)
        assert inside.x0 <= a.x0 and a.x1 <= inside.x1 and inside.y0 <= a.y0 and a.y1 <= inside.y1
    plt.close(fig)


def test_front_figure_is_one_column_with_iso_lines(tmp_path):
    refs = pd.DataFrame([{"method": m, "sel_forgetting_score": x, "sel_accuracy": y, "sel_fs_se": 0.02,
                          "sel_accuracy_se": 0.01, "forget_quality": 0.02} for m, x, y in CLUSTER])
    trials = pd.DataFrame({"sel_forgetting_score": [0.12, 0.13, 0.15], "sel_accuracy": [0.744, 0.756, 0.768],
                           "sel_fs_se": [0.03] * 3, "sel_accuracy_se": [0.02] * 3})
    png, pdf = plot_front(trials, trials, refs, "gli-test: GLI vs baselines, protocol=fair", tmp_path / "front")
    assert pdf.suffix == ".pdf" and pdf.stat().st_size > 0
    from PIL import Image

    image = Image.open(png)
    assert image.info["dpi"][0] == pytest.approx(300, abs=1)  # print resolution
    assert image.size[0] / 300 <= COLUMN_WIDTH + 0.3  # fits one column of a two-column paper
    fonts = pdf.read_bytes()
    assert b"/FontType 3" not in fonts and b"/Subtype /Type3" not in fonts  # no Type 3 fonts: venues reject them
    assert b"/Subtype /TrueType" in fonts or b"/CIDFontType2" in fonts  # embedded as TrueType


def test_iso_lines_are_lines_of_equal_final_score():
    fig, ax = plt.subplots()
    ax.set_xlim(0.0, 0.3)
    ax.set_ylim(0.7, 0.8)
    before = len(ax.lines)
    _iso_final_lines(ax)
    lines = [line for line in ax.lines[before:] if len(line.get_xdata())]
    assert len(lines) >= 3
    for line in lines:
        (f0, f1), (a0, a1) = line.get_xdata(), line.get_ydata()
        assert abs((a0 + 1 - 2 * f0) / 2 - (a1 + 1 - 2 * f1) / 2) < 1e-9  # final = (acc + 1 - 2 FS) / 2
    plt.close(fig)


def _report_front(tmp_path, rows):
    from analysis.plots import plot_report_front
    import analysis.plots as plots

    methods = pd.DataFrame([{"method": m, "forgetting_score": fs, "forgetting_score_lo": max(0.0, fs - 0.02),
                             "forgetting_score_hi": fs + 0.03, "accuracy": acc, "accuracy_lo": acc - 0.05,
                             "accuracy_hi": min(1.0, acc + 0.03)} for m, fs, acc in rows])
    captured = {}
    real_save = plots._save
    plots._save = lambda fig, base: (captured.setdefault("fig", fig), real_save(fig, base))[1]
    try:
        png, pdf = plot_report_front(methods, methods.iloc[:0], "t: means over replicates", tmp_path / "front")
    finally:
        plots._save = real_save
    return captured["fig"], png, pdf


def _covers_nothing(fig):
    """From the drawn artists' extents: no label covers a marker or another label, no leader line crosses another,
    and the legend and the overview panel lie outside the main axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    canvas = FigureCanvasAgg(fig)  # the saved figure, drawn again as it was saved
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    half = 3.0 * fig.dpi / 72
    markers = [Bbox.from_extents(px - half, py - half, px + half, py + half)
               for c in ax.collections if hasattr(c, "get_offsets") and len(c.get_offsets())
               for px, py in ax.transData.transform(c.get_offsets())]
    from matplotlib.text import Text

    for panel in fig.axes:
        boxes = [Text.get_window_extent(t, renderer) for t in panel.texts]  # the text itself, not its leader line
        for i, box in enumerate(boxes):
            assert not any(box.overlaps(other) for other in boxes[i + 1:]), panel.texts[i].get_text()
            if panel is ax:
                assert not any(box.overlaps(m) for m in markers), panel.texts[i].get_text()
    main = ax.get_window_extent(renderer)
    legend = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert legend and not legend[0].get_window_extent(renderer).overlaps(main)
    for other in fig.axes[1:]:
        if other.get_visible() and other.axison:
            assert not other.get_tightbbox(renderer).overlaps(main)
    leaders = [t.arrow_patch.get_path().transformed(t.arrow_patch.get_transform()).vertices[[0, -1]]
               for t in ax.texts if getattr(t, "arrow_patch", None) is not None]

    def crosses(a, b, c, d):
        def turn(p, q, r):
            return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        return turn(a, b, c) * turn(a, b, d) < 0 and turn(c, d, a) * turn(c, d, b) < 0

    assert not any(crosses(*leaders[i], *leaders[j]) for i in range(len(leaders)) for j in range(i + 1, len(leaders)))


def test_the_report_front_keeps_every_method_on_the_figure_and_covers_no_point(tmp_path):
    """What the tables report: a far point (a collapsed baseline) goes to a panel of the whole range below, framed
    with the main view; no point is dropped; the legend has a strip of its own; labels cover no marker, no label and
    no leader line; the smoke study's crowded shape (thirteen methods within 0.01) included."""
    rows = [("original", 0.05, 0.915), ("retrain", 0.03, 0.868), ("finetune", 0.044, 0.912), ("gli", 0.046, 0.91),
            ("eu_k", 0.053, 0.38)]
    fig, png, pdf = _report_front(tmp_path, rows)
    ax = fig.axes[0]
    whole = next(a for a in fig.axes if a.get_title().startswith("all methods"))
    assert "eu_k" in [t.get_text() for t in whole.texts]
    assert all(m in [t.get_text() for t in ax.texts] for m in ("original", "retrain", "finetune", "gli"))
    assert png.exists() and b"/Subtype /Type3" not in pdf.read_bytes()
    _covers_nothing(fig)
    rng = np.random.default_rng(0)
    crowded = [("original", 0.06, 0.955), ("retrain", 0.012, 0.93)] + [
        (m, float(0.02 + rng.uniform(0, 0.01)), float(0.94 + rng.uniform(0, 0.01)))
        for m in ("gli", "finetune", "cf_k", "neggrad", "advanced_neggrad", "unsir", "scrub", "bad_teaching",
                  "random_labels", "salun", "l1_sparse", "ssd")] + [("eu_k", 0.2, 0.6)]
    fig, _, _ = _report_front(tmp_path, crowded)
    _covers_nothing(fig)

def test_the_losses_figure_shares_its_bins_and_axes():
    import analysis.plots as plots

    captured = {}
    real_save = plots._save
    plots._save = lambda fig, base: (captured.setdefault("fig", fig), [])[1]
    try:
        rng = np.random.default_rng(0)
        plots.plot_losses({"a": (rng.exponential(0.2, 100), rng.exponential(1.0, 100)),
                           "b": (rng.exponential(2.0, 100), rng.exponential(3.0, 100))}, "t", Path("unused"))
    finally:
        plots._save = real_save
    a, b = captured["fig"].axes[:2]
    assert a.get_xlim() == b.get_xlim() and a.get_ylim() == b.get_ylim()
    assert captured["fig"]._supylabel.get_text() == "density"
