"""Figures people look at (matplotlib, Agg backend; every function writes one PNG and returns its path).

- `plot_prediction`: one song's predicted arousal/valence over time (dsaml-predict).
- `plot_curves`: true curves against one or more predictions (e.g. before / after personalisation).
- `plot_attention`: head-averaged attention maps of every pass and layer of one clip.
- `plot_rater_gains`: per-rater change of a score after adaptation, sorted, with the mean and spread.
- `plot_gain_intervals`: mean per-rater gain of each comparison with its 95% interval, overall and per
  rater kind (`dsaml.reporting.paired_gains` summaries).
- `plot_gain_growth`: mean gain with its 95% interval against a setting (e.g. meta-training length).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dsaml.outputs import atomic_output  # noqa: E402

DIMENSIONS = ("arousal", "valence")
TRUE_COLOR = "black"


def series_color(index: int) -> tuple[float, float, float, float]:
    """The colour of series `index`: tab10's ten distinct colours (a figure with more series repeats them)."""
    return plt.get_cmap("tab10")(index % 10)


def _legend_below(fig: plt.Figure, handles: Sequence, labels: Sequence[str], ncol: int) -> None:
    """The figure's legend in rows under its axes, with room reserved for it: it hides nothing."""
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, min(0.5, (0.1 + 0.2 * rows) / fig.get_figheight()), 1, 1))


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def _time_axis(n: int, start_s: float, step_s: float) -> np.ndarray:
    return start_s + step_s * np.arange(n)


