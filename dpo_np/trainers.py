"""``DPOConfig`` and ``DPOTrainer``: the notes' training snippet, runnable as written.

    dpo_trainer = DPOTrainer(model, model_ref, args=training_args, beta=0.1,
                             train_dataset=train_dataset, tokenizer=tokenizer)
    dpo_trainer.train()

One DPO step, across the seam between the hand-written model and the autograd:

    logits  = π_θ.forward(x ⊕ y_w rows, then x ⊕ y_l rows)          (2B, T, V), ONE forward
    logps   = sequence_logps_forward(logits, labels)                   (2B,)  log π_θ(y|x), summed
    ref     = the same under π_ref with cache=False (no graph), or precomputed once
    L       = mean dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:])    autograd (losses.py)
    L.backward()  ->  dL/dlogps  ->  sequence_logps_backward  ->  dL/dlogits  ->  π_θ.backward

Variants, each a few lines below: IPO and length-normalised DPO average the
token log-probs (``average_log_prob``); LD-DPO down-weights tokens past the
shorter response (``ld_alpha``); WPO weights each pair by how likely the policy
itself finds it (``use_weighting``); TR-DPO drifts the reference toward the
policy (``sync_ref_model``).

The logged metrics carry the standard names: loss, rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected, logits/chosen, logits/rejected (plus lr, grad_norm, step,
epoch; ``eval/...`` from ``evaluate``), where a reward is the implicit
r̂(x, y) = β (log π_θ(y|x) − log π_ref(y|x)) of the DPO paper, eq. 5.
"""

import math
from dataclasses import dataclass

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend
from dpo_np import logprobs
from dpo_np.data import LABEL_PAD_TOKEN_ID, collate_preferences, load_preferences, tokenize_preference
from dpo_np.losses import LOSS_TYPES, dpo_loss, update_running_mean
from dpo_np.training import Trainer, TrainingConfig, check_model_fits, frozen_copy, resolve_config

AVERAGED_LOSSES = ("ipo", "sigmoid_norm")   # these read per-token mean log-probs


# ---- configuration ------------------------------------------------------------------------

@dataclass
class DPOConfig(TrainingConfig):
    """Training arguments plus the DPO knobs, under TRL's names.

    beta: β of L_DPO (the notes: "typically something in the range of 0.1 to 0.5").
    loss_type: a name of ``losses.LOSS_TYPES`` or a list of them (weighted by ``loss_weights``).
    label_smoothing, reference_free, f_divergence_type, f_alpha_divergence_coef, discopop_tau:
        passed to ``losses.dpo_loss``.
    precompute_ref_log_probs: log π_ref of every train and eval pair computed once, before training.
    ld_alpha: LD-DPO's α in [0, 1] (None: off).
    use_weighting: WPO's per-pair weights.
    sync_ref_model, ref_model_mixup_alpha, ref_model_sync_steps: TR-DPO's soft reference update.
    """
    output_dir: str = "runs/dpo"
    learning_rate: float = 1e-3
    logging_steps: int = 1
    beta: float = 0.1
    loss_type: object = "sigmoid"
    loss_weights: object = None
    label_smoothing: float = 0.0
    reference_free: bool = False
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 1.0
    discopop_tau: float = 0.05
    precompute_ref_log_probs: bool = False
    ld_alpha: float = None
    use_weighting: bool = False
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512

    def __post_init__(self):
        super().__post_init__()
        for name in ("reference_free", "precompute_ref_log_probs", "use_weighting", "sync_ref_model"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.loss_type, str):
            try:
                self.loss_type = list(self.loss_type)
            except TypeError:
                raise ValueError(f"loss_type must be a name or a list of names, got {self.loss_type!r}") from None
        # the loss function is the authority on its own arguments: one dry call validates them all
        one = np.zeros(1)
        try:
            dpo_loss(one, one, one, one, beta=self.beta, loss_type=self.loss_type,
                     label_smoothing=self.label_smoothing, loss_weights=self.loss_weights,
                     f_divergence_type=self.f_divergence_type,
                     f_alpha_divergence_coef=self.f_alpha_divergence_coef, discopop_tau=self.discopop_tau)
        except (TypeError, ValueError) as err:
            raise ValueError(f"DPOConfig: {err}") from None
        self.beta = float(self.beta)
        if self.loss_weights is not None:
            self.loss_weights = [float(w) for w in np.atleast_1d(self.loss_weights)]
        if self.ld_alpha is not None:
            a = self.ld_alpha
            if isinstance(a, bool) or not isinstance(a, (int, float, np.floating)) or not 0.0 <= a <= 1.0:
                raise ValueError(f"ld_alpha must be None or a number in [0, 1], got {a!r}")
            self.ld_alpha = float(a)
        a = self.ref_model_mixup_alpha
        if isinstance(a, bool) or not isinstance(a, (int, float, np.floating)) or not 0.0 <= a <= 1.0:
            raise ValueError(f"ref_model_mixup_alpha must be a number in [0, 1], got {a!r}")
        if isinstance(self.ref_model_sync_steps, bool) or not isinstance(self.ref_model_sync_steps, int) \
                or self.ref_model_sync_steps < 1:
            raise ValueError(f"ref_model_sync_steps must be an int >= 1, got {self.ref_model_sync_steps!r}")
        if self.sync_ref_model and self.precompute_ref_log_probs:
            raise ValueError("sync_ref_model=True cannot be combined with precompute_ref_log_probs=True: "
                             "the reference moves during training, so its log-probs cannot be computed once")
        if self.sync_ref_model and self.reference_free:
            raise ValueError("sync_ref_model=True needs a reference model, but reference_free=True")

    @property
    def loss_kinds(self):
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)

    @property
    def average_log_prob(self):
        """IPO (Azar et al. 2023) and length-normalised DPO compare per-token mean log-probs."""
        return any(k in AVERAGED_LOSSES for k in self.loss_kinds)


