"""Read a DPO run's logged metrics — ours or TRL's — and say what is happening and why.

    report = diagnose("runs/dpo")                 # a run directory, a trainer_state.json, a .jsonl or .csv
    print(format_report(report))                  # the run at a glance, its curves, then the findings

The logged names are TRL's, and ours are the same (``trainers.py``): ``loss``, ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``,
``logits/*``, ``grad_norm`` and the learning rate, where a reward is the implicit
r̂(x, y) = β (log π_θ(y|x) − log π_ref(y|x)) (the DPO paper, eq. 5). Held-out rows carry the same names
under ``eval/`` (ours) or ``eval_`` (a Hugging Face Trainer's ``log_history``); both read as ``eval/``,
and ``learning_rate`` as ``lr``. Every other column is listed in the report, never fatal.

Each finding is one small function over the logged curves. Its thresholds are the constants below,
and a finding carries its evidence (which metric, which steps, which values), what it usually means,
what to try and the notebook section that explains it:

``no_learning``: every logged reward stays within ``NO_LEARNING_REWARD_TOLERANCE`` of 0 (or, in a log
    without rewards, the loss within ``NO_LEARNING_LOSS_TOLERANCE`` nats of log 2) over more than one
    step. A reward of 0 means π_θ = π_ref on that response, so the policy never left the reference;
    1e-4 is far below what a working run's rewards reach (tenths and more), and above float32 round-off.
    If the held-out ``eval/logps/chosen`` moved by more than ``POLICY_MOVED_NATS`` meanwhile, the policy
    did move, and the reference moved with it.
``reference_mismatch``: at the first logged row the rewards are not 0. A row of step 1 (or an
    evaluation at step 0) sees π_θ before any update, so its rewards must be 0 up to
    ``START_REWARD_TOLERANCE`` (1e-3 reward units: round-off of two float32 forwards is far smaller, a
    different checkpoint far larger). A first row at step k averages k steps (TRL logs every 10), in which
    the rewards drift from 0 at most as fast as they drift afterwards: they may reach
    ``START_DRIFT_FACTOR`` × (k − 1) × the fastest drift per step seen over the next rows, no more.
``chosen_logps_falling``: ``logps/chosen`` falls by at least ``CHOSEN_LOGPS_DROP`` nats (y_w at least
    e ≈ 2.7 times less likely) while ``rewards/margins`` grows and ``rewards/chosen`` ends below 0
    (π_θ(y_w) < π_ref(y_w)). Read on the held-out rows when there are two or more (a fixed set), else on
    the means of the first and last ``trend_window`` training rows (each batch holds other pairs).
``over_optimization``: the held-out loss ends at least ``OVER_OPTIMIZATION_RISE`` nats above its
    lowest value while the training margin kept growing after that evaluation and the training accuracy
    averaged at least ``ACCURACY_SATURATED`` since. The held-out set is fixed, so its loss has no batch
    noise: 0.05 nats per pair, about a fourteenth of log 2, is a real worsening, and 0.9 means the
    training pairs are ranked. Without a held-out loss, a logged KL estimate
    (``kl``, TRL's ``objective/kl``) that grows ``OVER_OPTIMIZATION_KL_RATIO`` times after the accuracy
    saturated, with a growing margin, says the same.
``loss_spike``: a training loss at least ``LOSS_SPIKE_MIN_JUMP`` nats and ``LOSS_SPIKE_MADS`` robust
    standard deviations (1.4826 × the median absolute deviation) above the median of the
    ``LOSS_SPIKE_WINDOW`` rows before it (with ``LOSS_SPIKE_MIN_HISTORY`` rows at least). The median and
    MAD ignore one bad row, and 10 of their standard deviations is far outside any window's own spread;
    the floor in nats keeps the tiny noise of a converged run (losses near 0) from counting.
``non_finite``: a NaN or ±inf in any metric, from the first step it appears.
``still_improving``: the held-out loss fell at each of the last ``STILL_IMPROVING_EVALS`` evaluations,
    the last time by at least ``STILL_IMPROVING_DROP`` of its value (1%: a smaller last fall is a curve
    that has flattened): the run ended before its best point.
``too_few_steps``: fewer than ``MIN_TREND_ROWS`` training rows; the checks that compare the start of
    the run with its end are not run (so few rows, each one batch, say more about their batches than
    about a trend).

A check whose metrics the log lacks is not run, and the report says which and why.
"""

import csv
import json
import math
import os
import re
import statistics

from dpo_np.files import DuplicateKeyError, json_error, loads_json

#: the metrics a DPO trainer logs per training row (TRL's names; ours are the same)
TRAIN_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "grad_norm", "lr", "kl")
#: the same quantities on the held-out pairs
EVAL_METRICS = tuple("eval/" + name for name in TRAIN_METRICS if name not in ("grad_norm", "lr"))
KNOWN_METRICS = TRAIN_METRICS + EVAL_METRICS
#: the names every DPO log should hold; the report lists those it lacks
STANDARD_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                    "logps/chosen", "logps/rejected", "eval/loss")
ALIASES = {"learning_rate": "lr", "objective/kl": "kl", "global_step": "step"}
#: what a Hugging Face Trainer or TRL logs beside the metrics (timings, counters): read, not used
BOOKKEEPING = ("epoch", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
               "train_loss", "runtime", "samples_per_second", "steps_per_second", "num_tokens", "entropy",
               "mean_token_accuracy", "num_input_tokens_seen")
