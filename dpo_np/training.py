"""The training loop that supervised fine-tuning, DPO and reward-model training share.

Each trainer says how one batch becomes a loss and gradients (``training_step``)
and how it is scored on held-out data (``evaluate``); everything else is the
same and lives here, written out once:

    for step in range(start, total_steps):
        batch   = the step-th batch of a seeded per-epoch shuffle      (a pure function of step)
        grads   = 0;  metrics = trainer.training_step(batch)           (forward, loss, backward)
        stop if the loss or the gradient norm is NaN/inf               (before any update)
        clip the global gradient norm;  lr = schedule(step)
        AdamW update;  trainer.on_step_end()
        log every logging_steps, evaluate every eval_steps, save every save_steps

Because the data order is a function of (seed, epoch, step) alone and a
checkpoint holds the parameters, the AdamW moments and the step, a run resumed
from a checkpoint repeats the uninterrupted run's numbers bit for bit.

Files in ``output_dir`` (the run owns the directory; see ``Trainer.train``):

    metrics.jsonl        one JSON object per logging step (and per evaluation)
    checkpoint-<step>/   every ``save_steps`` steps, and where Ctrl-C stopped the run
    best/                the best evaluation so far (``load_best_model_at_end``)
    final/               at the end of training (``save_at_end``): the best model if asked for
    .lock                while a process trains here: its pid, host and start time
    .replaced-<…>/       an earlier run an overwrite moved aside, deleted when this run finishes
"""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields

import numpy as np

from dpo_np import backend, checks, memory
from dpo_np.checkpoint import check_replaceable, load_checkpoint, save_checkpoint
from dpo_np.data import (batch_indices, find_damage, load_located, tokenize_preference, tokenize_sft,
                         tokenize_unpaired, truncation_report, warn_damage, warn_truncation)
from dpo_np.files import atomic_write, describe_path, process_alive
from dpo_np.model import GPT
from dpo_np.optim import AdamW, clip_grad_norm, cosine_schedule, global_grad_norm
from dpo_np.progress import plural, progress

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
BEST_DIR = "best"
LOCK_FILE = ".lock"
REPLACED_PREFIX = ".replaced-"      # an earlier run an overwrite moved aside, until the new one finishes
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)$")
LR_SCHEDULERS = ("cosine", "linear", "constant")

