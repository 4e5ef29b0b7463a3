"""Figures (PNG and PDF): the GLI Pareto front against the baselines, the forget-vs-unseen loss
distributions per method (as in the paper), and Optuna's history and importances.
Titles are short; the report states the protocol once.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; no display needed on a cluster node
# TrueType fonts in PDF and PS (Type 42): some venues reject the default Type 3 fonts.
matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42})
PNG_DPI = 300
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trainables.records import write_atomic  # noqa: E402

from .pareto import pareto_front  # noqa: E402


def _save(fig, base: Path) -> list[Path]:
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    write_atomic(paths[0], writer=lambda tmp: fig.savefig(tmp, dpi=PNG_DPI, bbox_inches="tight"))
    write_atomic(paths[1], writer=lambda tmp: fig.savefig(tmp, bbox_inches="tight"))
    plt.close(fig)
    return paths


def _focus(values: list[float], anchor: list[float], margin: float) -> tuple[float, float]:
    """Axis limits around the points that matter, so one collapsed baseline does not squash the rest."""
    lo = min(anchor) - margin if anchor else min(values)
    kept = [v for v in values if v >= lo]
    span = max(kept) - min(kept) if len(kept) > 1 else 0.05
    return min(kept) - 0.08 * span - 1e-3, max(kept) + 0.08 * span + 1e-3


COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
REFERENCE_MARKERS = {"original": ("s", "#d62728", "original"), "retrain": ("*", "#2ca02c", "retrained")}


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, references: pd.DataFrame, title: str, base: Path,
               x: str = "sel_forgetting_score", y: str = "sel_accuracy") -> list[Path]:
    """GLI trials as a cloud, the front as a line, each baseline a labelled marker, original and
    retrained marked, each point with one standard error each way; dashed lines of equal final score
    (final = (accuracy + 1 - 2 FS) / 2), so a reader sees which points tie. One column wide (PDF).
    Labels are placed where they overlap no other label and no marker; points far below the GLI
    front and the retrained model are named under the plot, not drawn."""
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 3.1))
    refs = references[[math.isfinite(a) and math.isfinite(b) for a, b in zip(references.get(x, []), references.get(y, []))]] \
        if len(references) else references
    anchor = list(front[y]) + list(refs.loc[refs["method"] == "retrain", y]) if len(refs) else list(front[y])
    y_lo, y_hi = _focus(list(trials[y]) + list(refs[y]) if len(refs) else list(trials[y]) or [0.0, 1.0], anchor, 0.15)
    if len(trials):
        ax.scatter(trials[x], trials[y], s=6, color="#9ecae1", label="GLI trials", zorder=2)
        _error_bars(ax, trials, x, y, "#9ecae1")
    if len(front):
        f = front.sort_values(x)
        ax.plot(f[x], f[y], "-o", color="#08519c", ms=3, lw=1.0, label="GLI front", zorder=3)
    markers = REFERENCE_MARKERS
    off_chart, labels, obstacles = [], [], [(px, py) for px, py in zip(front[x], front[y])] if len(front) else []
    for _, r in refs.sort_values(x).iterrows():
        m = r["method"]
        if r[y] < y_lo:
            off_chart.append(f"{m} ({r[x]:.3f}, {r[y]:.3f})")
            continue
        marker, color, label = markers.get(m, ("D", "#555555", None))
        _error_bars(ax, pd.DataFrame([r]), x, y, color)
        ax.scatter([r[x]], [r[y]], marker=marker, s=45 if label else 16, color=color, zorder=4,
                   edgecolor="black", linewidth=0.4, label=label)
        quality = r.get("forget_quality")
        text = m if quality is None or quality != quality else f"{m} (F {quality:.2f})"  # F beside FS, when audited
        labels.append((r[x], r[y], text))
        obstacles.append((r[x], r[y]))
    _front_axes(ax, (y_lo, y_hi), title, "")
    ax.legend(fontsize=5.5, loc="lower right", framealpha=0.8)
    fig.tight_layout()
    place_labels(ax, labels, obstacles)
    if off_chart:
        fig.text(0.01, -0.02, "\n".join(_wrap("below the chart (FS, accuracy): " + ", ".join(off_chart), 70)),
                 fontsize=5.5, va="top")
    return _save(fig, base)


def _front_axes(ax, ylim: tuple[float, float], title: str, where: str) -> None:
    """A front figure's axes: the accuracy range shown, padded forgetting-score range, lines of equal final
    score, labelled axes (`where`: which split the values come from), a short title."""
    ax.set_ylim(*ylim)
    ax.set_xlim(*_padded(ax.get_xlim(), 0.08))
    _iso_final_lines(ax)
    ax.set_xlabel(f"forgetting score{where} (lower is better)", fontsize=7)
    ax.set_ylabel(f"accuracy{where} (higher is better)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title("\n".join(_wrap(title, 60)), fontsize=6.5)
    ax.grid(alpha=0.25, lw=0.4)


def _padded(limits: tuple[float, float], fraction: float) -> tuple[float, float]:
    lo, hi = limits
    pad = (hi - lo) * fraction
    return lo - pad, hi + pad


def _iso_final_lines(ax) -> None:
    """Dashed lines of equal final score across the visible area, labelled at the top edge."""
    (x_lo, x_hi), (y_lo, y_hi) = ax.get_xlim(), ax.get_ylim()
    corners = [(a + 1 - 2 * f) / 2 for f in (x_lo, x_hi) for a in (y_lo, y_hi)]
    lo, hi = min(corners), max(corners)
    step = _nice_step((hi - lo) / 5)
    level = math.ceil(lo / step) * step
    last_x = -math.inf  # the last label's left edge on the figure, in points: labels closer than a label's width skip
    while level <= hi:
        fs = np.array([x_lo, x_hi])
        acc = 2 * level - 1 + 2 * fs  # final = (acc + 1 - 2 FS) / 2
        ax.plot(fs, acc, ls=(0, (3, 3)), lw=0.5, color="0.6", zorder=0)
        top_fs = (y_hi + 1 - 2 * level) / 2  # where the line meets the top edge
        at = ax.transData.transform((top_fs, y_hi))[0] * 72 / ax.figure.dpi
        if x_lo < top_fs < x_hi and abs(at - last_x) > 16:
            ax.annotate(f"{level:.2f}", (top_fs, y_hi), textcoords="offset points", xytext=(1, -7), fontsize=5,
                        color="0.45", zorder=0)
            last_x = at
        level += step
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.plot([], [], ls=(0, (3, 3)), lw=0.5, color="0.6", label="equal final score")


def _nice_step(raw: float) -> float:
    if raw <= 0 or not math.isfinite(raw):
        return 0.05
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def place_labels(ax, labels: list[tuple[float, float, str]], obstacles: list[tuple[float, float]],
                 fontsize: float = 5.5) -> list:
    """Each label near its point where its text overlaps no other label, no marker and stays inside the
    axes: candidate offsets around the point at growing distances, measured with the renderer; a thin
    leader line where the label sits away from its point. Returns the text objects."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    half = 3.5 * fig.dpi / 72  # a marker's half-size in pixels
    blocked = [Bbox.from_extents(px - half, py - half, px + half, py + half)
               for px, py in (ax.transData.transform(p) for p in obstacles)]
    blocked += [t.get_window_extent(renderer).padded(1.0) for t in ax.texts]  # what is written there already
    legend = ax.get_legend()
    if legend is not None:
        blocked.append(legend.get_window_extent(renderer))
    blocked += [inset.get_tightbbox(renderer) for inset in ax.child_axes]  # an inset, with its tick labels
    placed: list = []
    leaders: list = []  # the leader lines drawn so far, as display-space segments
    texts = []

    def crosses(a, b, c, d) -> bool:
        def turn(p, q, r):
            return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        return turn(a, b, c) * turn(a, b, d) < 0 and turn(c, d, a) * turn(c, d, b) < 0

    def through(a, b, box) -> bool:  # whether the segment a-b passes through the box
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
        return any(crosses(a, b, corners[i], corners[(i + 1) % 4]) for i in range(4))
    directions = [(1, 0), (1, 1), (1, -1), (-1, 0), (-1, 1), (-1, -1), (0, 1), (0, -1),
                  (1, 0.5), (1, -0.5), (-1, 0.5), (-1, -0.5), (0.5, 1), (-0.5, 1), (0.5, -1), (-0.5, -1)]
    for x, y, text in labels:
        chosen = None
        for strict, clear in ((True, True), (False, True), (False, False)):
            # first with leader lines that cross no other and run through no label; then crossings allowed; then
            # leader lines under labels (never a label over a label or a marker)
            for radius in (5, 10, 16, 24, 34, 46, 60, 80, 100, 125, 155, 190):
                # away from the point, slanted first: a vertical or level leader line would hide in an error bar
                for dx, dy in (directions if radius <= 5 else sorted(directions, key=lambda d: d[0] == 0 or d[1] == 0)):
                    ha = "left" if dx > 0.6 else "right" if dx < -0.6 else "center"
                    va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                    t = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx * radius, dy * radius * 0.7),
                                    ha=ha, va=va, fontsize=fontsize, zorder=5)
                    box = t.get_window_extent(renderer).padded(1.0)
                    fits = (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0
                            and box.y1 <= inside.y1 and not any(box.overlaps(b) for b in placed + blocked))
                    # no earlier leader line runs through the label; its own runs through no other label (and,
                    # strict, crosses no other leader)
                    fits = fits and not (clear and any(through(a, b, box) for a, b in leaders))
                    if fits and radius > 5:
                        start = tuple(ax.transData.transform((x, y)))
                        end = _leader_end(box)
                        fits = not (clear and any(through(start, end, b) for b in placed)) and not (
                            strict and any(crosses(start, end, a, b) for a, b in leaders))
                    if fits:
                        chosen = (t, box, radius)
                        break
                    t.remove()
                if chosen:
                    break
            if chosen:
                break
        if chosen is None:  # nowhere free: the nearest spot, said by a leader line (rare, reported by the test)
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, 8), fontsize=fontsize, zorder=5)
            chosen = (t, t.get_window_extent(renderer), 0)
        t, box, radius = chosen
        if radius > 5:  # away from its point: a leader line says whose label it is
            t.remove()
            ha, va = t.get_ha(), t.get_va()
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=t.xyann, ha=ha, va=va, fontsize=fontsize,
                            zorder=5, arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.15", "shrinkA": 0,
                                                  "shrinkB": 2})
        if radius > 5:
            start = tuple(ax.transData.transform((x, y)))
            leaders.append((start, _leader_end(box)))
        placed.append(box)
        texts.append(t)
    return texts