FINDING_CODES = ("non_finite", "too_few_steps", "no_learning", "reference_mismatch", "chosen_logps_falling",
                 "over_optimization", "loss_spike", "still_improving")

NO_LEARNING_REWARD_TOLERANCE = 1e-4     # reward units (β·nats)
NO_LEARNING_LOSS_TOLERANCE = 1e-3       # nats, from log 2
POLICY_MOVED_NATS = 1e-3                # nats of eval/logps/chosen
START_REWARD_TOLERANCE = 1e-3           # reward units
START_DRIFT_FACTOR = 3.0
CHOSEN_LOGPS_DROP = 1.0                 # nats per response
OVER_OPTIMIZATION_RISE = 0.05           # nats per pair
ACCURACY_SATURATED = 0.9                # fraction of pairs
OVER_OPTIMIZATION_KL_RATIO = 2.0
LOSS_SPIKE_WINDOW = 10                  # rows
LOSS_SPIKE_MIN_HISTORY = 5              # rows
LOSS_SPIKE_MADS = 10.0
LOSS_SPIKE_MIN_JUMP = 0.5               # nats
STILL_IMPROVING_EVALS = 2
STILL_IMPROVING_DROP = 0.01             # fraction of the last held-out loss
MIN_TREND_ROWS = 5                      # training rows
TREND_WINDOW = 10                       # at most this many rows averaged at each end of a training curve
SPARK_WIDTH = 40                        # characters of a text curve
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
MAD_TO_SD = 1.4826                      # σ = 1.4826 × MAD for a normal distribution

NB05, NB06, NB07, NB08 = ("notebooks/05_dpo.ipynb", "notebooks/06_log_probabilities.ipynb",
                          "notebooks/07_dpo_end_to_end.ipynb", "notebooks/08_dpo_vs_rlhf.ipynb")
NB09 = "notebooks/09_dpo_beyond_the_table.ipynb"

#: per code: what it usually means, what to try, where it is explained (notebook, section number, title)
EXPLANATIONS = {
    "no_learning": dict(
        meaning="π_θ never left π_ref: every implicit reward β·log(π_θ/π_ref) is 0, so every pair's loss is "
                "−log σ(0) = log 2. Usual causes: a learning rate of 0, parameters frozen or not given to the "
                "optimizer, every response label masked (-100) after truncation, or a reference that shares the "
                "policy's weights (then the log-probabilities move and the rewards still do not).",
        to_try="Check the logged learning rate, that the optimizer holds the trainable parameters, that responses "
               "keep tokens after truncation (max_length, max_prompt_length), and that the reference is a "
               "separate copy of the weights.",
        see=((NB07, 3, "DPO, exactly as in the notes' snippet"), (NB05, 4, "The DPO loss"))),
    "reference_mismatch": dict(
        meaning="Before the first update π_θ = π_ref, so every reward is 0 there. Rewards away from 0 at the "
                "start mean the reference is not the starting policy: another checkpoint, dropout on in one "
                "forward and off in the other, another precision, log-probabilities summed in one and averaged "
                "in the other, precomputed reference log-probs of other data; or a reference-free or moving-"
                "reference (TR-DPO) run, where it is expected.",
        to_try="Start π_θ as a copy of π_ref's weights; compute both log-probabilities the same way (eval mode, "
               "the same dtype, the same sum over response tokens, the same tokenization).",
        see=((NB07, 3, "DPO, exactly as in the notes' snippet"), (NB06, 3, "Step by step"))),
    "chosen_logps_falling": dict(
        meaning="The loss sees only the margin, so it is satisfied when log π(y_l) falls faster than log π(y_w): "
                "y_w's likelihood can fall too (likelihood displacement), and the probability goes to responses no "
                "pair mentions. A wider margin then does not mean a more likely y_w.",
        to_try="A smaller learning rate or fewer steps, a larger β, or an SFT term on y_w (RPO: "
               "loss_type=[\"sigmoid\", \"sft\"]); watch logps/chosen and the greedy answers, not only the margin.",
        see=((NB07, 6, "Both likelihoods fall while the margin grows"),
             (NB05, 7, "When comparisons do not connect, $\\pi^*$ is not identifiable"), (NB09, None, None))),
    "over_optimization": dict(
        meaning="The training pairs are ranked (accuracy saturated) and their margin keeps growing, yet the "
                "held-out pairs get worse: the policy keeps moving away from π_ref to widen margins that do not "
                "carry over. When a pair's preference is always the same way, the DPO loss has no finite "
                "minimum and the margin can grow for ever (the IPO critique).",
        to_try="Keep the checkpoint with the best held-out loss (load_best_model_at_end, early stopping); a larger "
               "β; fewer steps or a lower learning rate; IPO (loss_type=\"ipo\") or label smoothing.",
        see=((NB08, 4, "Deterministic preferences: the IPO critique"), (NB08, 2, "The reward–KL frontier"),
             (NB09, None, None))),
    "loss_spike": dict(
        meaning="One logged loss far above the losses just before it: a step went wrong. A learning rate too "
                "high for that point, a batch the policy ranks confidently the wrong way (the gradient's weight "
                "σ(r̂_l − r̂_w) is near 1 there, so that batch pushes hardest), mislabelled pairs, or the start "
                "of a numerical problem.",
        to_try="Look at that step's batch; lower the learning rate or add warmup; keep gradient clipping on "
               "(max_grad_norm) and read grad_norm around that step.",
        see=((NB05, 5, "Its gradient: push $y_w$ up, $y_l$ down, harder where the model is wrong"),)),
    "non_finite": dict(
        meaning="A metric became NaN or infinite; from that step the numbers mean nothing. Usual causes: the "
                "loss diverged (learning rate too high), an overflow in low precision, or 0/0 from a response "
                "with no tokens left after truncation under a per-token mean (IPO's log-probabilities).",
        to_try="Restart from a checkpoint before that step with a lower learning rate or clipping; train in "
               "float32 or bf16 rather than fp16; drop pairs whose responses are empty after truncation.",
        see=((NB06, 4, "Why the sum, and not the mean"),)),
    "still_improving": dict(
        meaning="The held-out loss was still falling at the last evaluation: the run stopped before its best "
                "point on held-out pairs.",
        to_try="Train longer (more steps or epochs, or a slower learning-rate decay) and keep the checkpoint with "
               "the best held-out loss.",
        see=((NB07, 4, "The standard metric curves"),)),
    "too_few_steps": dict(
        meaning="The log holds too few training rows to read a trend: the checks that compare the start of the "
                "run with its end were not run.",
        to_try="Log more often (logging_steps) or train longer.",
        see=((NB07, 4, "The standard metric curves"),)),
}


