"""One seed says little: the seed lists the toy commands take, and a number's spread over seeds.

    python -m dpo_np closed-form --seeds 0-9
    python -m dpo_np gridworld --seeds 0-4
    python -m dpo_np rlhf --seeds 0-2

``parse_seeds`` reads a ``--seeds`` value (a range ``0-4`` or a list ``0,2,5``, as ``demo --seeds``
takes it); ``spread`` sums up one number over the seeds (mean, sample standard deviation, standard
error of the mean, min and max); ``over_seeds`` runs an experiment once per seed and keeps a row of
numbers from each; ``seed_table`` prints those rows with the spread under them.
"""

import math
import re

import numpy as np


def parse_seeds(text, option="--seeds"):
    """The seeds of ``text``: ``"0-4"`` → [0, 1, 2, 3, 4], ``"0,2,5"`` → [0, 2, 5].

    A range runs upwards (``"3-1"`` is refused, saying so); seeds are non-negative and named
    once each; an empty value is refused. Errors are ``ValueError`` naming ``option``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{option}: is empty; give a range like 0-4 or a list like 0,1,2")
    text = text.strip()
    m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
    if m:
        low, high = int(m[1]), int(m[2])
        if high < low:
            raise ValueError(f"{option}: the range {text} runs backwards; write {high}-{low}")
        return list(range(low, high + 1))
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"{option}: must be a range like 0-4 or a list like 0,1,2, got {text!r}") from None
    if min(seeds) < 0:
        raise ValueError(f"{option}: must name non-negative seeds, got {text!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{option}: names seed {repeated[0]} more than once, got {text!r}")
    return seeds


def spread(values):
    """n, mean, sd (sample, ddof = 1; 0 for one value), se = sd/√n, min and max of finite numbers."""
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"values must be one or more finite numbers, got {values!r}")
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"n": int(v.size), "mean": float(v.mean()), "sd": sd, "se": sd / math.sqrt(v.size),
            "min": float(v.min()), "max": float(v.max())}


def describe(s, fmt=".3g"):
    """A spread in words: ``mean ± s.e. (min–max, n seeds)``."""
    return (f"{s['mean']:{fmt}} ± {s['se']:{fmt}} s.e. ({s['min']:{fmt}}–{s['max']:{fmt}}, "
            f"{s['n']} seed{'s' if s['n'] != 1 else ''})")


def over_seeds(seeds, run, row, print_fn=None):
    """``run(seed)`` for each seed and ``row(result)`` of each: (rows with their "seed", results).

    ``row`` returns a flat dict of numbers; ``print_fn`` (if given) hears one line per seed.
    """
    rows, results = [], []
    for i, seed in enumerate(seeds):
        if print_fn is not None:
            print_fn(f"seed {seed} ({i + 1} of {len(seeds)})")
        result = run(seed)
        rows.append({"seed": seed, **row(result)})
        results.append(result)
    return rows, results


def spreads(rows, keys):
    """{key: spread of that column over the rows} for each of ``keys``; a seed whose number is undefined
    (None: a ratio of two zero variances, say) is left out of its column, and a column with no number
    at all has spread None."""
    out = {}
    for key in keys:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = spread(values) if values else None
    return out


def seed_table(rows, columns):
    """A Markdown table: one row per seed, then mean ± s.d., the standard error, and min – max.

    ``columns``: (key, title, format) triples, e.g. ``("final_kl", "KL(π*‖π_θ)", ".3e")``.
    """
    head = "| seed | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 1)]
    cell = lambda x, f: "n/a" if x is None else f"{x:{f}}"          # noqa: E731  (an undefined number)
    lines += ["| " + str(r["seed"]) + " | " + " | ".join(cell(r[k], f) for k, _, f in columns) + " |" for r in rows]
    s = spreads(rows, [k for k, _, _ in columns])
    row = lambda label, text: lines.append(f"| {label} | " + " | ".join(   # noqa: E731
        "n/a" if s[k] is None else text(s[k], f) for k, _, f in columns) + " |")
    row("mean ± s.d.", lambda c, f: f"{c['mean']:{f}} ± {c['sd']:.2g}")
    row("s.e.", lambda c, f: f"{c['se']:.2g}")
    row("min – max", lambda c, f: f"{c['min']:{f}} – {c['max']:{f}}")
    return "\n".join(lines)