def _leader_end(box) -> tuple[float, float]:
    """Where matplotlib aims a label's leader line: the centre of its text (the line is clipped at the box)."""
    return ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)


def _error_bars(ax, points: pd.DataFrame, x: str, y: str, color: str) -> None:
    """One standard error each way: the forgetting score's bootstrap (`sel_fs_se`) and the accuracy's binomial."""
    xerr = points["sel_fs_se"] if "sel_fs_se" in points else None
    yerr = points["sel_accuracy_se"] if "sel_accuracy_se" in points else None
    if xerr is not None or yerr is not None:
        ax.errorbar(points[x], points[y], xerr=xerr, yerr=yerr, fmt="none", ecolor=color, elinewidth=0.7,
                    alpha=0.6, zorder=1)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def panels(names: list[str], draw, title: str, xlabel: str, base: Path, size=(3.2, 2.6), ylabel: str | None = None,
           share: bool = False) -> list[Path]:
    """A grid of small panels, four to a row: `draw(ax, name)` fills each; with `share`, one range on both axes
    for every panel; saved as PNG and PDF."""
    if not names:
        return []
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False,
                             sharex=share, sharey=share)
    for ax, name in zip(axes.flat, names):
        draw(ax, name)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if share:  # every panel keeps its own tick labels: a row may have no panel below it
        for ax in axes.flat:
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.yaxis.set_tick_params(labelleft=True)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("\n".join(_wrap(title, 120)), fontsize=9)
    fig.supxlabel(xlabel, fontsize=8)
    if ylabel:
        fig.supylabel(ylabel, fontsize=8)
    fig.tight_layout()
    return _save(fig, base)


