"""The verdict as a forest plot: one row per comparison per architecture, one panel per metric.

Each row shows the mean paired difference (EAT minus the rival) as a dot, its 95% interval over training seeds as
a thick bar and its evaluation-noise interval as a thin bar just below, against a vertical line at zero. The
colour is the reading (ahead / behind / indistinguishable), so the figure says what the table says.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from eatlib.plots import _new_figure, _themed, save_figure

READING_COLORS = {"ahead": "#1b9e77", "behind": "#d95f02", "indistinguishable": "0.45"}
_EVAL_OFFSET = 0.22   # the evaluation bar sits this far below the seed bar of its row


@_themed
def forest_plot(verdict: dict, out_path: str | Path | None = None, *,
                metrics: Sequence[str] = ("ami", "ari"), difference: str = "EAT − rival") -> Figure:
    """Draw ``verdict`` (as returned by :func:`eatlib.verdict.verdict`) and, given ``out_path``, save it as a PNG.
    ``difference`` names what each row's difference is, in the panel titles."""
    rows = [(f"{arch} · {entry.get('label', name)}", entry)
            for arch, comparisons in verdict.items() for name, entry in comparisons.items()]
    if not rows:
        raise ValueError("the verdict has no comparisons to plot")
    figure = _new_figure(3.3 * len(metrics) + 3.4, 0.42 * len(rows) + 1.6)
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for y, (_, entry) in enumerate(rows):
            e = entry.get(metric, entry if entry.get("metric") == metric else None)
            if e is None:
                continue
            color = READING_COLORS[e["reading"]]
            if e.get("ci95_over", "seeds") == "seeds":
                ax.hlines(y, *e["ci95"], color=color, linewidth=3.2)
            ax.hlines(y + _EVAL_OFFSET, *e["eval_ci95"], color=color, linewidth=1.5)
            ax.plot(e["diff_mean"], y, marker="o", markersize=6, color=color, zorder=3)
        ax.axvline(0, color="black", linewidth=0.9)
        ax.set_title(f"{metric.upper()} difference ({difference})")
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(range(len(rows)), [label for label, _ in rows])
    axes[0].invert_yaxis()
    handles = [Line2D([], [], color="0.3", linewidth=3.2, label="95% CI over seeds"),
               Line2D([], [], color="0.3", linewidth=1.5, label="95% CI, evaluation noise"),
               *[Line2D([], [], color=c, marker="o", linestyle="", label=r) for r, c in READING_COLORS.items()]]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    if out_path is not None:
        save_figure(figure, out_path)
    return figure


__all__ = ["READING_COLORS", "forest_plot"]