assert set(AVERAGED_LOSSES) <= set(LOSS_TYPES)


# ---- log π(y|x) of the 2B rows: the model side of the seam --------------------------------

def ld_split_labels(labels, ld_alpha, label_pad_token_id=LABEL_PAD_TOKEN_ID):
    """LD-DPO's split of each response into its "public" part and the rest: two label arrays.

    Rows 0..B−1 are x ⊕ y_w, rows B..2B−1 are x ⊕ y_l (``collate_preferences``). For pair i the
    public length is ℓ_p = min(|y_w|, |y_l|) response tokens. ``front`` keeps the labels of the
    first ℓ_p response tokens of each row, ``rear`` those after (the others set to the pad id), so

        log π̂(y|x) = Σ_{t ≤ ℓ_p} log π(y_t|·) + α Σ_{t > ℓ_p} log π(y_t|·)
                   = logps(front) + α · logps(rear)

    (Liu et al. 2024, "LD-DPO: Length Desensitization in Direct Preference Optimization": the
    excess length of the longer response counts only with weight α, so the margin can no longer
    grow from length alone). As in the standard implementation, only π_θ's log-probs are
    re-weighted; log π_ref stays the plain sum.
    """
    xp = backend.xp()
    labels = xp.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (2B, T) (chosen rows, then rejected rows), "
                         f"got {tuple(labels.shape)}")
    if labels.shape[0] % 2:
        raise ValueError(f"labels has shape {tuple(labels.shape)}: LD-DPO pairs row i with row B + i, "
                         f"so the rows must be 2B (B chosen, then B rejected), an even number")
    is_response = labels != label_pad_token_id                         # (2B, T)
    position = xp.cumsum(is_response, axis=1)                          # 1-based response position
    n = is_response.sum(axis=1)                                        # (2B,) response lengths
    B = labels.shape[0] // 2
    public = xp.minimum(n[:B], n[B:])                                  # (B,) ℓ_p of each pair
    public = xp.concatenate([public, public])[:, None]                 # (2B, 1)
    front = xp.where(is_response & (position <= public), labels, label_pad_token_id)
    rear = xp.where(is_response & (position > public), labels, label_pad_token_id)
    return front, rear


def sequence_logps_forward(logits, labels, average_log_prob=False, ld_alpha=None):
    """log π(y|x) per row from logits (B', T, V) and labels (B', T): returns (logps (B',), cache).

    Without ``ld_alpha`` this is ``logprobs.batch_logps_forward`` (the notes' ``get_batch_logps``:
    a masked sum of next-token log-probs, or their mean). With it, LD-DPO's α-weighted sum
    ``logps(front) + α·logps(rear)`` (``ld_split_labels``), divided by the response length when
    ``average_log_prob``. Needs the pairs layout (chosen rows, then rejected rows) for ``ld_alpha``.
    """
    if ld_alpha is None:
        logps, cache = logprobs.batch_logps_forward(logits, labels, average_log_prob)
        return logps, ("plain", cache)
    front, rear = ld_split_labels(labels, ld_alpha)
    logps_front, cache_front = logprobs.batch_logps_forward(logits, front)
    logps_rear, cache_rear = logprobs.batch_logps_forward(logits, rear)
    # the mean divides by the whole response length |y|, front and rear together
    scale = logprobs.row_scale(logprobs.response_mask(labels), logits.dtype) if average_log_prob else 1.0
    logps = (logps_front + ld_alpha * logps_rear) * scale
    return logps, ("ld", cache_front, cache_rear, ld_alpha, scale)


