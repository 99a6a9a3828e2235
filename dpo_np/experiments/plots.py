"""Figures of training curves, from the rows of a ``metrics.jsonl`` log (``training.read_metrics``).

Every trainer logs one JSON object per logging step (``loss``, ``rewards/margins``, …) and one
per evaluation (the same names under ``eval/``). A panel here is a title and a few metric names;
each name is drawn as a solid line over the training rows and, where the log has it, a dashed
line with markers over the ``eval/`` rows — train and evaluation side by side:

    from dpo_np.training import read_metrics
    plot_dpo_metrics(read_metrics("runs/demo/dpo"), "figures/dpo_metrics.png")

matplotlib is imported inside the functions (``import dpo_np`` never loads it), the figure is
drawn on an Agg canvas (no display needed), and the file is written under a temporary name and
moved into place, so it is never half-written.
"""

import math
import os

from dpo_np.files import atomic_write

#: the standard DPO metrics (trainers.py), one panel each: (title, metric names, y-axis label with units)
DPO_PANELS = (
    ("loss", ("loss",), "DPO loss (nats per pair)"),
    ("rewards/accuracies", ("rewards/accuracies",), "fraction of pairs"),
    ("rewards/margins", ("rewards/margins",), "r̂(y_w) − r̂(y_l) (β·nats)"),
    ("rewards/chosen vs rewards/rejected", ("rewards/chosen", "rewards/rejected"), "implicit reward r̂ (β·nats)"),
    ("logps/chosen vs logps/rejected", ("logps/chosen", "logps/rejected"), "log π_θ(y|x) (nats per response)"),
    ("grad_norm (before clipping)", ("grad_norm",), "‖∇L‖₂"),
)
REWARD_MODEL_PANELS = (
    ("Bradley–Terry loss", ("loss",), "loss (nats per pair)"),
    ("pair accuracy r_φ(y_w) > r_φ(y_l)", ("accuracy",), "fraction of pairs"),
    ("margin r_φ(y_w) − r_φ(y_l)", ("margin",), "reward units (logits of P(y_w ≻ y_l))"),
)
SFT_PANELS = (
    ("NLL per response token", ("loss",), "nats per token"),
    ("learning rate", ("lr",), "learning rate"),
)
SEPARATE_AXES_RATIO = 100.0       # curves whose sizes differ this much get an axis each


def _series(rows, key):
    """(steps, values) of the rows holding a finite ``key``."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
           and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def new_figure(nrows=1, ncols=1, panel_size=(4.2, 3.2)):
    """A Figure on an Agg canvas (no display needed) and its axes (a flat list), in the package's
    one style. matplotlib is imported here, never at package import."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise RuntimeError('plotting needs matplotlib: pip install "dpo-np[plot]"') from err
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, list(axes)


def plot_metric_curves(rows, panels, path, title=None, ncols=3):
    """``metric_figure`` written to ``path`` (atomically); returns ``path``."""
    return save_figure(metric_figure(rows, panels, title, ncols), path)


def metric_figure(rows, panels, title=None, ncols=3):
    """One panel per ``(title, names, y label)`` of ``panels``; each name's training curve (solid)
    and its ``eval/`` curve (dashed, markers) over the step; a curve 100× smaller than the largest
    of its panel gets the right-hand axis. Returns the Figure.

    ``rows``: dicts with a ``step`` (the rows of ``metrics.jsonl``). A name the log lacks draws
    nothing; a panel with nothing in it says so. A ValueError names an empty ``rows`` or ``panels``.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: no metrics to plot")
    if not panels:
        raise ValueError("panels is empty: nothing to plot")
    if any("step" not in r for r in rows):
        raise ValueError("rows: every row needs a 'step' (the rows of a metrics.jsonl)")
    ncols = min(ncols, len(panels))
    fig, axes = new_figure(-(-len(panels) // ncols), ncols)
    for ax, (panel_title, names, ylabel) in zip(axes, panels):
        curves = []                                     # (label, x, y, color, dashed)
        for k, name in enumerate(names):
            for key, suffix, dashed in ((name, "train", False), ("eval/" + name, "eval set", True)):
                x, y = _series(rows, key)
                if x:
                    curves.append((f"{name} ({suffix})", x, y, f"C{k}", dashed))
        if not curves:
            ax.text(0.5, 0.5, "not in this log", ha="center", va="center", transform=ax.transAxes)
        sizes = [max(abs(v) for v in y) or 1e-300 for _, _, y, _, _ in curves]
        big = max(sizes, default=1.0)
        twin = None
        for (label, x, y, color, dashed), size in zip(curves, sizes):
            target = ax
            if big / size >= SEPARATE_AXES_RATIO:       # too small to read beside the others: its own axis
                twin = twin or ax.twinx()
                target = twin
                label += " (right axis)"
            target.plot(x, y, color=color, linewidth=1.2, linestyle="--" if dashed else "-",
                        marker="o" if dashed else None, markersize=3, label=label)
        if curves:
            handles = [h for a in (ax, twin) if a is not None for h in a.get_legend_handles_labels()[0]]
            ax.legend(handles=handles, fontsize="x-small")
        if twin is not None:
            twin.set_ylabel(ylabel + ", smaller curves", fontsize="small")
        ax.set_title(panel_title, fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel, fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_dpo_metrics(rows, path="figures/dpo_metrics.png", title="DPO"):
    """The standard DPO curves (``DPO_PANELS``) of a DPO run's log; returns ``path``."""
    return plot_metric_curves(rows, DPO_PANELS, path, title=title)


def plot_reward_model_metrics(rows, path="figures/reward_model.png", title="reward model r_φ (Bradley–Terry)"):
    """Loss, pair accuracy and margin of a reward-model run's log; returns ``path``."""
    return plot_metric_curves(rows, REWARD_MODEL_PANELS, path, title=title)


def plot_sft_metrics(rows, path="figures/sft_loss.png", title="supervised fine-tuning (π_ref)"):
    """The SFT loss (train and evaluation set) and the learning rate of an SFT run's log; returns ``path``."""
    return plot_metric_curves(rows, SFT_PANELS, path, title=title)


def save_figure(fig, path, dpi=110):
    """Write ``fig`` to ``path`` (format from the extension, png by default) atomically; returns ``path``."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi)
    return os.fspath(path)


def plot_diagnosis(rows, report, path, title=None):
    """``diagnosis_figure`` written to ``path`` (atomically); returns ``path``."""
    return save_figure(diagnosis_figure(rows, report, title), path)


def diagnosis_figure(rows, report, title=None):
    """The standard DPO curves of a logged run (``diagnose.read_log``'s rows) with each finding of
    ``diagnose.diagnose``'s report marked: a red line at its step, labelled with its code, in the panels
    that draw its metric. Returns the Figure."""
    fig = metric_figure(rows, DPO_PANELS, title or f"diagnose: {report['source']['file'] or 'rows'}")
    for ax, (_, names, _) in zip(fig.axes, DPO_PANELS):
        for f in report["findings"]:
            if f["metric"].removeprefix("eval/") in names:
                ax.axvline(f["step"], color="red", alpha=0.5, linewidth=1)
                ax.annotate(f["code"], (f["step"], 1), xycoords=("data", "axes fraction"), rotation=90,
                            va="top", ha="right", fontsize="x-small", color="red")
    return fig