# settings a resumed run may change: they decide what is logged, shown or kept, not the numbers
RESUME_MAY_CHANGE = ("output_dir", "show_progress", "logging_steps", "eval_steps", "save_steps",
                     "save_at_end", "per_device_eval_batch_size", "overwrite_output_dir")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss, gradient or parameter; the run stopped there."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training between two steps; ``checkpoint`` is where the run was saved.
    ``finished``: the Ctrl-C came during the run's last step (or the one early stopping ended it on),
    so the run is whole and ``checkpoint`` is its final model: nothing is left to resume."""

    def __init__(self, message, checkpoint, finished=False):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.finished = finished


# ---- configuration ------------------------------------------------------------------------

@dataclass
class TrainingConfig:
    """What every trainer shares (the Hugging Face ``TrainingArguments`` names where they exist).

    ``max_steps > 0`` fixes the number of optimizer steps; otherwise it is
    ``num_train_epochs`` × ⌈examples / per_device_train_batch_size⌉.
    ``max_grad_norm=None`` (or 0) turns clipping off (the norm is still logged).
    ``eval_steps``/``save_steps`` of None: no periodic evaluation/checkpoint.
    ``group_by_length``: batches of examples of similar length (less padding, the same epochs).
    ``load_best_model_at_end``: keep the best evaluation of ``metric_for_best_model`` in ``best/``
    and end with it; ``early_stopping_patience``: stop after that many evaluations without a
    better one. Both need ``eval_steps``.
    ``drop_identical_pairs``: leave out of the train and eval data the pairs whose chosen and
    rejected responses have the same tokens after truncation (``data.find_damage``; they are
    warned about either way).
    """
    output_dir: str = "runs/train"
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    num_train_epochs: int = 1
    max_steps: int = -1
    max_length: int = 128
    max_prompt_length: int = 64
    seed: int = 0
    logging_steps: int = 10
    eval_steps: int = None
    save_steps: int = None
    save_at_end: bool = True
    show_progress: bool = True
    overwrite_output_dir: bool = False
    group_by_length: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str = "eval/loss"
    greater_is_better: bool = None
    early_stopping_patience: int = None
    drop_identical_pairs: bool = False

    def __post_init__(self):
        for name, low in (("warmup_steps", 0), ("per_device_train_batch_size", 1),
                          ("per_device_eval_batch_size", 1), ("num_train_epochs", 1), ("max_steps", -1),
                          ("max_length", 2), ("max_prompt_length", 1), ("seed", 0), ("logging_steps", 1)):
            setattr(self, name, checks.integer(getattr(self, name), name, low=low))
        for name in ("eval_steps", "save_steps"):
            setattr(self, name, checks.integer(getattr(self, name), name, low=1, optional=True))
        for name in ("learning_rate", "weight_decay"):
            setattr(self, name, checks.number(getattr(self, name), name, low=0.0))
        self.adam_epsilon = checks.positive(self.adam_epsilon, "adam_epsilon")     # ε = 0 divides 0 by 0
        self.max_grad_norm = checks.number(self.max_grad_norm, "max_grad_norm", low=0.0, optional=True)
        for name in ("adam_beta1", "adam_beta2"):
            setattr(self, name, checks.number(getattr(self, name), name, 0.0, 1.0, high_open=True))
        checks.choice(self.lr_scheduler_type, "lr_scheduler_type", LR_SCHEDULERS)
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be smaller than "
                             f"max_length ({self.max_length}), so every response keeps a token")
        if not isinstance(self.output_dir, (str, os.PathLike)) or not os.fspath(self.output_dir):
            raise ValueError(f"output_dir must be a non-empty path, got {self.output_dir!r}")
        self.output_dir = os.fspath(self.output_dir)
        for name in ("save_at_end", "show_progress", "overwrite_output_dir", "group_by_length",
                     "load_best_model_at_end", "drop_identical_pairs"):
            checks.flag(getattr(self, name), name)
        if not isinstance(self.metric_for_best_model, str):
            raise TypeError(f"metric_for_best_model must be a metric name, got {self.metric_for_best_model!r}")
        if self.greater_is_better is None:       # a loss falls, anything else (an accuracy) rises
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        checks.flag(self.greater_is_better, "greater_is_better")
        self.early_stopping_patience = checks.integer(self.early_stopping_patience, "early_stopping_patience",
                                                      low=1, optional=True)
        if (self.load_best_model_at_end or self.early_stopping_patience) and not self.eval_steps:
            raise ValueError("load_best_model_at_end and early_stopping_patience need eval_steps: "
                             "the best point is found by evaluating every eval_steps steps")
        if self.learning_rate * self.weight_decay >= 1.0:
            raise ValueError(f"learning_rate × weight_decay must be < 1 (each step multiplies the weights "
                             f"by 1 − lr·λ), got {self.learning_rate} × {self.weight_decay}")

    def to_dict(self):
        return asdict(self)


def resolve_tokenizer(tokenizer, processing_class):
    """The trainers' tokenizer, given as ``tokenizer`` or as ``processing_class`` (TRL's newer name
    for the same argument); both, and different, is a ValueError."""
    if processing_class is None:
        return tokenizer
    if tokenizer is not None and tokenizer is not processing_class and tokenizer != processing_class:
        raise ValueError("tokenizer and processing_class are two names for one argument (processing_class "
                         "is TRL's newer one) and were given two different tokenizers; pass one of them")
    return processing_class


def resolve_config(config_cls, args, overrides):
    """``args`` (an instance of ``config_cls``, of a parent config, a dict, or None) with
    ``overrides`` applied, as a validated ``config_cls``.

    A parent config (say a bare ``TrainingConfig`` passed where a ``DPOConfig`` is
    expected) keeps its values and takes the child's defaults for the rest; an
    unknown override is a TypeError naming it, a bad value a ValueError naming the field.
    """
    names = {f.name for f in fields(config_cls)}
    if args is None:
        values = {}
    elif isinstance(args, dict):
        values = dict(args)
    elif hasattr(args, "__dataclass_fields__") and isinstance(args, TrainingConfig):
        values = {f.name: getattr(args, f.name) for f in fields(args)}
    else:
        raise TypeError(f"args must be a {config_cls.__name__}, a dict or None, got {type(args).__name__}")
    unknown = sorted((set(values) | set(overrides)) - names)
    if unknown:
        raise TypeError(f"unknown {config_cls.__name__} field(s) {unknown}")
    values.update(overrides)
    return config_cls(**values)


# ---- the pieces of the loop -------------------------------------------------------------

def learning_rate_at(step, args, total_steps):
    """The learning rate of 0-based ``step``: linear warmup over ``warmup_steps`` (reaching the
    peak at its last step, never 0), then cosine decay to 0 at ``total_steps`` (``optim.cosine_schedule``),
    linear decay to 0, or constant."""
    lr, warm = args.learning_rate, min(args.warmup_steps, total_steps)
    if args.lr_scheduler_type == "cosine":
        return cosine_schedule(step, lr, warm, total_steps)
    if step < warm:
        return lr * (step + 1) / warm
    if args.lr_scheduler_type == "constant":
        return lr
    return lr * max(0.0, (total_steps - step) / max(1, total_steps - warm))


def check_model_fits(model, name, args, tokenizer):
    """The model can read what the trainer will feed it: a tokenizer, no longer sequences than
    block_size, no more token ids than vocab_size. ValueError/TypeError naming ``name`` otherwise."""
    for attr in ("params", "config", "forward", "backward", "zero_grad"):
        if not hasattr(model, attr):
            raise TypeError(f"{name} must be a model with .{attr} (a GPT), got {type(model).__name__}")
    if tokenizer is None:
        raise ValueError("tokenizer is required: the trainer tokenizes the datasets itself "
                         "(a ByteTokenizer reads any text; a CharTokenizer only the characters it was built from)")
    if args.max_length > model.config.block_size:
        raise ValueError(f"max_length ({args.max_length}) exceeds {name}.config.block_size "
                         f"({model.config.block_size}); the model cannot read sequences that long")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than "
                         f"{name}.config.vocab_size ({model.config.vocab_size})")


def pair_metrics(chosen, rejected):
    """How a score ranks each pair: the mean score of y_w and of y_l, the fraction of pairs where
    y_w scores higher (a tie is a miss, as in the standard ``rewards/accuracies``), the mean margin."""
    xp = backend.array_module(chosen)           # scores on the device, or already on the host
    means = xp.stack([chosen.mean(), rejected.mean(), (chosen > rejected).mean(), (chosen - rejected).mean()])
    mean_chosen, mean_rejected, accuracy, margin = backend.to_numpy(means).tolist()   # one host transfer
    return {"chosen": mean_chosen, "rejected": mean_rejected, "accuracy": accuracy, "margin": margin}


def frozen_copy(model):
    """A deep copy of a GPT's parameters in a new model with no gradient buffers: the frozen π_ref."""
    ref = GPT(model.config, dtype=model.dtype)
    for k, p in model.params.items():
        ref.params[k] = p.copy()
    return ref