# the forward was logps = s·(front + α·rear) with s = 1 or 1/|y|; both parts are plain masked sums,
# so the backward is each part's own backward at dL/dlogps·s and dL/dlogps·s·α, summed.
def sequence_logps_backward(dlogps, cache):
    """dL/dlogits (B', T, V) from dL/dlogps (B',), the backward of ``sequence_logps_forward``."""
    if cache[0] == "plain":
        return logprobs.batch_logps_backward(dlogps, cache[1])
    _, cache_front, cache_rear, ld_alpha, scale = cache
    d = backend.xp().asarray(dlogps) * scale
    dlogits = logprobs.batch_logps_backward(d, cache_front)
    dlogits += logprobs.batch_logps_backward(d * ld_alpha, cache_rear)
    return dlogits


def wpo_weights(logits, labels):
    """WPO's weight of each pair (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
    Optimization", eq. 2, with the standard implementation's normalisation), a constant (no
    gradient flows through it):

        w(x, y_w, y_l) = min(1, exp(ℓ̄(y_w) + ℓ̄(y_l))),
        ℓ̄(y) = (1/|y|) Σ_t [ log π_θ(y_t|x, y_<t) − log Σ_v π_θ(v|x, y_<t)² ]

    The second term is the log-probability of the policy's own sampling under its own
    distribution, so a pair the policy would write itself gets weight near 1 (on-policy), an
    unlikely one near 0. logits (2B, T, V) of the concatenated rows; returns (B,).
    """
    xp = backend.xp()
    per_token, mask = logprobs.get_per_token_logps(logits, labels)          # (2B, T')
    z = xp.asarray(logits)[:, :-1, :]                                       # (2B, T', V)
    # log Σ_v p_v² = log Σ_v e^{2z_v} − 2 log Σ_v e^{z_v}
    log_sum_p2 = logprobs.log_normaliser(2.0 * z) - 2.0 * logprobs.log_normaliser(z)    # (2B, T')
    mean_adjusted = (xp.where(mask, per_token - log_sum_p2, 0.0).sum(axis=1)
                     * logprobs.row_scale(mask, per_token.dtype))           # (2B,) ℓ̄(y)
    B = logits.shape[0] // 2
    return xp.minimum(1.0, xp.exp(mean_adjusted[:B] + mean_adjusted[B:])).astype(logits.dtype)


def response_logit_sums(logits, labels):
    """Σ of the logits (over the vocabulary and the response positions) and the number of entries,
    per row: (sums (B',), counts (B',)); logits/chosen = Σ sums / Σ counts over the chosen rows."""
    xp = backend.xp()
    mask = logprobs.response_mask(labels)                                   # (B', T')
    per_position = xp.asarray(logits)[:, :-1, :].sum(axis=-1)               # (B', T')
    sums = xp.where(mask, per_position, 0.0).sum(axis=1)
    return sums, mask.sum(axis=1) * logits.shape[-1]


def sync_reference(ref_params, policy_params, alpha):
    """TR-DPO's soft update of the reference (Gorbatovski et al. 2024, "Learn Your Reference
    Model for Real Good Alignment", soft update):  θ_ref ← α·θ + (1 − α)·θ_ref, in place.
    α = 1 is the hard update (the reference becomes the policy); α = 0 leaves it."""
    alpha = float(alpha)
    for k, p in ref_params.items():
        p *= 1.0 - alpha
        p += alpha * policy_params[k]


# ---- the trainer --------------------------------------------------------------------------

