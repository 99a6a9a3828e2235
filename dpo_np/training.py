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

Files in ``output_dir``:

    metrics.jsonl        one JSON object per logging step (and per evaluation)
    checkpoint-<step>/   every ``save_steps`` steps (``checkpoint.save_checkpoint``, atomic)
    final/               at the end of training (``save_at_end``)
"""

import json
import math
import os
from dataclasses import asdict, dataclass, fields

import numpy as np

from dpo_np import backend
from dpo_np.checkpoint import load_checkpoint, save_checkpoint
from dpo_np.data import batch_indices
from dpo_np.files import atomic_write
from dpo_np.model import GPT
from dpo_np.optim import AdamW, clip_grad_norm, cosine_schedule
from dpo_np.progress import progress

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
LR_SCHEDULERS = ("cosine", "linear", "constant")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or gradient norm); no update was applied."""


# ---- configuration ------------------------------------------------------------------------

@dataclass
class TrainingConfig:
    """What every trainer shares (the Hugging Face ``TrainingArguments`` names where they exist).

    ``max_steps > 0`` fixes the number of optimizer steps; otherwise it is
    ``num_train_epochs`` × ⌈examples / per_device_train_batch_size⌉.
    ``max_grad_norm=None`` (or 0) turns clipping off (the norm is still logged).
    ``eval_steps``/``save_steps`` of None: no periodic evaluation/checkpoint.
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

    def __post_init__(self):
        _check_int(self, "warmup_steps", low=0)
        _check_int(self, "per_device_train_batch_size", low=1)
        _check_int(self, "per_device_eval_batch_size", low=1)
        _check_int(self, "num_train_epochs", low=1)
        _check_int(self, "max_steps", low=-1)
        _check_int(self, "max_length", low=2)
        _check_int(self, "max_prompt_length", low=1)
        _check_int(self, "seed", low=0)
        _check_int(self, "logging_steps", low=1)
        _check_int(self, "eval_steps", low=1, optional=True)
        _check_int(self, "save_steps", low=1, optional=True)
        _check_float(self, "learning_rate", low=0.0)
        _check_float(self, "weight_decay", low=0.0)
        _check_float(self, "adam_epsilon", low=0.0)
        _check_float(self, "max_grad_norm", low=0.0, optional=True)
        for name in ("adam_beta1", "adam_beta2"):
            _check_float(self, name, low=0.0)
            if not getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler_type must be one of {LR_SCHEDULERS}, got {self.lr_scheduler_type!r}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be smaller than "
                             f"max_length ({self.max_length}), so every response keeps a token")
        if not isinstance(self.output_dir, (str, os.PathLike)) or not os.fspath(self.output_dir):
            raise ValueError(f"output_dir must be a non-empty path, got {self.output_dir!r}")
        self.output_dir = os.fspath(self.output_dir)
        for name in ("save_at_end", "show_progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def to_dict(self):
        return asdict(self)


def _check_int(cfg, name, low, optional=False):
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int{' or None' if optional else ''}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    setattr(cfg, name, int(value))


def _check_float(cfg, name, low, optional=False):
    value = getattr(cfg, name)
    if optional and value is None:
        return
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(f) and f >= low):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    setattr(cfg, name, f)


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


def global_grad_norm(grads):
    """‖g‖ of every gradient concatenated, accumulated in float64 (no clipping)."""
    xp = backend.xp()
    return math.sqrt(sum(float(xp.sum(xp.square(g), dtype=xp.float64)) for g in grads.values()))


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


def frozen_copy(model):
    """A deep copy of a GPT's parameters in a new model with no gradient buffers: the frozen π_ref."""
    ref = GPT(model.config, dtype=model.dtype)
    for k, p in model.params.items():
        ref.params[k] = p.copy()
    return ref


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
        self.final_checkpoint = None
        self._epoch_batches = (None, None)

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
        saved data-loader state."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._epoch_batches[0] != epoch:
            order = list(batch_indices(len(self.train_features), self.args.per_device_train_batch_size,
                                       seed=[self.args.seed, epoch]))
            self._epoch_batches = (epoch, order)
        return self._epoch_batches[1][k]

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

    def _extra(self):
        return {"trainer": self.name, "args": self.args.to_dict(),
                "counters": self.state["counters"],
                "data": {"examples": len(self.train_features), "seed": self.args.seed,
                         "per_device_train_batch_size": self.args.per_device_train_batch_size}}

    def save(self, path):
        """An atomic checkpoint (parameters, tokenizer, AdamW state, step, trainer state) at ``path``."""
        return save_checkpoint(path, self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                               step=self.state["step"], extra=self._extra())

    def read_checkpoint(self, path):
        """``checkpoint.load_checkpoint``'s dict; the reward trainer reads its own format."""
        return load_checkpoint(path)

    def _restore(self, path):
        ckpt = self.read_checkpoint(path)
        if ckpt.get("optimizer_state") is None or ckpt.get("step") is None:
            raise ValueError(f"resume_from_checkpoint: {path} holds no optimizer state or step, "
                             f"so training cannot continue from it exactly")
        extra = ckpt.get("extra") or {}
        data = extra.get("data", {})
        mine = self._extra()["data"]
        for key, value in mine.items():
            if key in data and data[key] != value:
                raise ValueError(f"resume_from_checkpoint: the checkpoint was trained with {key}={data[key]!r}, "
                                 f"this trainer has {key}={value!r}; the data order would differ")
        src = ckpt["model"].params
        if src.keys() != self.model.params.keys():
            raise ValueError(f"resume_from_checkpoint: {path} holds other parameters than this model")
        for k, p in self.model.params.items():
            if p.shape != src[k].shape:
                raise ValueError(f"resume_from_checkpoint: parameter {k!r} has shape {src[k].shape} in "
                                 f"{path}, {p.shape} in the model")
            p[...] = backend.asarray(src[k], p.dtype)        # in place: the optimizer holds these arrays
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.state["step"] = int(ckpt["step"])
        self.state["counters"] = dict(extra.get("counters", {}))

    # -- the loop ---------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None):
        """Run the loop to ``total_steps``; returns ``{"global_step", "training_loss", "metrics"}``.

        ``resume_from_checkpoint``: a checkpoint directory written by this kind of trainer; its
        parameters, AdamW state and step are restored and the run continues as if never stopped
        (metrics.jsonl keeps only the rows up to that step, then continues). Every per-step number
        repeats exactly; a logged row whose ``logging_steps`` window the resume cut in two averages
        only the steps after it, so save on multiples of ``logging_steps`` for identical logs.
        """
        args = self.args
        if not self.train_features:
            raise ValueError("train_dataset is empty: nothing to train on")
        os.makedirs(args.output_dir, exist_ok=True)
        if resume_from_checkpoint is not None:
            self.check_resume()
            self._restore(resume_from_checkpoint)
            rows = read_metrics(self.metrics_path) if os.path.exists(self.metrics_path) else []
            rows = [r for r in rows if r.get("step", 0) <= self.state["step"]]
            _rewrite_jsonl(self.metrics_path, rows)
            self.state["log_history"] = rows
        else:
            _rewrite_jsonl(self.metrics_path, [])
        total, start = self.total_steps, self.state["step"]
        last_checkpoint = resume_from_checkpoint
        window, losses = [], []
        steps = range(start, total)
        bar = progress(steps, desc=self.name) if args.show_progress else steps
        for step in bar:
            self.model.zero_grad()
            metrics = self.training_step(self.batch_for_step(step))
            loss = metrics["loss"]
            grads = self.model.grads
            if args.max_grad_norm:
                grad_norm = clip_grad_norm(grads, args.max_grad_norm, error_if_nonfinite=False)
            else:
                grad_norm = global_grad_norm(grads)
            if not (_finite(loss) and _finite(grad_norm)):
                what = f"loss is {loss}" if not _finite(loss) else f"gradient norm is {grad_norm}"
                where = (f"the last checkpoint, {last_checkpoint}, is untouched" if last_checkpoint
                         else "no checkpoint was written")
                raise NonFiniteLossError(f"step {step + 1}: the {what}; training stopped before the update "
                                         f"({where})")
            lr = learning_rate_at(step, args, total)
            self.optimizer.step(grads, lr=lr)
            self.state["step"] = step + 1
            self.on_step_end()
            losses.append(loss)
            window.append({**metrics, "lr": lr, "grad_norm": grad_norm})
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=loss)
            done = step + 1
            if done % args.logging_steps == 0 or done == total:
                self.log(_mean_metrics(window, self.cumulative_metrics))
                window = []
            if args.eval_steps and done % args.eval_steps == 0:
                self.log(self.evaluate())
            if args.save_steps and done % args.save_steps == 0:
                last_checkpoint = self.save(os.path.join(args.output_dir, f"checkpoint-{done}"))
        if args.save_at_end:
            self.final_checkpoint = self.save(os.path.join(args.output_dir, FINAL_DIR))
        train_rows = [r for r in self.state["log_history"] if "loss" in r]
        return {"global_step": self.state["step"],
                "training_loss": float(np.mean(losses)) if losses else float("nan"),
                "metrics": train_rows[-1] if train_rows else {}}
