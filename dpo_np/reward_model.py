"""The reward model of RLHF: r_φ(x, y), trained on preferences with the Bradley–Terry loss.

The notes ("Reward model by comparison", "The Bradley-Terry model") ask people to
compare two answers rather than score one, model the comparison as

    P(y_w ≻ y_l | x) = σ(r_φ(x, y_w) − r_φ(x, y_l))          (DPO paper eq. 1)

and fit r_φ by maximum likelihood:

    L_R(r_φ) = −E_(x, y_w, y_l) [ log σ(r_φ(x, y_w) − r_φ(x, y_l)) ]   (DPO paper eq. 2)

r_φ is the GPT body with a scalar head read at the last real token of x ⊕ y
(the standard choice: a causal model's last position has seen the whole text):

    h = body(x ⊕ y)                      (B, T, C), after the final LayerNorm
    r = h[b, last_b] · w + b₀            (B,)       w = score.weight (C,), b₀ = score.bias (1,)

The head's backward is written out below; the loss runs in the autograd
(``rlhf.bradley_terry_loss``) and hands dL/dr back, which the head turns into
dL/dh for the body's own ``backward_body``. DPO needs none of this — that is the
point of the notes — but it is what DPO replaces, so here it is, proven the same way.
"""

import math
from dataclasses import dataclass


from dpo_np import autograd as ag
from dpo_np import backend
from dpo_np.checkpoint import load_checkpoint, save_checkpoint
from dpo_np.data import collate_preferences
from dpo_np.model import GPT, GPTConfig, param_shapes
from dpo_np.rlhf import bradley_terry_loss
from dpo_np.training import (Trainer, TrainingConfig, check_model_fits, pair_metrics, resolve_config,
                             resolve_tokenizer)

HEAD = ("score.weight", "score.bias")


def last_token_index(attention_mask, B, T):
    """The position of each row's last real token (B,): right padding means Σ mask − 1."""
    xp = backend.xp()
    if attention_mask is None:
        return xp.full((B,), T - 1, dtype=xp.int64)
    last = xp.asarray(attention_mask).astype(bool).sum(axis=1) - 1
    if bool((last < 0).any()):
        raise ValueError("attention_mask has a row with no real token; a reward needs at least one")
    return last.astype(xp.int64)


def score_forward(h, last, w, b):
    """r_b = h[b, last_b] · w + b₀: the scalar head at each row's last real token. Returns (r (B,), cache)."""
    xp = backend.xp()
    rows = xp.arange(h.shape[0])
    h_last = h[rows, last]                       # (B, C)
    r = h_last @ w + b[0]                        # (B,)
    return r, (h.shape, rows, last, h_last, w)


# in the forward pass this was: r_b = h[b, last_b] · w + b₀
# dw = Σ_b dr_b h[b, last_b],  db₀ = Σ_b dr_b,  dh[b, last_b] = dr_b w and 0 at every other position
def score_backward(dr, cache):
    shape, rows, last, h_last, w = cache
    xp = backend.xp()
    dw = h_last.T @ dr                           # (C,)
    db = dr.sum(keepdims=True)                   # (1,)
    dh = xp.zeros(shape, dtype=h_last.dtype)     # (B, T, C)
    dh[rows, last] = dr[:, None] * w
    return dh, dw, db


class RewardModel:
    """r_φ(x, y): a GPT body (``forward_body``) and a scalar head ``score.weight`` (C,), ``score.bias`` (1,).

    ``RewardModel(config_or_gpt, seed=0, dtype=None)``: from a ``GPTConfig`` the body is drawn
    with GPT-2's initialisation from ``seed``; from a ``GPT`` (an SFT policy, say) the body is a
    copy of its parameters (the tied LM head is simply unused). The head is N(0, 0.02²), bias 0.

    ``params``/``grads`` are flat dicts of the body's names plus the head's, sharing the arrays
    the body uses, so ``AdamW(rm.params)`` and in-place updates reach the body.
    """

    def __init__(self, config_or_gpt, seed=0, dtype=None):
        if isinstance(config_or_gpt, GPT):
            src = config_or_gpt
            self.body = GPT(src.config, dtype=src.dtype if dtype is None else dtype)
            for k, p in src.params.items():
                self.body.params[k] = backend.asarray(p, self.body.dtype).copy()
        elif isinstance(config_or_gpt, GPTConfig):
            self.body = GPT(config_or_gpt, seed=seed, dtype=dtype)
        else:
            raise TypeError(f"config_or_gpt must be a GPTConfig or a GPT, got {type(config_or_gpt).__name__}")
        C = self.config.n_embd
        w = backend.rng([seed, 1]).normal(0.0, 0.02, size=C)      # its own stream: the body's draws stay put
        self.head = {"score.weight": backend.asarray(w, self.body.dtype),
                     "score.bias": backend.xp().zeros(1, dtype=self.body.dtype)}
        self.head_grads = None
        self._cache = None

    @staticmethod
    def param_shapes(config):
        """The GPT body's parameters and the scalar head's."""
        return {**param_shapes(config), "score.weight": (config.n_embd,), "score.bias": (1,)}

    config = property(lambda self: self.body.config)
    dtype = property(lambda self: self.body.dtype)

    @property
    def params(self):
        return {**self.body.params, **self.head}

    @property
    def grads(self):
        if self.body.grads is None or self.head_grads is None:
            self.zero_grad()
        return {**self.body.grads, **self.head_grads}

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def zero_grad(self):
        xp = backend.xp()
        self.body.zero_grad()
        self.head_grads = {k: xp.zeros_like(p) for k, p in self.head.items()}

    def forward(self, idx, attention_mask=None, cache=True):
        """r_φ(x, y) of each row of ``idx`` (B, T) at its last real token: (B,)."""
        h = self.body.forward_body(idx, attention_mask, cache=cache)          # (B, T, C)
        B, T, _ = h.shape
        last = last_token_index(attention_mask, B, T)
        r, c = score_forward(h, last, self.head["score.weight"], self.head["score.bias"])
        self._cache = c if cache else None
        return r

    __call__ = forward

    def backward(self, dr):
        """Accumulate dL/dφ into ``grads`` from dL/dr (B,) of the last cached ``forward``."""
        if self._cache is None:
            raise ValueError("backward needs the cache of a forward(idx, cache=True) first")
        dr = backend.xp().asarray(dr)
        if dr.shape != (self._cache[0][0],):
            raise ValueError(f"dr must have shape ({self._cache[0][0]},), got {dr.shape}")
        if self.head_grads is None or self.body.grads is None:
            self.zero_grad()
        dh, dw, db = score_backward(dr.astype(self.dtype, copy=False), self._cache)
        self.head_grads["score.weight"] += dw
        self.head_grads["score.bias"] += db
        self.body.backward_body(dh)