# ---- reading a log ------------------------------------------------------------------------

def canonical_name(name):
    """A logged column's name in our spelling: ``eval_x`` → ``eval/x``, ``train/x`` → ``x``, aliases applied."""
    name = name.strip()
    for prefix, out in (("eval_", "eval/"), ("eval/", "eval/"), ("train/", "")):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return out + ALIASES.get(rest, rest)
    return ALIASES.get(name, name)


def read_log(path):
    """The rows of a logged run, under our names: ``{"rows", "source", "columns", "notes"}``.

    ``path``: a run directory of ours (its ``metrics.jsonl``), a directory holding ``trainer_state.json``
    (or ``checkpoint-<step>/trainer_state.json``: the newest), a ``trainer_state.json`` (its
    ``log_history``), a ``.jsonl`` of row objects or a ``.csv`` with a header. A file that cannot be read
    is a ValueError naming the file and line; a file with none of the known names says what it expected.
    """
    path = os.fspath(path)
    file, kind = _locate(path)
    if file.endswith(".csv"):
        raw = _read_csv(file)
    elif file.endswith((".jsonl", ".ndjson")):
        raw = _read_jsonl(file)
    else:
        raw = _read_json(file)
    log = _normalise(raw, file)
    log["source"] = {"path": path, "file": file, "kind": kind}
    return log


def _locate(path):
    """The file to read under ``path`` and what kind of log it is."""
    if os.path.isdir(path):
        for name, kind in (("metrics.jsonl", "dpo_np run"), ("trainer_state.json", "Trainer state")):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name), kind
        steps = [(int(m.group(1)), e) for e in os.listdir(path) if (m := re.fullmatch(r"checkpoint-(\d+)", e))
                 and os.path.isfile(os.path.join(path, e, "trainer_state.json"))]
        if steps:
            return os.path.join(path, max(steps)[1], "trainer_state.json"), "Trainer state"
        raise FileNotFoundError(f"{path}: holds no metrics.jsonl, trainer_state.json or "
                                f"checkpoint-<step>/trainer_state.json to diagnose")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    kinds = {".json": "Trainer state", ".jsonl": "JSONL rows", ".ndjson": "JSONL rows", ".csv": "CSV rows"}
    ext = os.path.splitext(path)[1].lower()
    if ext not in kinds:
        raise ValueError(f"{path}: expected a run directory, a trainer_state.json, a .jsonl or a .csv file")
    return path, kinds[ext]


def _read_jsonl(file):
    """[(where, row dict)] of a JSON-lines file; NaN and Infinity are read as Python writes them."""
    rows = []
    with open(file, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = loads_json(line)
            except (json.JSONDecodeError, DuplicateKeyError) as err:
                raise ValueError(f"{file} line {n}: not JSON ({json_error(err).split(' at line')[0]})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file} line {n}: expected an object of metric names, got {type(row).__name__}")
            rows.append((f"{file} line {n}", row))
    return rows


def _read_json(file):
    """[(where, row dict)] of a Trainer state (``log_history``) or a JSON list of rows."""
    with open(file, encoding="utf-8-sig") as f:
        try:
            data = loads_json(f.read())
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} line {err.lineno}: not JSON ({err.msg})") from None
        except DuplicateKeyError as err:
            raise ValueError(f"{file}: not JSON ({err})") from None
    key = "log_history"
    if isinstance(data, list):
        key, history = "", data
    elif isinstance(data, dict) and isinstance(data.get(key), list):
        history = data[key]
    else:
        raise ValueError(f"{file}: expected a Trainer state (an object with a 'log_history' list) or a list of rows")
    rows = []
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            raise ValueError(f"{file}: {key}[{i}] is a {type(row).__name__}, not an object of metric names")
        rows.append((f"{file}: {key}[{i}]", row))
    return rows