def plot_losses(losses: dict[str, tuple[np.ndarray, np.ndarray]], title: str, base: Path) -> list[Path]:
    """Per method, histograms of the forget and unseen per-example losses, every panel on the same bins and the
    same axes (a method's losses read against another's)."""
    every = np.concatenate([np.asarray(v, dtype=float).ravel() for pair in losses.values() for v in pair] or [[]])
    every = every[np.isfinite(every)]
    hi = float(np.quantile(every, 0.99)) if len(every) else 1.0
    bins = np.linspace(0, max(hi, 1e-6), 40)

    def draw(ax, name):
        forget, unseen = (np.asarray(v, dtype=float) for v in losses[name])
        # stepfilled: one polygon per histogram rather than a patch per bar (a third of the drawing time)
        ax.hist(np.clip(unseen, 0, hi), bins=bins, alpha=0.55, density=True, color="#ff7f0e", label="unseen",
                histtype="stepfilled")
        ax.hist(np.clip(forget, 0, hi), bins=bins, alpha=0.55, density=True, color="#1f77b4", label="forget",
                histtype="stepfilled")
        ax.set_title(name, fontsize=9)

    return panels(list(losses), draw, f"per-example loss, forget vs unseen; {title}",
                  "per-example loss (clipped at the 99th percentile of all methods)", base, ylabel="density",
                  share=True)