def check_separate(model, ref_model, name="ref_model"):
    """Refuse a reference that shares any parameter array with the policy (``copy.copy(model)``,
    ``ref.params = model.params``): every update of π_θ would move π_ref with it."""
    if ref_model is model:
        raise ValueError(f"{name} is the same object as model; pass a separate copy "
                         f"(or {name}=None for a frozen copy of the initial policy)")
    xp = backend.xp()
    for k, p in model.params.items():
        for j, q in ref_model.params.items():
            if xp.may_share_memory(p, q):
                raise ValueError(f"{name}.params[{j!r}] shares memory with model.params[{k!r}]: the reference "
                                 f"would move with the policy; give it copies (e.g. training.frozen_copy(model))")


def reference_model(model, ref_model, args, tokenizer):
    """π_ref for a trainer: a frozen copy of ``model`` when ``ref_model`` is None, else ``ref_model``,
    checked to share no parameter with the policy and to read what the trainer will feed it."""
    if ref_model is None:
        return frozen_copy(model)
    check_separate(model, ref_model)
    check_model_fits(ref_model, "ref_model", args, tokenizer)
    return ref_model


def fingerprint(obj):
    """A short SHA-256 of ``obj``: arrays by their bytes, everything else by its JSON."""
    h = hashlib.sha256()
    items = obj.items() if isinstance(obj, dict) else enumerate(obj if isinstance(obj, list) else [obj])
    for key, value in items:
        h.update(str(key).encode())
        if hasattr(value, "dtype") and hasattr(value, "shape"):
            a = backend.to_numpy(value)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def last_checkpoint(output_dir):
    """The ``checkpoint-<step>`` directory of ``output_dir`` with the highest step, or None."""
    if not os.path.isdir(output_dir):
        return None
    steps = [(int(m.group(1)), entry) for entry in os.listdir(output_dir)
             if (m := CHECKPOINT_PATTERN.match(entry)) and os.path.isdir(os.path.join(output_dir, entry))]
    return os.path.join(output_dir, max(steps)[1]) if steps else None


