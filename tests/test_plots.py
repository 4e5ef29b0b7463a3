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


def test_the_report_front_keeps_every_method_on_the_figure_with_its_interval(tmp_path):
    """What the tables report: a far point (a collapsed baseline) goes to an inset of the whole range, framed
    with the main view; no point is dropped; the intervals are drawn both ways."""
    from analysis.plots import plot_report_front

    rows = [("original", 0.05, 0.915), ("retrain", 0.03, 0.868), ("finetune", 0.044, 0.912), ("gli", 0.046, 0.91),
            ("eu_k", 0.053, 0.38)]
    methods = pd.DataFrame([{"method": m, "forgetting_score": fs, "forgetting_score_lo": fs - 0.02,
                             "forgetting_score_hi": fs + 0.03, "accuracy": acc, "accuracy_lo": acc - 0.05,
                             "accuracy_hi": min(1.0, acc + 0.03)} for m, fs, acc in rows])
    settings = methods[methods["method"] == "gli"].assign(method="s1")
    captured = {}
    import analysis.plots as plots

    real_save = plots._save
    plots._save = lambda fig, base: (captured.setdefault("fig", fig), real_save(fig, base))[1]
    try:
        png, pdf = plot_report_front(methods, settings, "t: means over replicates", tmp_path / "front")
    finally:
        plots._save = real_save
    ax = captured["fig"].axes[0]  # the main axes (the inset is its child)
    insets = ax.child_axes
    assert len(insets) == 1  # eu_k is far below the cluster: shown in the inset
    inset_text = [t.get_text() for t in insets[0].texts]
    main_text = [t.get_text() for t in ax.texts]
    assert "eu_k" in inset_text and all(m in main_text for m in ("original", "retrain", "finetune", "gli"))
    assert png.exists() and b"/Subtype /Type3" not in pdf.read_bytes()


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