def _read_csv(file):
    """[(where, row dict)] of a CSV file whose first line names the columns; empty cells are missing."""
    with open(file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{file} line 1: expected a header of column names")
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise ValueError(f"{file} line 1: the column {twice[0]!r} is named twice, so which one is meant is unclear")
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise ValueError(f"{file} line {reader.line_num}: {len(cells)} cells, the header has {len(header)}")
            rows.append((f"{file} line {reader.line_num}", {h: c for h, c in zip(header, cells) if c.strip()}))
    return rows


def _number(value, where, name):
    """A logged value as a float (None when missing); a string must spell a number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}: {name!r} is {value!r}, not a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where}: {name!r} is {value!r}, not a number") from None


def _normalise(raw, file):
    """Rows under our names, sorted by step, and how each column was classified."""
    names = list(dict.fromkeys(k for _, row in raw for k in row))
    canonical = {name: canonical_name(str(name)) for name in names}
    for where, row in raw:          # two spellings of one metric in a row (eval_loss and eval/loss): which one?
        seen = {}
        for name in row:
            if canonical[name] in KNOWN_METRICS and seen.setdefault(canonical[name], name) != name:
                raise ValueError(f"{where}: {seen[canonical[name]]!r} and {name!r} both name "
                                 f"{canonical[name]!r}, so which one is meant is unclear")
    read = [n for n in names if canonical[n] in KNOWN_METRICS]
    if not read:
        raise ValueError(f"{file}: none of the known metric names in its columns {names[:12]}; expected some of "
                         f"{', '.join(TRAIN_METRICS)} (held-out ones prefixed eval/ or eval_)")
    has_step = any(canonical[n] == "step" for n in names)
    notes, rows = [], []
    for i, (where, row) in enumerate(raw):
        out = {canonical[n]: v for n in read if (v := _number(row.get(n), where, n)) is not None}
        if not out:
            continue
        step = next((row[n] for n in names if canonical[n] == "step" and row.get(n) is not None), None)
        if has_step and step is None:
            raise ValueError(f"{where}: no step, though other rows have one")
        step = _number(step, where, "step") if has_step else i + 1
        if not math.isfinite(step):
            raise ValueError(f"{where}: step is {step}")
        out["step"] = int(step) if step == int(step) else step
        rows.append(out)
    if not has_step:
        notes.append("no step column: the row number is used as the step")
    if any(a["step"] > b["step"] for a, b in zip(rows, rows[1:])):
        notes.append("rows out of step order (a resumed or concatenated log?): read in step order")
        rows.sort(key=lambda r: r["step"])
    read_as = sorted({canonical[n] for n in read}, key=KNOWN_METRICS.index)
    rest = [n for n in names if canonical[n] not in KNOWN_METRICS and canonical[n] != "step"]
    ignored = [n for n in rest if canonical[n].removeprefix("eval/") in BOOKKEEPING]
    return {"rows": rows, "notes": notes,
            "columns": {"read": read_as, "ignored": ignored, "unknown": [n for n in rest if n not in ignored],
                        "missing": [m for m in STANDARD_METRICS if m not in read_as]}}


def _from_rows(rows):
    """A log from a list of row dicts (a trainer's ``state["log_history"]``), read as a file would be."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
        raise TypeError("diagnose takes a path, a list of row dicts (log_history) or read_log's result")
    log = _normalise([(f"rows[{i}]", r) for i, r in enumerate(rows)], "rows")
    log["source"] = {"path": None, "file": None, "kind": "rows"}
    return log


# ---- the curves ---------------------------------------------------------------------------

def _curve(rows, name, finite=True):
    """(steps, values) of the rows holding ``name``; only the finite values unless ``finite=False``."""
    pts = [(r["step"], r[name]) for r in rows if name in r and (not finite or math.isfinite(r[name]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def trend_window(n):
    """Rows averaged at each end of a training curve of ``n`` rows: a fifth, 1 to ``TREND_WINDOW``."""
    return max(1, min(TREND_WINDOW, n // 5))


def _mean(values):
    return sum(values) / len(values)


def _finding(code, step, metric, message, **evidence):
    """One finding: its code, where, the evidence (metric, steps, values, …) and the explanation."""
    text = EXPLANATIONS[code]
    see = [f"{nb} §{n} \"{title}\"" if n else nb for nb, n, title in text["see"]]
    return {"code": code, "step": step, "metric": metric, "message": message,
            "evidence": {"metric": metric, **evidence}, "meaning": text["meaning"], "try": text["to_try"],
            "see": see}


class NotChecked(Exception):
    """A check the log cannot support (a metric missing, too few rows); the message says why."""


def _need(rows, *names, at_least=1):
    """The finite curves of ``names``, or NotChecked naming the first with fewer than ``at_least`` points."""
    curves = [_curve(rows, n) for n in names]
    for name, (steps, _) in zip(names, curves):
        if len(steps) < at_least:
            have = f"only {len(steps)} finite value{'s' * (len(steps) != 1)}" if steps else "not in the log"
            least = f"at least {at_least} values; " if at_least > 1 else ""
            raise NotChecked(f"needs {name} ({least}{have})")
    return curves


# ---- the checks ---------------------------------------------------------------------------

def check_non_finite(rows):
    """NaN or ±inf in any metric: one finding at the first step one appears, naming every metric hit."""
    first, count = {}, 0
    for r in rows:
        for name in KNOWN_METRICS:
            if name in r and not math.isfinite(r[name]):
                count += 1
                first.setdefault(name, (r["step"], repr(r[name])))
    if not first:
        return []
    metric = min(first, key=lambda m: (first[m][0], KNOWN_METRICS.index(m)))
    step, value = first[metric]
    others = ", ".join(f"{m} from step {s}" for m, (s, _) in first.items() if m != metric)
    return [_finding("non_finite", step, metric, f"{metric} is {value} at step {step}, the first non-finite value "
                     f"({count} in all{'; also ' + others if others else ''})",
                     steps=[step], values=[value], first_step={m: s for m, (s, _) in first.items()}, count=count)]


def check_too_few_steps(rows):
    """Fewer than MIN_TREND_ROWS training rows: too few to compare the start of the run with its end."""
    (steps, _), = _need(rows, "loss")
    if len(steps) >= MIN_TREND_ROWS:
        return []
    return [_finding("too_few_steps", steps[-1], "loss",
                     f"{len(steps)} training rows (steps {steps[0]}–{steps[-1]}), fewer than {MIN_TREND_ROWS}: "
                     f"too few to compare the start of the run with its end",
                     steps=[steps[0], steps[-1]], values=[], rows=len(steps), needed=MIN_TREND_ROWS)]


def check_no_learning(rows):
    """Every reward within NO_LEARNING_REWARD_TOLERANCE of 0 over more than one step (or, with no rewards
    logged, the loss within NO_LEARNING_LOSS_TOLERANCE of log 2)."""
    names = [n for n in ("rewards/chosen", "rewards/rejected", "eval/rewards/chosen", "eval/rewards/rejected")
             if _curve(rows, n)[0]]
    if names:
        points = [(abs(v), s, v, n) for n in names for s, v in zip(*_curve(rows, n))]
        limit, metric = NO_LEARNING_REWARD_TOLERANCE, "rewards"
    else:
        (steps, losses), = _need(rows, "loss")
        points = [(abs(v - math.log(2)), s, v, "loss") for s, v in zip(steps, losses)]
        limit, metric = NO_LEARNING_LOSS_TOLERANCE, "loss"
    steps = sorted({p[1] for p in points})
    if len(steps) < 2:
        raise NotChecked(f"needs {metric} at two steps or more")
    worst = max(points, key=lambda p: p[0])
    if worst[0] > limit:
        return []
    moved = None
    _, lp = _curve(rows, "eval/logps/chosen")
    if metric == "rewards" and len(lp) >= 2:
        moved = max(lp) - min(lp) > POLICY_MOVED_NATS
    if worst[0] == 0:
        what = "every reward is 0" if metric == "rewards" else "the loss is log 2"
    else:
        what = (f"every reward within {limit:g} of 0" if metric == "rewards" else f"the loss within {limit:g} of log 2")
        what += f" (the farthest, {worst[3]} = {worst[2]:.3g} at step {worst[1]})"
    why = (f"; yet eval/logps/chosen moved from {lp[0]:.4g} to {lp[-1]:.4g}: the reference moves with the policy"
           if moved else "")
    return [_finding("no_learning", steps[-1], worst[3], f"{what} from step {steps[0]} to step {steps[-1]}{why}",
                     steps=[steps[0], steps[-1]], values=[worst[2]], largest_at=worst[1], tolerance=limit,
                     policy_moved=moved)]


def check_reference_mismatch(rows):
    """The rewards of the first logged row against what the first steps can explain (see the module docstring)."""
    candidates = []
    for prefix, lag in (("", 1), ("eval/", 0)):       # a training row at step k saw k − 1 updates, an eval row k
        (sc, c), (sr, r) = _curve(rows, prefix + "rewards/chosen"), _curve(rows, prefix + "rewards/rejected")
        both = [(s, a, b) for s, a, b in zip(sc, c, r)] if sc == sr else []
        if both:
            candidates.append((both[0][0] - lag, prefix, both))
    if not candidates:
        raise NotChecked("needs rewards/chosen and rewards/rejected in the same rows")
    moves, prefix, both = min(candidates)
    step, chosen, rejected = both[0]
    offset = max(abs(chosen), abs(rejected))
    metric = prefix + ("rewards/chosen" if abs(chosen) >= abs(rejected) else "rewards/rejected")
    drift = 0.0
    if moves > 0:
        later = [(s, a, b) for s, a, b in both[1:] if s <= step + 2 * max(step, 1)] or both[1:3]
        if not later:
            raise NotChecked(f"the first row (step {step}) averages {moves + 1} steps and no later row shows how "
                             f"fast the rewards move")
        drift = max(max(abs(a - chosen), abs(b - rejected)) / (s - step) for s, a, b in later)
    allowed = START_REWARD_TOLERANCE + START_DRIFT_FACTOR * moves * drift
    if offset <= allowed:
        return []
    value = chosen if metric.endswith("chosen") else rejected
    if moves == 0:
        why = f"before any update a reference equal to the starting policy gives 0 (up to {allowed:.3g})"
    else:
        why = (f"that row {'averages steps 1–' + str(step) if not prefix else 'follows ' + str(moves) + ' updates'}, "
               f"and in {moves} updates at the fastest pace the rewards move next ({drift:.3g} per step), rewards "
               f"that start at 0 reach {allowed:.3g} at most")
    return [_finding("reference_mismatch", step, metric,
                     f"at step {step}, the first logged row, {prefix}rewards/chosen = {chosen:.4g} and "
                     f"{prefix}rewards/rejected = {rejected:.4g}; {why}",
                     steps=[step], values=[value], rewards=[chosen, rejected], allowed=allowed,
                     drift_per_step=drift, updates_before=moves)]


def check_chosen_logps_falling(rows):
    """logps/chosen falls ≥ CHOSEN_LOGPS_DROP nats while the margin grows and rewards/chosen ends below 0."""
    prefix = "eval/" if len(_curve(rows, "eval/logps/chosen")[0]) >= 2 and \
        len(_curve(rows, "eval/rewards/margins")[0]) >= 2 else ""
    (steps, lp), (msteps, margins) = _need(rows, prefix + "logps/chosen", prefix + "rewards/margins",
                                           at_least=2 if prefix else MIN_TREND_ROWS)
    w, mw = (1, 1) if prefix else (trend_window(len(lp)), trend_window(len(margins)))
    start, end = _mean(lp[:w]), _mean(lp[-w:])
    m_start, m_end = _mean(margins[:mw]), _mean(margins[-mw:])
    _, rewards = _curve(rows, prefix + "rewards/chosen")
    reward_end = _mean(rewards[-trend_window(len(rewards)):]) if rewards and not prefix else \
        (rewards[-1] if rewards else None)
    drop = start - end
    if drop < CHOSEN_LOGPS_DROP or m_end <= m_start or (reward_end is not None and reward_end >= 0):
        return []
    span = "" if w == 1 else f" (means of {w} rows)"
    below = f"; {prefix}rewards/chosen ends at {reward_end:.4g}, so π_θ(y_w) < π_ref(y_w)" if rewards else ""
    return [_finding("chosen_logps_falling", steps[-1], prefix + "logps/chosen",
                     f"{prefix}logps/chosen fell {drop:.3g} nats, from {start:.4g} at step {steps[0]} to {end:.4g} at "
                     f"step {steps[-1]}{span}, while {prefix}rewards/margins grew from {m_start:.4g} to {m_end:.4g}"
                     f"{below}", steps=[steps[0], steps[-1]], values=[start, end], drop_nats=drop,
                     margins=[m_start, m_end], rewards_chosen_end=reward_end, rows_averaged=w)]


def check_over_optimization(rows):
    """The held-out loss rises ≥ OVER_OPTIMIZATION_RISE above its minimum while the training margin grows
    and the accuracy stays ≥ ACCURACY_SATURATED; a KL estimate stands in when no held-out loss is logged."""
    if not _curve(rows, "eval/loss")[0] and (_curve(rows, "kl")[0] or _curve(rows, "eval/kl")[0]):
        return _kl_over_optimization(rows)
    (esteps, losses), = _need(rows, "eval/loss", at_least=3)
    (msteps, margins), (asteps, accuracies) = _need(rows, "rewards/margins", "rewards/accuracies",
                                                    at_least=MIN_TREND_ROWS)
    i = losses.index(min(losses))
    best_step, rise = esteps[i], losses[-1] - losses[i]
    w = trend_window(len(margins))
    before = [m for s, m in zip(msteps, margins) if s <= best_step][-w:] or margins[:1]
    after = [a for s, a in zip(asteps, accuracies) if s > best_step]
    if i == len(losses) - 1 or rise < OVER_OPTIMIZATION_RISE or not after:
        return []
    m_best, m_end, accuracy = _mean(before), _mean(margins[-w:]), _mean(after)
    if m_end <= m_best or accuracy < ACCURACY_SATURATED:
        return []
    return [_finding("over_optimization", esteps[-1], "eval/loss",
                     f"eval/loss rose {rise:.3g} nats, from {losses[i]:.4g} at step {best_step} (its lowest) to "
                     f"{losses[-1]:.4g} at step {esteps[-1]}, while rewards/margins grew from {m_best:.4g} to "
                     f"{m_end:.4g} with rewards/accuracies {accuracy:.3g} on average since step {best_step}",
                     steps=[best_step, esteps[-1]], values=[losses[i], losses[-1]], rise=rise,
                     margins=[m_best, m_end], accuracy_after=accuracy)]


def _kl_over_optimization(rows):
    """The KL estimate grows OVER_OPTIMIZATION_KL_RATIO times after the training accuracy saturates (the end
    of the first ``trend_window`` rows averaging ≥ ACCURACY_SATURATED), while the margin grows."""
    name = "kl" if _curve(rows, "kl")[0] else "eval/kl"
    (ksteps, kls), (msteps, margins), (asteps, accuracies) = _need(
        rows, name, "rewards/margins", "rewards/accuracies", at_least=MIN_TREND_ROWS)
    w = trend_window(len(accuracies))
    saturated = next((asteps[j + w - 1] for j in range(len(accuracies) - w + 1)
                      if _mean(accuracies[j:j + w]) >= ACCURACY_SATURATED), None)
    if saturated is None or saturated >= ksteps[-1]:
        return []
    k_sat = next(k for s, k in zip(ksteps, kls) if s >= saturated)
    m_sat = next((m for s, m in zip(msteps, margins) if s >= saturated), None)
    mw = trend_window(len(margins))
    if m_sat is None or k_sat <= 0 or kls[-1] < OVER_OPTIMIZATION_KL_RATIO * k_sat or _mean(margins[-mw:]) <= m_sat:
        return []
    return [_finding("over_optimization", ksteps[-1], name,
                     f"{name} grew from {k_sat:.4g} to {kls[-1]:.4g} ({kls[-1] / k_sat:.3g}×) after "
                     f"rewards/accuracies reached {ACCURACY_SATURATED:g} at step {saturated}, while the margin kept "
                     f"growing", steps=[saturated, ksteps[-1]], values=[k_sat, kls[-1]],
                     margins=[m_sat, _mean(margins[-mw:])])]


def check_loss_spike(rows):
    """Each training loss against the median and MAD of the LOSS_SPIKE_WINDOW rows before it."""
    (steps, losses), = _need(rows, "loss", at_least=LOSS_SPIKE_MIN_HISTORY + 1)
    findings, previous_was_spike = [], False
    for i in range(LOSS_SPIKE_MIN_HISTORY, len(losses)):
        window = losses[max(0, i - LOSS_SPIKE_WINDOW):i]
        median = statistics.median(window)
        sd = MAD_TO_SD * statistics.median(abs(x - median) for x in window)
        jump = losses[i] - median
        spike = jump >= LOSS_SPIKE_MIN_JUMP and jump >= LOSS_SPIKE_MADS * sd
        if spike and not previous_was_spike:          # a run of spiking rows is one event, at its start
            first = steps[max(0, i - LOSS_SPIKE_WINDOW)]
            sds = f"{jump / sd:.3g} robust s.d." if sd > 0 else "an exactly flat loss"
            findings.append(_finding(
                "loss_spike", steps[i], "loss",
                f"loss {losses[i]:.4g} at step {steps[i]}, {jump:.3g} nats above the median {median:.4g} of "
                f"steps {first}–{steps[i - 1]} (range {min(window):.4g} to {max(window):.4g}; {sds})",
                steps=[first, steps[i - 1], steps[i]], values=[median, losses[i]], jump=jump,
                recent_range=[min(window), max(window)], robust_sd=sd))
        previous_was_spike = spike
    return findings


def check_still_improving(rows):
    """The held-out loss fell at each of the last STILL_IMPROVING_EVALS evaluations, the last time by
    at least STILL_IMPROVING_DROP of its value."""
    (steps, losses), = _need(rows, "eval/loss", at_least=STILL_IMPROVING_EVALS + 1)
    tail = losses[-STILL_IMPROVING_EVALS - 1:]
    falling = all(b < a for a, b in zip(tail, tail[1:]))
    last_drop = tail[-2] - tail[-1]
    if not falling or last_drop < STILL_IMPROVING_DROP * abs(tail[-1]):
        return []
    first = steps[-STILL_IMPROVING_EVALS - 1]
    return [_finding("still_improving", steps[-1], "eval/loss",
                     f"eval/loss fell at each of the last {STILL_IMPROVING_EVALS} evaluations, "
                     f"{' → '.join(f'{v:.4g}' for v in tail)} (steps {first}–{steps[-1]}), the last by "
                     f"{last_drop / abs(tail[-1]):.2%} of its value", steps=steps[-STILL_IMPROVING_EVALS - 1:],
                     values=tail, last_drop=last_drop)]


#: code -> check; each returns a list of findings or raises NotChecked
CHECKS = {"non_finite": check_non_finite, "too_few_steps": check_too_few_steps, "no_learning": check_no_learning,
          "reference_mismatch": check_reference_mismatch, "chosen_logps_falling": check_chosen_logps_falling,
          "over_optimization": check_over_optimization, "loss_spike": check_loss_spike,
          "still_improving": check_still_improving}


# ---- the report ---------------------------------------------------------------------------

def diagnose(source):
    """The report of a logged run: ``{"source", "rows", "steps", "columns", "metrics", "notes", "findings",
    "checks"}``, every number finite (a non-finite value is a finding, written as a string).

    ``source``: a path (``read_log``), a list of row dicts such as ``trainer.state["log_history"]``, or
    what ``read_log`` returned. ``findings``: a list of ``{"code", "step", "metric", "message", "evidence",
    "meaning", "try", "see"}``; ``checks``: per code, ``"ran"`` or why it did not.
    """
    if isinstance(source, dict) and "rows" in source and "columns" in source:
        log = source
    elif isinstance(source, (str, os.PathLike)):
        log = read_log(source)
    else:
        log = _from_rows(source)
    rows, notes = log["rows"], list(log["notes"])
    findings, checks = check_non_finite(rows), {"non_finite": "ran"}
    broken = findings[0]["step"] if findings else None
    if broken is not None:  # past a NaN the numbers mean nothing: the other checks read the run before it
        rows = [r for r in rows if r["step"] < broken]
        notes.append(f"the other checks read the steps before {broken}, where the first non-finite value is")
    for code, check in CHECKS.items():
        if code == "non_finite":
            continue
        if broken is not None and code in ("still_improving", "too_few_steps"):
            checks[code] = f"not run: the run broke at step {broken} (non_finite)"
            continue
        try:
            findings += check(rows)
            checks[code] = "ran"
        except NotChecked as why:
            checks[code] = f"not run: {'' if broken is None else f'before step {broken}, '}{why}"
    findings.sort(key=lambda f: (f["step"], FINDING_CODES.index(f["code"])))
    rows = log["rows"]
    train = [r for r in rows if any(k in r for k in TRAIN_METRICS)]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    return {"source": log["source"], "rows": {"total": len(rows), "train": len(train), "eval": len(evals)},
            "steps": {"first": rows[0]["step"] if rows else None, "last": rows[-1]["step"] if rows else None},
            "columns": log["columns"], "metrics": _metric_summary(rows, log["columns"]["read"]),
            "notes": notes, "findings": findings, "checks": checks}


def _metric_summary(rows, names):
    """Per metric: how many values, the first and last (finite) with their steps, min, max, and the count
    of non-finite values."""
    out = {}
    for name in names:
        steps, values = _curve(rows, name)
        all_steps, all_values = _curve(rows, name, finite=False)
        out[name] = {"n": len(all_steps), "non_finite": len(all_steps) - len(steps),
                     "curve": sparkline(all_values)}
        if values:
            out[name].update(first=values[0], last=values[-1], min=min(values), max=max(values),
                             first_step=steps[0], last_step=steps[-1])
    return out


def sparkline(values, width=SPARK_WIDTH):
    """``values`` as a line of the 8 block characters, lowest ▁ to highest █; longer curves are averaged in
    ``width`` consecutive chunks. A chunk holding a NaN or inf shows ×; a flat curve shows ▄."""
    values = list(values)
    if not values:
        return ""
    chunks = [values[len(values) * k // width:len(values) * (k + 1) // width] for k in range(width)] \
        if len(values) > width else [[v] for v in values]
    means = [None if not all(math.isfinite(v) for v in c) else _mean(c) for c in chunks if c]
    finite = [m for m in means if m is not None]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    top = len(SPARK_BLOCKS) - 1
    return "".join("×" if m is None else SPARK_BLOCKS[top // 2] if hi == lo
                   else SPARK_BLOCKS[round((m - lo) / (hi - lo) * top)] for m in means)


def format_report(report, quiet=False):
    """The report as text: the run at a glance and its curves, then each finding with its evidence, what it
    usually means, what to try and where to read more; ``quiet``: one line per finding only."""
    findings = report["findings"]
    lines = [f"{f['code']} at step {f['step']} ({f['metric']}): {f['message']}" for f in findings]
    if quiet:
        return "\n".join(lines or ["no findings"])
    src, rows, cols = report["source"], report["rows"], report["columns"]
    name = f"{src['file']} ({src['kind']})" if src["file"] else "the rows given"
    lines = [f"{name}: steps {report['steps']['first']}–{report['steps']['last']}, "
             f"{rows['train']} training rows, {rows['eval']} evaluation rows"]
    for key in ("unknown", "ignored", "missing"):
        if cols[key]:
            lines.append(f"  {key} columns: {', '.join(cols[key])}")
    lines += [f"  note: {n}" for n in report["notes"]]
    lines += ["", f"  {'metric':<24}" + "".join(f" {k:>10}" for k in ("first", "last", "min", "max")) + "  curve"]
    for name, m in report["metrics"].items():
        if "first" not in m:
            lines.append(f"  {name:<24}{'(no finite value)':>44}  {m['curve']}")
            continue
        lines.append(f"  {name:<24}" + "".join(f" {m[k]:>10.4g}" for k in ("first", "last", "min", "max"))
                     + f"  {m['curve']}")
    lines += ["", f"findings: {len(findings) or 'none'}"]
    for f in findings:
        lines += [f"[{f['code']}] step {f['step']}, {f['metric']}", f"  evidence: {f['message']}",
                  f"  usually means: {f['meaning']}", f"  try: {f['try']}", f"  read: {'; '.join(f['see'])}"]
    skipped = [f"{code} ({why[len('not run: '):]})" for code, why in report["checks"].items() if why != "ran"]
    if skipped:
        lines += ["", "not checked: " + "; ".join(skipped)]
    return "\n".join(lines)