def plot_optuna(study, title: str, out_dir: Path) -> list[Path]:
    """Optimisation history of each objective, and hyper-parameter importances (fANOVA)."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return []
    names = ["selection accuracy", "selection forgetting score"] if len(study.directions) > 1 else ["selection final score"]
    written = []
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes.flat, names)):
        values = [t.values[i] for t in complete]
        numbers = [t.number for t in complete]
        best = np.maximum.accumulate(values) if study.directions[i].name == "MAXIMIZE" else np.minimum.accumulate(values)
        ax.scatter(numbers, values, s=14, label="trial")
        ax.step(numbers, best, where="post", color="#d62728", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Optuna history: {study.study_name}; {title}", fontsize=9)
    fig.tight_layout()
    written += _save(fig, out_dir / "optuna_history")
    import warnings

    try:
        warnings.filterwarnings("ignore", message=".*PedAnovaImportanceEvaluator.*")  # its sign is handled below
        warnings.filterwarnings("ignore", message="Some regimes for parameter")  # small studies: expected
        # Optuna's default evaluator ranks parameters by how they reach *low* target values:
        # maximised objectives are negated.
        signs = [-1.0 if d.name == "MAXIMIZE" else 1.0 for d in study.directions]
        importances = [optuna.importance.get_param_importances(study, target=lambda t, i=i: signs[i] * t.values[i])
                       for i in range(len(names))]
    except (RuntimeError, ValueError, ZeroDivisionError):  # too few distinct trials for fANOVA
        return written
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3), squeeze=False)
    for ax, name, imp in zip(axes.flat, names, importances):
        keys = list(imp)[::-1]
        ax.barh(keys, [imp[k] for k in keys], color="#6baed6")
        ax.set_xlabel(f"importance for {name}")
    fig.suptitle(f"hyper-parameter importances (fANOVA): {study.study_name}; {title}", fontsize=9)
    fig.tight_layout()
    return written + _save(fig, out_dir / "optuna_importances")


def plot_tuning(curves: pd.DataFrame, title: str, base: Path) -> list[Path]:
    """Per searched method, each finished trial's selection final score and the best so far, against the trial
    number: one panel each, on a shared vertical range, so that equal budgets are seen to be spent alike."""
    scored = curves.dropna(subset=["sel_final_score"]) if len(curves) else curves
    if not len(scored):
        return []
    lo, hi = float(scored["sel_final_score"].min()), float(scored["sel_final_score"].max())
    pad = 0.05 * (hi - lo) + 1e-3

    def draw(ax, name):
        mine = curves[curves["method"] == name]
        done = mine.dropna(subset=["sel_final_score"])
        ax.scatter(done["trial"], done["sel_final_score"], s=10, color="#1f77b4", label="trial")
        ax.step(mine["trial"], mine["best_so_far"], where="post", color="#d62728", label="best so far")
        ax.set_ylim(lo - pad, hi + pad)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("selection final score", fontsize=7)
        ax.grid(alpha=0.3)

    return panels(list(dict.fromkeys(curves["method"])), draw, f"tuning, best so far; {title}", "trial", base)


def _interval_bars(ax, points: pd.DataFrame, x: str, y: str, color: str) -> None:
    """Each point's 95% interval over replicates both ways (`<metric>_lo`, `<metric>_hi`, asymmetric)."""
    def err(col):
        if f"{col}_lo" not in points or f"{col}_hi" not in points:
            return None
        lo = (points[col] - points[f"{col}_lo"]).clip(lower=0).fillna(0)
        hi = (points[f"{col}_hi"] - points[col]).clip(lower=0).fillna(0)
        return np.vstack([lo.to_numpy(dtype=float), hi.to_numpy(dtype=float)])

    ax.errorbar(points[x], points[y], xerr=err(x), yerr=err(y), fmt="none", ecolor=color, elinewidth=0.7,
                alpha=0.7, zorder=1)