class DPOTrainer(Trainer):
    """Direct Preference Optimization of ``model`` (π_θ) against ``ref_model`` (π_ref).

    ``DPOTrainer(model, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
    tokenizer=None, **overrides)``: ``overrides`` set fields of ``args`` (``beta=0.1`` in the
    notes' snippet). Datasets are lists of ``{"prompt", "chosen", "rejected"}`` records (or a
    JSONL path), checked by ``data.load_preferences``. ``ref_model=None`` makes π_ref a frozen
    copy of the initial policy. ``tokenizer`` is required (``ByteTokenizer`` for any text,
    ``BPETokenizer`` for a GPT-2, ``CharTokenizer`` for a known alphabet).
    """

    name = "dpo"

    def __init__(self, model, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
                 tokenizer=None, **overrides):
        args = resolve_config(DPOConfig, args, overrides)
        check_model_fits(model, "model", args, tokenizer)
        super().__init__(model, args, tokenizer)
        if args.reference_free:
            self.ref_model = None
        elif ref_model is None:
            self.ref_model = frozen_copy(model)
        elif ref_model is model:
            raise ValueError("ref_model is the same object as model; pass a separate copy "
                             "(or ref_model=None for a frozen copy of the initial policy)")
        else:
            check_model_fits(ref_model, "ref_model", args, tokenizer)
            self.ref_model = ref_model
        self.train_features = self._tokenize(train_dataset)
        self.eval_features = self._tokenize(eval_dataset)
        self._ref_table = {}        # precomputed log π_ref per split: (chosen (n,), rejected (n,))
        if "bco_pair" in args.loss_kinds:
            self.state["counters"] = {"bco_mean": 0.0, "bco_count": 0}

    def _tokenize(self, dataset):
        if dataset is None:
            return []
        records = load_preferences(dataset)
        a = self.args
        return [tokenize_preference(self.tokenizer, r, a.max_length, a.max_prompt_length) for r in records]

    def _features(self, split):
        return self.train_features if split == "train" else self.eval_features

    # -- reference log-probs -----------------------------------------------------------------

    def _reference_logps_of_batch(self, batch):
        """log π_ref of the 2B rows, with no graph and no activation cache (π_ref is frozen)."""
        logits = self.ref_model.forward(batch["input_ids"], batch["attention_mask"], cache=False)
        logps, _ = sequence_logps_forward(logits, batch["labels"], self.args.average_log_prob)
        return logps

    def precompute_reference_logps(self, split):
        """log π_ref(y_w|x), log π_ref(y_l|x) of every pair of ``split`` ("train"/"eval"), once."""
        if split not in self._ref_table:
            feats = self._features(split)
            chosen, rejected = [], []
            for idx in self.eval_chunks(len(feats)):
                batch = collate_preferences([feats[i] for i in idx], self.tokenizer.pad_token_id)
                logps = self._reference_logps_of_batch(batch)
                chosen.append(logps[:len(idx)])
                rejected.append(logps[len(idx):])
            xp = backend.xp()
            self._ref_table[split] = (xp.concatenate(chosen), xp.concatenate(rejected))
        return self._ref_table[split]

    def _reference_logps(self, split, idx, batch):
        if self.args.reference_free:
            return None, None
        if self.args.precompute_ref_log_probs:
            chosen, rejected = self.precompute_reference_logps(split)
            index = backend.asarray(np.asarray(idx, dtype=np.int64))
            return chosen[index], rejected[index]
        logps = self._reference_logps_of_batch(batch)
        B = len(idx)
        return logps[:B], logps[B:]

    # -- one batch --------------------------------------------------------------------------

    def batch_outputs(self, idx, split="train", backward=False, policy_weights=None):
        """The DPO loss of the pairs ``idx`` of ``split``, and everything logged about them.

        ``backward=True`` also accumulates dL/dθ into ``model.grads`` through the seam.
        ``policy_weights`` (B,) fixes WPO's weights instead of computing them from the policy
        (a gradient check holds them constant, as the training step does).
        Returns a dict: loss (float), per-example arrays losses, chosen_rewards,
        rejected_rewards, chosen_logps, rejected_logps, policy_weights, and the response-logit
        sums/counts of the chosen and rejected rows. Non-finite logits or log-probabilities
        return loss = nan before the loss (and any backward) is computed. BCO's running mean δ
        moves only in a training step (``split="train"`` with ``backward=True``), so measuring a
        batch, evaluating or checking a gradient leaves it where the last step put it.
        """
        a = self.args
        xp = backend.xp()
        feats = self._features(split)
        B = len(idx)
        batch = collate_preferences([feats[int(i)] for i in idx], self.tokenizer.pad_token_id)
        labels = batch["labels"]
        logits = self.model.forward(batch["input_ids"], batch["attention_mask"], cache=backward)  # (2B, T, V)
        if not bool(xp.isfinite(logits).all()):
            # a diverged policy: the training loop turns a nan loss into its clean stop
            return {"loss": float("nan")}
        logps, cache = sequence_logps_forward(logits, labels, a.average_log_prob, a.ld_alpha)     # (2B,)
        if not bool(xp.isfinite(logps).all()):
            return {"loss": float("nan")}
        ref_chosen, ref_rejected = self._reference_logps(split, idx, batch)

        pi = ag.Tensor(logps, requires_grad=backward)
        policy_chosen, policy_rejected = pi[:B], pi[B:]
        bco_delta = 0.0
        if "bco_pair" in a.loss_kinds:
            c = self.state["counters"]
            if split == "train" and backward:
                ref_c = 0.0 if ref_chosen is None else ref_chosen
                ref_r = 0.0 if ref_rejected is None else ref_rejected
                c["bco_mean"], c["bco_count"] = update_running_mean(
                    c["bco_mean"], c["bco_count"], a.beta * (logps[:B] - ref_c), a.beta * (logps[B:] - ref_r))
            bco_delta = c["bco_mean"]
        chosen_lengths = None
        if "sft" in a.loss_kinds and not a.average_log_prob:
            chosen_lengths = logprobs.response_mask(labels[:B]).sum(axis=1)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=a.beta,
            loss_type=a.loss_type, label_smoothing=a.label_smoothing, reference_free=a.reference_free,
            loss_weights=a.loss_weights, f_divergence_type=a.f_divergence_type,
            f_alpha_divergence_coef=a.f_alpha_divergence_coef, bco_delta=bco_delta,
            discopop_tau=a.discopop_tau, chosen_lengths=chosen_lengths)
        if a.use_weighting:
            if policy_weights is None:
                policy_weights = wpo_weights(logits, labels)
            losses = losses * backend.asarray(policy_weights, logps.dtype)
        loss = losses.mean()
        if backward:
            loss.backward()
            self.model.backward(sequence_logps_backward(pi.grad, cache))

        logit_sums, logit_counts = response_logit_sums(logits, labels)
        return {"loss": float(loss.data), "losses": losses.data,
                "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
                "chosen_logps": logps[:B], "rejected_logps": logps[B:], "policy_weights": policy_weights,
                "chosen_logit_sum": float(logit_sums[:B].sum()), "chosen_logit_count": int(logit_counts[:B].sum()),
                "rejected_logit_sum": float(logit_sums[B:].sum()),
                "rejected_logit_count": int(logit_counts[B:].sum())}

    def training_step(self, idx):
        out = self.batch_outputs(idx, "train", backward=True)
        if not math.isfinite(out["loss"]):
            return {"loss": out["loss"]}
        return {"loss": out["loss"], **_summary([out])}

    def on_step_end(self):
        a = self.args
        if a.sync_ref_model and self.state["step"] % a.ref_model_sync_steps == 0:
            sync_reference(self.ref_model.params, self.model.params, a.ref_model_mixup_alpha)

    def check_resume(self):
        if self.args.sync_ref_model:
            raise ValueError("resume_from_checkpoint: a TR-DPO run (sync_ref_model=True) cannot be resumed "
                             "exactly, because its moving reference is not part of the checkpoint")

    def train(self, resume_from_checkpoint=None):
        if self.args.precompute_ref_log_probs and not self.args.reference_free:
            self.precompute_reference_logps("train")
            if self.eval_features:
                self.precompute_reference_logps("eval")
        return super().train(resume_from_checkpoint)

    def evaluate(self):
        """The metrics of every eval pair, under ``eval/``: per-pair quantities averaged over all
        pairs (not over batches), so the numbers do not depend on the eval batch size."""
        if not self.eval_features:
            raise ValueError("evaluate() needs an eval_dataset")
        outs = [self.batch_outputs(idx, "eval") for idx in self.eval_chunks(len(self.eval_features))]
        bad = [o for o in outs if not math.isfinite(o["loss"])]
        if bad:
            return {"eval/loss": float("nan")}
        xp = backend.xp()
        losses = xp.concatenate([o["losses"] for o in outs])
        return {"eval/loss": float(losses.mean()), **{"eval/" + k: v for k, v in _summary(outs).items()}}


def _summary(outs):
    """The standard DPO metrics from one or more ``batch_outputs`` (per-pair means)."""
    xp = backend.xp()
    cat = lambda key: xp.concatenate([xp.asarray(o[key]) for o in outs])    # noqa: E731
    cr, rr = cat("chosen_rewards"), cat("rejected_rewards")
    metrics = {"rewards/chosen": float(cr.mean()), "rewards/rejected": float(rr.mean()),
               "rewards/accuracies": float((cr > rr).mean()), "rewards/margins": float((cr - rr).mean()),
               "logps/chosen": float(cat("chosen_logps").mean()),
               "logps/rejected": float(cat("rejected_logps").mean())}
    for side in ("chosen", "rejected"):
        total = sum(o[f"{side}_logit_sum"] for o in outs)
        count = sum(o[f"{side}_logit_count"] for o in outs)
        metrics[f"logits/{side}"] = total / max(count, 1)
    return metrics
