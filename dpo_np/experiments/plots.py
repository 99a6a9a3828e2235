"""Figures of training curves, from the rows of a ``metrics.jsonl`` log (``training.read_metrics``).

Every trainer logs one JSON object per logging step (``loss``, ``rewards/margins``, …) and one
per evaluation (the same names under ``eval/``). A panel here is a title and a few metric names;
each name is drawn as a solid line over the training rows and, where the log has it, a dashed
line with markers over the ``eval/`` rows — train and held-out side by side:

    from dpo_np.training import read_metrics
    plot_dpo_metrics(read_metrics("runs/demo/dpo"), "figures/dpo_metrics.png")

matplotlib is imported inside the functions (``import dpo_np`` never loads it), the figure is
drawn on an Agg canvas (no display needed), and the file is written under a temporary name and
moved into place, so it is never half-written.
"""

import math
import os

from dpo_np.files import atomic_write

#: the standard DPO metrics (trainers.py), one panel each: (title, metric names)
DPO_PANELS = (
    ("loss", ("loss",)),
    ("rewards/accuracies", ("rewards/accuracies",)),
    ("rewards/margins", ("rewards/margins",)),
    ("rewards/chosen vs rewards/rejected", ("rewards/chosen", "rewards/rejected")),
    ("logps/chosen vs logps/rejected", ("logps/chosen", "logps/rejected")),
    ("grad_norm (before clipping)", ("grad_norm",)),
)
REWARD_MODEL_PANELS = (
    ("Bradley–Terry loss", ("loss",)),
    ("pair accuracy r_φ(y_w) > r_φ(y_l)", ("accuracy",)),
    ("margin r_φ(y_w) − r_φ(y_l)", ("margin",)),
)
SFT_PANELS = (
    ("NLL per response token", ("loss",)),
    ("learning rate", ("lr",)),
)


def _series(rows, key):
    """(steps, values) of the rows holding a finite ``key``."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
           and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_metric_curves(rows, panels, path, title=None, ncols=3):
    """One panel per ``(title, names)`` of ``panels``; each name's training curve (solid) and its
    ``eval/`` curve (dashed, markers) over the step. Returns ``path``.

    ``rows``: dicts with a ``step`` (the rows of ``metrics.jsonl``). A name the log lacks draws
    nothing; a panel with nothing in it says so. A ValueError names an empty ``rows`` or ``panels``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise RuntimeError('plotting needs matplotlib: pip install "dpo-np[plot]"') from err
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: no metrics to plot")
    if not panels:
        raise ValueError("panels is empty: nothing to plot")
    if any("step" not in r for r in rows):
        raise ValueError("rows: every row needs a 'step' (the rows of a metrics.jsonl)")
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (panel_title, names) in zip(axes, panels):
        drawn = False
        for k, name in enumerate(names):
            color = f"C{k}"
            x, y = _series(rows, name)
            if x:
                ax.plot(x, y, color=color, linewidth=1.2, label=f"{name} (train)")
                drawn = True
            x, y = _series(rows, "eval/" + name)
            if x:
                ax.plot(x, y, color=color, linestyle="--", marker="o", markersize=3, label=f"{name} (held-out)")
                drawn = True
        if drawn:
            ax.legend(fontsize="x-small")
        else:
            ax.text(0.5, 0.5, "not in this log", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(panel_title, fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_dpo_metrics(rows, path="figures/dpo_metrics.png", title="DPO"):
    """The standard DPO curves (``DPO_PANELS``) of a DPO run's log; returns ``path``."""
    return plot_metric_curves(rows, DPO_PANELS, path, title=title)


def plot_reward_model_metrics(rows, path="figures/reward_model.png", title="reward model r_φ (Bradley–Terry)"):
    """Loss, pair accuracy and margin of a reward-model run's log; returns ``path``."""
    return plot_metric_curves(rows, REWARD_MODEL_PANELS, path, title=title)


def plot_sft_metrics(rows, path="figures/sft_loss.png", title="supervised fine-tuning (π_ref)"):
    """The SFT loss (train and held-out) and the learning rate of an SFT run's log; returns ``path``."""
    return plot_metric_curves(rows, SFT_PANELS, path, title=title)


def save_figure(fig, path, dpi=110):
    """Write ``fig`` to ``path`` (format from the extension, png by default) atomically; returns ``path``."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi)
    return os.fspath(path)