def plot_report_front(methods: pd.DataFrame, gli_settings: pd.DataFrame, title: str, base: Path,
                      x: str = "forgetting_score", y: str = "accuracy") -> list[Path]:
    """What the tables report, as a figure: each method at its reported setting, its mean over the reported
    replicates on the report halves with its 95% interval both ways (per method, not simultaneous). The main
    axes hold the cluster; when a point lies far from it (a baseline that collapsed), a panel
    below shows every point with the main view framed, so no method is left off. The legend sits in a strip of
    its own under the axes and every label is placed where it covers no marker, no other label and no leader
    line (`place_labels`): nothing drawn covers a data point. One column wide. (`gli_settings`: GLI's settings,
    when a study reports several; drawn as a line through their front.)"""
    points = methods[[math.isfinite(a) and math.isfinite(b) for a, b in zip(methods.get(x, []), methods.get(y, []))]] \
        if len(methods) else methods
    if not len(points):
        return []
    anchor = list(points.loc[points["method"].isin(["retrain", "gli"]), y]) or list(points[y])
    y_lo, y_hi = _focus(list(points[y]), anchor, 0.15)
    inside = points[(points[y] >= y_lo) & (points[y] <= y_hi)]
    far = points[~points.index.isin(inside.index)]
    fig = plt.figure(figsize=(COLUMN_WIDTH, 4.0 if len(far) else 3.4))
    grid = fig.add_gridspec(3 if len(far) else 2, 1, height_ratios=[4, 1.4, 0.5] if len(far) else [4, 0.5],
                            hspace=0.6)
    ax = fig.add_subplot(grid[0])
    markers = {**REFERENCE_MARKERS, "gli": ("o", "#08519c", "GLI")}
    if len(gli_settings) > 1:
        front = pareto_front(gli_settings, accuracy=y, forgetting=x)
        ax.plot(front[x], front[y], "-", color="#08519c", lw=0.9, alpha=0.7, label="GLI front", zorder=2)
    labels, obstacles, named = [], [], False
    for _, r in inside.sort_values(x).iterrows():
        marker, color, label = markers.get(r["method"], ("D", "#555555", None))
        if label is None and not named:
            label, named = "baseline", True
        _interval_bars(ax, pd.DataFrame([r]), x, y, color)
        ax.scatter([r[x]], [r[y]], marker=marker, s=40 if r["method"] in markers else 16, color=color, zorder=4,
                   edgecolor="black", linewidth=0.4, label=label)
        labels.append((r[x], r[y], r["method"]))
        obstacles.append((r[x], r[y]))
    _front_axes(ax, (y_lo, y_hi), title, ", report halves")
    handles, names = ax.get_legend_handles_labels()
    strip = fig.add_subplot(grid[-1])
    strip.axis("off")  # the legend's own strip, under everything: it covers nothing
    strip.legend(handles, names, loc="center", ncol=min(4, max(1, len(names))), fontsize=5.5, frameon=False,
                 title="bars: each method's 95% interval over replicates", title_fontsize=5)
    if len(far):  # every method on the figure: the far ones in a panel of the whole range
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        whole = fig.add_subplot(grid[1])
        whole.scatter(points[x], points[y], s=6, color="#555555", zorder=3)
        whole.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.5, color="#08519c"))
        whole.tick_params(labelsize=4.5)
        whole.set_title("all methods (frame: the view above)", fontsize=5, pad=2)
        whole.set_xlim(*_padded(whole.get_xlim(), 0.25))
        whole.set_ylim(*_padded(whole.get_ylim(), 0.3))
    fig.subplots_adjust(left=0.16, right=0.97, top=0.9, bottom=0.04)  # the layout first: labels measure in it
    if len(far):
        place_labels(whole, [(r[x], r[y], r["method"]) for _, r in far.iterrows()],
                     list(zip(points[x], points[y])), fontsize=4.5)
    place_labels(ax, labels, obstacles)
    return _save(fig, base)