def plot_prediction(
    path: str | Path, time_s: np.ndarray, arousal: np.ndarray, valence: np.ndarray, title: str
) -> Path:
    """Predicted arousal and valence [T] against time [T] in seconds; with the valence-arousal path."""
    fig = plt.figure(figsize=(10, 4.2))
    grid = fig.add_gridspec(2, 2, width_ratios=(3, 1.2))
    for row, (name, values) in enumerate(zip(DIMENSIONS, (arousal, valence), strict=True)):
        ax = fig.add_subplot(grid[row, 0])
        ax.plot(time_s, values, color=series_color(row), lw=1.4)
        ax.axhline(0, color="grey", lw=0.6, ls=":")
        ax.set_ylabel(name)
        ax.set_xlim(time_s[0], time_s[-1] if len(time_s) > 1 else time_s[0] + 0.5)
        ax.grid(alpha=0.3)
        if row == 1:
            ax.set_xlabel("time (s)")
    ax = fig.add_subplot(grid[:, 1])
    points = ax.scatter(valence, arousal, c=time_s, cmap="viridis", s=6)
    ax.plot(valence, arousal, color="grey", lw=0.4, alpha=0.6)
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    lim = max(1.0, float(np.abs(np.concatenate([arousal, valence])).max()) * 1.05)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("valence")
    ax.set_ylabel("arousal")
    fig.colorbar(points, ax=ax, label="time (s)", fraction=0.05)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(
    path: str | Path,
    true: tuple[np.ndarray, np.ndarray],
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    start_s: float = 15.0,
    step_s: float = 0.5,
    support_until: int | None = None,
) -> Path:
    """True (arousal [T], valence [T]) against each labelled prediction (arousal [T], valence [T]).

    A prediction shorter than the true curves covers their last values (e.g. the within-song query).
    `start_s` is the time of the first value; `support_until` shades the first segments that the
    adaptation saw (within-song protocol), so the scored part is the rest.
    """
    fig, axes = plt.subplots(2, 1, figsize=(9, 5.4 + 0.2 * ((len(predictions) + 2) // 3)), sharex=True)
    n = len(true[0])
    time = _time_axis(n, start_s, step_s)
    for row, (ax, name) in enumerate(zip(axes, DIMENSIONS, strict=True)):
        ax.plot(time, true[row], color=TRUE_COLOR, lw=1.8, label="rater (true)")
        for index, (label, curves) in enumerate(predictions.items()):
            values = np.asarray(curves[row])
            ax.plot(time[n - len(values) :], values, color=series_color(index), lw=1.3, label=label)
        if support_until:
            ax.axvspan(
                time[0], time[min(support_until, n - 1)], color="grey", alpha=0.15, label="adaptation support"
            )
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=10)
    _legend_below(fig, *axes[0].get_legend_handles_labels(), ncol=3)
    return _save(fig, path)


def plot_attention(path: str | Path, maps: np.ndarray, pass_names: Sequence[str], title: str) -> Path:
    """maps [passes * L, T, T] (head-averaged attention probabilities of one clip), one panel each; rows are
    passes (e.g. local, global), columns layers. Colour = attention weight (query row -> key column)."""
    maps = np.asarray(maps)
    passes = len(pass_names)
    layers = maps.shape[0] // passes
    fig, axes = plt.subplots(passes, layers, figsize=(3.2 * layers + 0.8, 3.1 * passes), squeeze=False)
    for p in range(passes):
        for layer in range(layers):
            ax = axes[p, layer]
            image = ax.imshow(
                maps[p * layers + layer],
                cmap="magma",
                vmin=0,
                vmax=float(maps[p * layers + layer].max()),
                interpolation="nearest",
            )
            ax.set_title(f"{pass_names[p]} pass, layer {layer + 1}", fontsize=9)
            ax.set_xlabel("key segment", fontsize=8)
            ax.set_ylabel("query segment", fontsize=8)
            ax.tick_params(labelsize=7)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    fig.suptitle(title, fontsize=10, wrap=True)
    fig.tight_layout()
    return _save(fig, path)


def plot_rater_gains(
    path: str | Path,
    gains: Mapping[str, Mapping[str, float]],
    metric: str,
    title: str,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Per-rater gain of `metric` after adaptation: gains = {comparison: {rater: gain}}, one bar per
    comparison and rater, raters sorted by the first comparison's gain; dashed lines = mean gain per
    comparison. `labels`: tick label per rater (default: the id)."""
    protocols = list(gains)
    first = gains[protocols[0]]
    raters = sorted({r for g in gains.values() for r in g}, key=lambda r: (r not in first, first.get(r, 0.0)))
    width = 0.8 / len(protocols)
    x = np.arange(len(raters))
    fig, ax = plt.subplots(
        figsize=(max(8.0, 0.32 * len(raters) + 2), 4.2 + 0.2 * ((len(protocols) + 1) // 2))
    )
    for index, protocol in enumerate(protocols):
        values = np.array([gains[protocol].get(r, np.nan) for r in raters])
        ax.bar(
            x + (index - (len(protocols) - 1) / 2) * width,
            values,
            width,
            color=series_color(index),
            label=f"{protocol}: mean {np.nanmean(values):+.3f} ± {np.nanstd(values):.3f}, "
            f"{int(np.sum(values > 0))}/{int(np.sum(~np.isnan(values)))} raters improve",
        )
        ax.axhline(np.nanmean(values), color=series_color(index), ls="--", lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [(labels or {}).get(r, r) for r in raters], rotation=90, fontsize=7)
    ax.set_xlabel("rater")
    ax.set_ylabel(f"{metric}: adapted - baseline")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    _legend_below(fig, *ax.get_legend_handles_labels(), ncol=2)
    return _save(fig, path)


def plot_gain_intervals(path: str | Path, summaries: Sequence[Mapping], title: str) -> Path:
    """One row per comparison: its mean per-rater gain (dot) with the 95% interval (bar), for all raters
    and each rater kind (offset markers). summaries: {"condition", "mean", "ci", "n", "by_kind": {kind:
    {"mean", "ci", "n"}}} as `dsaml.reporting.paired_gains` returns them."""
    kinds = sorted({k for s in summaries for k in s.get("by_kind", {})})
    groups = ["all raters", *kinds]
    fig, ax = plt.subplots(figsize=(9, 1.3 + 0.55 * len(summaries) * max(1, len(groups)) ** 0.5))
    y = np.arange(len(summaries))[::-1].astype(float)
    step = 0.7 / max(1, len(groups))
    for index, group in enumerate(groups):
        entries = [s if group == "all raters" else s.get("by_kind", {}).get(group) for s in summaries]
        offset = (index - (len(groups) - 1) / 2) * step
        for row, entry in zip(y, entries, strict=True):
            if entry is None:
                continue
            ci = 0.0 if np.isnan(entry["ci"]) else entry["ci"]
            ax.errorbar(
                entry["mean"], row - offset, xerr=ci, fmt="o", color=series_color(index),
                ms=6 if index == 0 else 4, capsize=3, label=f"{group}" if row == y[0] else None,
            )  # fmt: skip
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{s['condition']} (n={s['n']})" for s in summaries], fontsize=8)
    ax.set_xlabel("gain in the average score over the baseline (mean, 95% interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    _legend_below(fig, *ax.get_legend_handles_labels(), ncol=min(4, len(groups)))
    return _save(fig, path)


def plot_gain_growth(
    path: str | Path,
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float, float]]]],
    xlabel: str,
    title: str,
) -> Path:
    """Mean gain with its 95% interval (shaded) against a setting, one panel per protocol: panels = {panel:
    {label: [(x, mean, half-width of the interval)]}}, e.g. the gain over the DMER model against the number
    of meta-training steps. A label keeps its colour across panels."""
    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    colors = {label: series_color(i) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        for label, points in series.items():
            x, mean, half = (np.array(v, dtype=float) for v in zip(*sorted(points), strict=True))
            half = np.nan_to_num(half)
            ax.plot(x, mean, "o-", color=colors[label], label=label)
            ax.fill_between(x, mean - half, mean + half, color=colors[label], alpha=0.12)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gain in the average score")
    handles = {}  # one legend entry per label, from whichever panel has it
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.suptitle(title, fontsize=10)
    _legend_below(fig, list(handles.values()), list(handles), ncol=4)
    return _save(fig, path)