def check_output_dir(output_dir, overwrite=False):
    """Raise unless a fresh run may write into ``output_dir``: absent, empty, or ``overwrite`` and
    everything the overwrite would delete deletable (``check_replaceable_run``), so a refusal comes
    before anything is deleted. Returns whether it holds files (that an overwrite will clear of an
    earlier run's)."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir {output_dir} is {describe_path(output_dir)}, not a directory")
    previous = sorted(e for e in os.listdir(output_dir) if e != LOCK_FILE) if os.path.isdir(output_dir) else []
    if previous and not overwrite:
        raise ValueError(f"output_dir {output_dir} already holds files ({', '.join(previous[:5])}); a new run "
                         f"needs a new output_dir, or overwrite_output_dir=True (--overwrite) to replace the "
                         f"earlier run's files, or resume_from_checkpoint (--resume) to continue it")
    if previous:
        check_replaceable_run(output_dir)
    return bool(previous)


def is_run_entry(name):
    """Whether an entry of an output directory is one a run writes there (metrics, checkpoints,
    best/, final/, the lock, an earlier run set aside by an overwrite)."""
    return (name in (METRICS_FILE, FINAL_DIR, BEST_DIR, LOCK_FILE) or bool(CHECKPOINT_PATTERN.match(name))
            or name.startswith(REPLACED_PREFIX))


def _run_files(output_dir):
    """The entries of ``output_dir`` an overwrite replaces (an earlier run's; never the lock)."""
    return sorted(e for e in os.listdir(output_dir) if is_run_entry(e) and e != LOCK_FILE)


def check_replaceable_run(output_dir):
    """Raise unless an overwrite may delete every entry an earlier run wrote in ``output_dir``: each
    checkpoint holds only its own files (``checkpoint.check_replaceable``), metrics.jsonl is a file,
    and every directory on the way can be changed. Nothing is deleted here: the whole set is checked
    before the first entry goes."""
    for entry in _run_files(output_dir):
        path = os.path.join(output_dir, entry)
        if entry.startswith(REPLACED_PREFIX) or entry == METRICS_FILE:
            if entry == METRICS_FILE and (os.path.islink(path) or not os.path.isfile(path)):
                raise ValueError(f"{path} is {describe_path(path)}, not the metrics file a run writes; "
                                 f"refusing to replace it — move it out first")
            continue
        check_replaceable(path)               # a checkpoint that gained a person's file stays
    for folder in [output_dir] + [os.path.join(output_dir, e) for e in _run_files(output_dir)
                                  if os.path.isdir(os.path.join(output_dir, e))]:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{folder}: cannot be changed (no write permission), so the earlier run "
                                  f"there cannot be replaced; nothing was deleted")


def _set_aside_previous_run(output_dir):
    """``overwrite_output_dir``: move what an earlier run wrote here into one hidden sibling folder
    (``.replaced-…``, removed when the new run finishes), and nothing else. Everything is checked
    first (``check_replaceable_run``); if a move fails, the moved entries go back, so the earlier
    run is either whole in its place or whole aside, never half-deleted."""
    check_replaceable_run(output_dir)
    entries = _run_files(output_dir)
    aside = tempfile.mkdtemp(prefix=f"{REPLACED_PREFIX}{os.getpid()}-", dir=output_dir)
    moved = []
    try:
        for entry in entries:
            os.rename(os.path.join(output_dir, entry), os.path.join(aside, entry))
            moved.append(entry)
    except BaseException:
        for entry in reversed(moved):
            os.rename(os.path.join(aside, entry), os.path.join(output_dir, entry))
        os.rmdir(aside)
        raise


def _remove_replaced(output_dir):
    """Delete the earlier runs an overwrite set aside, once the new run has finished; one that cannot
    be deleted stays (hidden, named in a warning), since the new run is whole either way."""
    for entry in sorted(os.listdir(output_dir)):
        if entry.startswith(REPLACED_PREFIX):
            try:
                shutil.rmtree(os.path.join(output_dir, entry))
            except OSError as err:
                warnings.warn(f"the earlier run set aside in {os.path.join(output_dir, entry)} could not be "
                              f"deleted ({err}); delete it yourself", stacklevel=2)


def lock_holder(output_dir):
    """Who holds ``output_dir``'s lock: its owner's dict (pid, host, trainer, started) while that
    process lives (or runs on another host, where this one cannot tell), None when there is no
    lock or a stale one (its process gone on this host). An unreadable lock is a RuntimeError."""
    path = os.path.join(output_dir, LOCK_FILE)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RuntimeError(f"{path} exists but cannot be read; if no run uses this directory, "
                           f"delete the file") from None
    return None if host == socket.gethostname() and not process_alive(pid) else owner


def in_use_message(output_dir, owner, option):
    """The refusal of a second run into ``output_dir`` while ``owner`` (``lock_holder``) trains there."""
    return (f"{option} {output_dir} is in use by a {owner.get('trainer', '')} run: process {owner['pid']} on "
            f"{owner['host']}, started {owner.get('started', '?')} (see {os.path.join(output_dir, LOCK_FILE)}); "
            f"wait for it to finish, or choose another {option}")


class _Lock:
    """``output_dir/.lock``, created exclusively, holding the owner's pid, host and start time.

    A lock whose process is gone (same host) is stale and taken over; a live one is refused,
    naming its owner. Scripts get the same protection as the command line."""

    def __init__(self, output_dir, owner):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "trainer": owner,
                                "started": time.strftime("%Y-%m-%d %H:%M:%S")})

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._clear_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.text)
            return self
        raise RuntimeError(f"{self.path} could not be taken")

    def _clear_if_stale(self):
        owner = lock_holder(os.path.dirname(self.path))
        if owner is None:
            try:
                os.unlink(self.path)                # its process is gone: a stale lock
            except FileNotFoundError:
                pass                                # or its run just ended and took it away
            return
        raise RuntimeError(in_use_message(os.path.dirname(self.path), owner, "output_dir"))

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _finite(x):
    return x is not None and math.isfinite(x)