# ---- checkpoints: the GPT layout plus the head ----------------------------------------------

def load_reward_model(path):
    """Read a reward-model checkpoint written by ``RewardTrainer.save``: ``checkpoint.load_checkpoint``
    with the GPT's parameters plus ``score.*``. Returns its dict (model, tokenizer, optimizer_state, ...)."""
    return load_checkpoint(path, model_class=RewardModel)


# ---- training --------------------------------------------------------------------------------

@dataclass
class RewardConfig(TrainingConfig):
    """Training arguments for the Bradley–Terry reward model (``TrainingConfig``'s fields)."""
    output_dir: str = "runs/reward"
    learning_rate: float = 1e-3
    logging_steps: int = 1


class RewardTrainer(Trainer):
    """Fit r_φ to preference pairs by minimising L_R (DPO paper eq. 2) through the autograd.

    ``RewardTrainer(model, args=None, train_dataset=None, eval_dataset=None, tokenizer=None,
    **overrides)``; ``model`` a ``RewardModel``; ``processing_class`` is TRL's name for ``tokenizer``. Logs loss, accuracy (r(x, y_w) > r(x, y_l)),
    margin, rewards/chosen, rewards/rejected (plus lr, grad_norm); ``evaluate()`` the same on
    the held-out pairs under ``eval/``.
    """

    name = "reward"
    data_kind = "preference"

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, tokenizer=None,
                 processing_class=None, **overrides):
        args = resolve_config(RewardConfig, args, overrides)
        tokenizer = resolve_tokenizer(tokenizer, processing_class)
        if not isinstance(model, RewardModel):
            raise TypeError(f"model must be a RewardModel, got {type(model).__name__}")
        check_model_fits(model, "model", args, tokenizer)
        super().__init__(model, args, tokenizer)
        self.train_features = self.tokenize(train_dataset, split="train")
        self.eval_features = self.tokenize(eval_dataset, split="eval")

    def batch_outputs(self, features, idx, backward=False):
        """L_R of the pairs ``idx`` and the rewards (r_w, r_l); with ``backward`` dL/dφ is accumulated."""
        B = len(idx)
        batch = collate_preferences([features[int(i)] for i in idx], self.tokenizer.pad_token_id)
        r = self.model.forward(batch["input_ids"], batch["attention_mask"], cache=backward)   # (2B,)
        if not bool(backend.xp().isfinite(r).all()):
            return {"loss": float("nan")}
        rt = ag.Tensor(r, requires_grad=backward)
        loss = bradley_terry_loss(rt[:B], rt[B:])
        if backward:
            loss.backward()
            self.model.backward(rt.grad)
        return {"loss": float(backend.to_numpy(loss.data)), "chosen": r[:B], "rejected": r[B:]}

    def training_step(self, idx):
        out = self.batch_outputs(self.train_features, idx, backward=True)
        if not math.isfinite(out["loss"]):
            return {"loss": out["loss"]}
        return {"loss": out["loss"], **_reward_summary([out])}

    def evaluate(self):
        """Held-out pair accuracy (and loss, margin) over every eval pair: ``eval/accuracy`` etc."""
        if not self.eval_features:
            raise ValueError("evaluate() needs an eval_dataset")
        outs = [self.batch_outputs(self.eval_features, idx) for idx in self.eval_chunks(len(self.eval_features))]
        if any(not math.isfinite(o["loss"]) for o in outs):
            return {"eval/loss": float("nan")}
        xp = backend.xp()
        r_w = xp.concatenate([o["chosen"] for o in outs])
        r_l = xp.concatenate([o["rejected"] for o in outs])
        loss = float(backend.to_numpy(bradley_terry_loss(r_w, r_l)))
        return {"eval/loss": loss, **{"eval/" + k: v for k, v in _reward_summary(outs).items()}}

    def save(self, path):
        return save_checkpoint(path, self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                               step=self.state["step"], extra={**self._extra(), "model": "RewardModel"})

    def read_checkpoint(self, path):
        return load_reward_model(path)


def _reward_summary(outs):
    xp = backend.xp()
    m = pair_metrics(xp.concatenate([o["chosen"] for o in outs]), xp.concatenate([o["rejected"] for o in outs]))
    return {"accuracy": m["accuracy"], "margin": m["margin"],
            "rewards/chosen": m["chosen"], "rewards/rejected": m["rejected"]}