def _mean_metrics(rows, cumulative=()):
    """Per-key mean over a window of per-step metric dicts (keys missing from a row are skipped);
    a running total (a key in ``cumulative``) keeps its last value instead."""
    keys = dict.fromkeys(k for r in rows for k in r)
    return {k: float([r[k] for r in rows if k in r][-1] if k in cumulative
                     else np.mean([r[k] for r in rows if k in r])) for k in keys}


def _append_jsonl(path, obj):
    """One JSON line appended with a single write (an O_APPEND write of one buffer)."""
    line = (json.dumps(obj, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _rewrite_jsonl(path, rows):
    """Replace ``path`` with ``rows``, whole or not at all (``files.atomic_write``)."""
    with atomic_write(path) as f:
        for r in rows:
            f.write(json.dumps(r, allow_nan=False) + "\n")


def read_metrics(path):
    """The rows of a ``metrics.jsonl`` file (a path to the file or to its output_dir)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- the loop ---------------------------------------------------------------------------

class Trainer:
    """The shared loop. A subclass sets ``self.train_features`` (one item per example) in its
    ``__init__`` and implements ``training_step(idx) -> metrics`` (gradients accumulated into
    ``self.model.grads``; ``metrics["loss"]`` a float) and ``evaluate() -> metrics``.

    ``self.state``: ``step`` (optimizer steps done), ``log_history`` (every logged row) and any
    trainer counters that a checkpoint must carry (``self.state["counters"]``).
    """

    name = "train"
    data_kind = "sft"              # "sft": {"prompt", "response"} records; "preference": pairs; "unpaired": KTO's
    cumulative_metrics = ()        # running totals: logged as their last value, not a window mean

    def __init__(self, model, args, tokenizer=None):
        self.model = model
        self.args = args
        self.tokenizer = tokenizer
        self.optimizer = AdamW(model.params, lr=args.learning_rate,
                               betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                               weight_decay=args.weight_decay)
        self.state = {"step": 0, "log_history": [], "counters": {}}
        self.train_features = []
        self.truncation = {}          # what the length limits removed, per split ("train", "eval")
        self.final_checkpoint = None
        self._epoch_batches = (None, None)

    def tokenize(self, dataset, drop=True, split=None):
        """The records of ``dataset`` (a list or a JSONL path, checked by ``data.load_preferences`` or
        ``data.load_sft``) as token ids under this run's length limits; [] for None.

        A text the tokenizer cannot read is a ValueError naming its file, line, field and position.
        What the cut removed is counted (``data.truncation_report``, kept in
        ``self.truncation[split]``) and warned about when it is a large share
        (``data.warn_truncation``); what it does to the data (pairs whose chosen and rejected became
        the same tokens, different prompts that became the same tokens: ``data.find_damage``) is
        warned about (``data.DataWarning``); with ``drop_identical_pairs`` (and ``drop``, which
        ``measure`` turns off to score every record it is given) those pairs are left out.
        """
        if dataset is None:
            return []
        a = self.args
        encode = {"preference": tokenize_preference, "unpaired": tokenize_unpaired}.get(self.data_kind, tokenize_sft)
        records, wheres, name = load_located(dataset, self.data_kind)
        cuts = [{} for _ in records]
        features = [encode(self.tokenizer, r, a.max_length, a.max_prompt_length, where=w, cut=c)
                    for r, w, c in zip(records, wheres, cuts)]
        truncation = truncation_report(cuts)
        if split is not None:
            self.truncation[split] = truncation
        warn_truncation(truncation, name, a.max_length, a.max_prompt_length, self.tokenizer)
        damage = find_damage(records, features)
        drop = drop and a.drop_identical_pairs
        warn_damage(damage, wheres, name, a.max_length, a.max_prompt_length, dropped=drop)
        if drop:
            identical = set(damage["identical_pairs"])
            features = [f for i, f in enumerate(features) if i not in identical]
        return features

    # -- what a subclass provides ------------------------------------------------------------

    def training_step(self, idx):
        """Forward and backward of the examples ``idx``: gradients into ``model.grads``, metrics out."""
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError

    def on_step_end(self):
        """Called after each optimizer update (TR-DPO syncs its reference here)."""

    def check_resume(self):
        """Raise if this trainer's run cannot be resumed exactly from a checkpoint."""

    # -- steps and batches ---------------------------------------------------------------------

    @property
    def steps_per_epoch(self):
        return math.ceil(len(self.train_features) / self.args.per_device_train_batch_size)

    @property
    def total_steps(self):
        if self.args.max_steps > 0:
            return self.args.max_steps
        return self.args.num_train_epochs * self.steps_per_epoch

    def batch_for_step(self, step):
        """The indices of the examples of 0-based ``step``: batch ``step mod steps_per_epoch`` of a
        permutation drawn from (seed, epoch). A function of the step alone, so resuming needs no
        saved data-loader state.

        With ``group_by_length``, the permutation is cut into groups of 50 batches, each group is
        sorted by length before it is cut into batches, and the batches are shuffled: every
        example still comes once per epoch, but a batch pads its rows to a similar length."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._epoch_batches[0] != epoch:
            bs, n, seed = self.args.per_device_train_batch_size, len(self.train_features), [self.args.seed, epoch]
            if self.args.group_by_length:
                order, batches = backend.rng(seed).permutation(n), []
                for g in range(0, n, 50 * bs):
                    group = sorted(order[g:g + 50 * bs], key=self.example_length, reverse=True)
                    batches += [np.array(group[i:i + bs]) for i in range(0, len(group), bs)]
                batches = [batches[i] for i in backend.rng(seed + [1]).permutation(len(batches))]
            else:
                batches = list(batch_indices(n, bs, seed=seed))
            self._epoch_batches = (epoch, batches)
        return self._epoch_batches[1][k]

    def example_length(self, i):
        """Tokens of training example ``i`` (its longest row): what a batch pads to."""
        f = self.train_features[i]
        return len(f["prompt_ids"]) + max(len(v) for key, v in f.items() if key != "prompt_ids")

    def eval_chunks(self, n):
        """Index arrays covering range(n) in order, per_device_eval_batch_size at a time."""
        bs = self.args.per_device_eval_batch_size
        return [np.arange(i, min(i + bs, n)) for i in range(0, n, bs)]

    # -- logging ----------------------------------------------------------------------------

    @property
    def metrics_path(self):
        return os.path.join(self.args.output_dir, METRICS_FILE)

    def log(self, metrics):
        """Record one row (with step and epoch) in ``state["log_history"]`` and metrics.jsonl."""
        step = self.state["step"]
        row = {"step": step, "epoch": step / max(1, self.steps_per_epoch), **metrics}
        self.state["log_history"].append(row)
        os.makedirs(self.args.output_dir, exist_ok=True)
        _append_jsonl(self.metrics_path, row)
        return row

    # -- checkpoints ------------------------------------------------------------------------

    def fingerprints(self):
        """What, beyond the config, makes this run this run: the tokenized training data and the
        tokenizer (a subclass adds what else it reads, such as the reference model)."""
        return {"data": fingerprint(self.train_features),
                "tokenizer": fingerprint(self.tokenizer.to_dict() if self.tokenizer is not None else None)}

    def _extra(self):
        return {"trainer": self.name, "args": self.args.to_dict(), "counters": self.state["counters"],
                "fingerprints": self.fingerprints()}

    def save(self, path):
        """An atomic checkpoint (parameters, tokenizer, AdamW state, step, trainer state) at ``path``."""
        return save_checkpoint(path, self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                               step=self.state["step"], extra=self._extra())

    def read_checkpoint(self, path):
        """``checkpoint.load_checkpoint``'s dict; the reward trainer reads its own format."""
        return load_checkpoint(path)

    def check_same_run(self, ckpt, path):
        """Raise unless the checkpoint at ``path`` was written by this run: the same kind of trainer,
        the same settings (but for ``RESUME_MAY_CHANGE``), data, tokenizer and model shapes."""
        extra = ckpt.get("extra") or {}
        if ckpt.get("optimizer_state") is None or ckpt.get("step") is None:
            raise ValueError(f"resume_from_checkpoint: {path} holds no optimizer state or step, "
                             f"so training cannot continue from it exactly")
        if extra.get("trainer") != self.name:
            raise ValueError(f"resume_from_checkpoint: {path} was written by a {extra.get('trainer')!r} run, "
                             f"not a {self.name!r} one; to start {self.name} from those weights, load them as "
                             f"the model (checkpoint.load_checkpoint) and train without resuming")
        finish_early = (f"; to end the run where it stopped, use the checkpoint as it is, a whole model "
                        f"(on the command line: --model {path})")
        if ckpt["step"] > self.total_steps:
            raise ValueError(f"resume_from_checkpoint: {path} is at step {ckpt['step']}, beyond this run's "
                             f"{plural(self.total_steps, 'step')} (max_steps={self.args.max_steps}); nothing would "
                             f"train{finish_early}")
        saved, mine = extra.get("args") or {}, self.args.to_dict()
        # a setting added to the config after the checkpoint was written ran at its default there
        defaults = {f.name: f.default for f in fields(self.args)}
        for key in sorted(set(saved) | set(mine)):
            theirs = saved.get(key, defaults.get(key))
            if key not in RESUME_MAY_CHANGE and theirs != mine.get(key):
                # a shorter run is another run: its learning rate decays to 0 at its own last step
                hint = finish_early if key in ("max_steps", "num_train_epochs") else ""
                raise ValueError(f"resume_from_checkpoint: {path} was trained with {key}={theirs!r}, "
                                 f"this run has {key}={mine.get(key)!r}; a resumed run must be the same "
                                 f"run{hint}")
        for key, value in self.fingerprints().items():
            if (extra.get("fingerprints") or {}).get(key) != value:
                raise ValueError(f"resume_from_checkpoint: the {key} differs from the run that wrote {path} "
                                 f"(fingerprint {(extra.get('fingerprints') or {}).get(key)} there, {value} here)")
        mismatch = checks.name_mismatch(self.model.params, ckpt["model"].params)
        if mismatch:
            raise ValueError(f"resume_from_checkpoint: {path} holds other parameters than this model: {mismatch}")
        for k, p in self.model.params.items():
            if p.shape != ckpt["model"].params[k].shape:
                raise ValueError(f"resume_from_checkpoint: parameter {k!r} has shape "
                                 f"{ckpt['model'].params[k].shape} in {path}, {p.shape} in the model")

    def _restore(self, path):
        ckpt = self.read_checkpoint(path)
        self.check_same_run(ckpt, path)
        for k, p in self.model.params.items():
            p[...] = backend.asarray(ckpt["model"].params[k], p.dtype)   # in place: the optimizer holds these
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.state["step"] = int(ckpt["step"])
        self.state["counters"] = dict((ckpt.get("extra") or {}).get("counters", {}))

    # -- the loop ---------------------------------------------------------------------------

    def update(self, idx, lr):
        """One optimizer step on the examples ``idx``: gradients (``training_step``), the global
        norm clipped, AdamW at ``lr``. Returns the step's metrics with ``lr`` and ``grad_norm``.
        A NaN/inf loss or gradient raises ``NonFiniteLossError`` before the parameters change,
        naming the tensor; a parameter the update made non-finite is named after it."""
        memory.keep_freed_memory()         # each step reuses the memory the last one freed (memory.py)
        self.model.zero_grad()
        metrics = self.training_step(idx)
        grads = self.model.grads
        if not _finite(metrics["loss"]):
            raise NonFiniteLossError(f"the loss is {metrics['loss']}; training stopped before the update")
        if self.args.max_grad_norm:
            grad_norm = clip_grad_norm(grads, self.args.max_grad_norm, error_if_nonfinite=False)
        else:
            grad_norm = global_grad_norm(grads)
        if not _finite(grad_norm):
            raise NonFiniteLossError(f"the gradient of {_first_non_finite(grads)!r} is not finite "
                                     f"(norm {grad_norm}); training stopped before the update")
        self.optimizer.step(grads, lr=lr)
        bad = _first_non_finite(self.model.params)
        if bad is not None:
            raise NonFiniteLossError(f"the update made parameter {bad!r} non-finite (lr {lr}); the model in "
                                     f"memory is unusable, the checkpoints on disk are not affected")
        return {**metrics, "lr": lr, "grad_norm": grad_norm}

    def train(self, resume_from_checkpoint=None):
        """Run the loop to ``total_steps``; returns ``{"global_step", "training_loss", "metrics"}``.

        The run owns ``output_dir``: a fresh run refuses a directory that already holds files,
        unless ``overwrite_output_dir`` (then only what an earlier run wrote there is deleted);
        a lock file keeps a second process out while this one trains.

        ``resume_from_checkpoint``: a checkpoint directory written by this run (the same trainer,
        settings, data and tokenizer, or a ValueError naming what differs; ``"last"`` finds the
        newest in ``output_dir``). Its parameters, AdamW state and step are restored and the run
        continues as if never stopped (metrics.jsonl keeps the rows up to that step). Every
        per-step number repeats exactly; a logged row whose ``logging_steps`` window the resume cut
        in two averages only the steps after it.

        Ctrl-C (SIGINT) stops the run after the step in progress, saves ``checkpoint-<step>`` and
        raises ``TrainingInterrupted`` naming it; a second Ctrl-C stops at once. A Ctrl-C during the
        last step (or the step early stopping ends the run on) lets the run finish and save, then
        raises ``TrainingInterrupted`` with ``finished=True``: a caller with more to do (the next
        stage of a pipeline) hears of it all the same.
        """
        if not self.train_features:
            raise ValueError("train_dataset is empty: nothing to train on")
        os.makedirs(self.args.output_dir, exist_ok=True)
        with _Lock(self.args.output_dir, self.name):
            self._start(resume_from_checkpoint)
            with _StopOnInterrupt() as interrupt:
                losses = self._run_steps(resume_from_checkpoint, interrupt)
            self._finish()
        if interrupt.requested:
            saved = self.final_checkpoint or last_checkpoint(self.args.output_dir)
            raise TrainingInterrupted(f"Ctrl-C came during the step the run ended on, so it finished (step "
                                      f"{self.state['step']} of {self.total_steps}); saved {saved}", saved, finished=True)
        train_rows = [r for r in self.state["log_history"] if "loss" in r]
        return {"global_step": self.state["step"],
                "training_loss": float(np.mean(losses)) if losses else float("nan"),
                "metrics": train_rows[-1] if train_rows else {}}

    def _start(self, resume_from_checkpoint):
        args = self.args
        if resume_from_checkpoint == "last":
            resume_from_checkpoint = last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume: {args.output_dir} holds no checkpoint-<step> to resume from")
        if resume_from_checkpoint is not None:
            self.check_resume()
            self._restore(resume_from_checkpoint)
            rows = read_metrics(self.metrics_path) if os.path.exists(self.metrics_path) else []
            rows = [r for r in rows if r.get("step", 0) <= self.state["step"]]
            _rewrite_jsonl(self.metrics_path, rows)
            self.state["log_history"] = rows
            return
        if check_output_dir(args.output_dir, args.overwrite_output_dir):
            _set_aside_previous_run(args.output_dir)
        _rewrite_jsonl(self.metrics_path, [])

    def _run_steps(self, resume_from_checkpoint, interrupt):
        args, total = self.args, self.total_steps
        last_saved = resume_from_checkpoint
        window, losses = [], []
        steps = range(self.state["step"], total)
        bar = progress(steps, desc=self.name) if args.show_progress else steps
        for step in bar:
            try:
                metrics = self.update(self.batch_for_step(step), lr=learning_rate_at(step, args, total))
            except NonFiniteLossError as err:
                where = (f"the last checkpoint, {last_saved}, is untouched" if last_saved
                         else "no checkpoint was written")
                raise NonFiniteLossError(f"step {step + 1}: {err} ({where})") from None
            self.state["step"] = done = step + 1
            self.on_step_end()
            losses.append(metrics["loss"])
            window.append(metrics)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=metrics["loss"])
            if done % args.logging_steps == 0 or done == total:
                self.log(_mean_metrics(window, self.cumulative_metrics))
                window = []
            if args.eval_steps and done % args.eval_steps == 0 and self._evaluate_and_keep_best():
                break                                  # early stopping: no better evaluation for a while
            if (args.save_steps and done % args.save_steps == 0) or (interrupt.requested and done < total):
                last_saved = self.save(os.path.join(args.output_dir, f"checkpoint-{done}"))
            if interrupt.requested and done < total:
                raise TrainingInterrupted(f"training stopped at step {done} of {total}; saved {last_saved}",
                                          last_saved)
        return losses

    def _evaluate_and_keep_best(self):
        """Log an evaluation; keep ``best/`` when it improves ``metric_for_best_model``. Returns True
        when ``early_stopping_patience`` evaluations in a row have not improved it."""
        args, c = self.args, self.state["counters"]
        metrics = self.evaluate()
        self.log(metrics)
        if not (args.load_best_model_at_end or args.early_stopping_patience):
            return False
        if args.metric_for_best_model not in metrics:
            raise ValueError(f"metric_for_best_model {args.metric_for_best_model!r} is not among the "
                             f"evaluation's metrics {sorted(metrics)}")
        value, best = metrics[args.metric_for_best_model], c.get("best_metric")
        if best is None or (value > best if args.greater_is_better else value < best):
            c.update(best_metric=value, best_step=self.state["step"], evals_since_best=0)
            if args.load_best_model_at_end:
                self.save(os.path.join(args.output_dir, BEST_DIR))
            return False
        c["evals_since_best"] = c.get("evals_since_best", 0) + 1
        return bool(args.early_stopping_patience) and c["evals_since_best"] >= args.early_stopping_patience

    def _finish(self):
        args = self.args
        best = os.path.join(args.output_dir, BEST_DIR)
        if args.load_best_model_at_end and os.path.isdir(best):
            for k, p in self.read_checkpoint(best)["model"].params.items():
                self.model.params[k][...] = backend.asarray(p, self.model.params[k].dtype)
        if args.save_at_end:
            self.final_checkpoint = self.save(os.path.join(args.output_dir, FINAL_DIR))
        _remove_replaced(args.output_dir)


def _first_non_finite(arrays):
    """The name of the first array holding a NaN or inf, or None."""
    if not arrays:
        return None
    xp = backend.xp()
    finite = backend.to_numpy(xp.stack([xp.isfinite(a).all() for a in arrays.values()]))   # one transfer
    return next((k for k, ok in zip(arrays, finite) if not ok), None)


class _StopOnInterrupt:
    """While training: the first SIGINT asks the loop to stop after the current step (so the
    parameters and the optimizer are saved consistent); a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)    # a second Ctrl-C: the default, at once

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
