"""``DPOConfig`` and ``DPOTrainer``: the notes' training snippet, runnable as written.

    dpo_trainer = DPOTrainer(model, model_ref, args=training_args, beta=0.1,
                             train_dataset=train_dataset, tokenizer=tokenizer)
    dpo_trainer.train()

One DPO step, across the seam between the hand-written model and the autograd:

    logits  = π_θ.forward(x ⊕ y_w rows, then x ⊕ y_l rows)          (2B, T, V), ONE forward
    logps   = batch_logps_forward(logits, labels)                      (2B,)  log π_θ(y|x), summed
    ref     = the same under π_ref with cache=False (no graph), or precomputed once
    L       = mean dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:])    autograd (losses.py)
    L.backward()  ->  dL/dlogps  ->  batch_logps_backward  ->  dL/dlogits  ->  π_θ.backward

The variants (``variants.py``) plug in at two named places and nowhere else: how log π(y|x) is
read off the logits (the per-token mean TRL gives IPO, LD-DPO's length weighting) and what the loss needs
beyond the four log-probabilities (BCO's reward shift, RPO's lengths, WPO's pair weights).
TR-DPO's reference drift runs after each optimizer update.

The logged metrics carry the standard names: loss, rewards/chosen, rewards/rejected,
rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, logits/chosen,
logits/rejected (plus lr, grad_norm, step, epoch; ``eval/...`` from ``evaluate``), where a
reward is the implicit r̂(x, y) = β (log π_θ(y|x) − log π_ref(y|x)) of the DPO paper, eq. 5.
"""

import math
from dataclasses import dataclass

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, logprobs, variants
from dpo_np.data import collate_preferences
from dpo_np.losses import REFERENCE_FREE_LOSS_TYPES, dpo_loss, implicit_rewards
from dpo_np.training import (Trainer, TrainingConfig, check_model_fits, fingerprint, pair_metrics, reference_model,
                             resolve_config, resolve_tokenizer)

AVERAGED_LOSSES = ("ipo", "sigmoid_norm", "simpo", "orpo")   # these read per-token mean log-probs


# ---- configuration ------------------------------------------------------------------------

@dataclass
class DPOConfig(TrainingConfig):
    """Training arguments plus the DPO knobs, under TRL's names.

    beta: β of L_DPO (the notes: "typically something in the range of 0.1 to 0.5").
    loss_type: a name of ``losses.LOSS_TYPES`` or a list of them (weighted by ``loss_weights``).
    label_smoothing, reference_free, f_divergence_type, f_alpha_divergence_coef, discopop_tau, simpo_gamma:
        passed to ``losses.dpo_loss``.
    SimPO is ``loss_type="simpo"`` (β and γ = ``simpo_gamma`` as in the standard CPOConfig; CPO-SimPO,
        that config's ``cpo_alpha`` > 0, is ``loss_type=["simpo", "sft"], loss_weights=[1, cpo_alpha]``);
        ORPO is ``loss_type="orpo"`` with β as ORPO's λ (the standard ORPOConfig's ``beta``). Neither
        reads a reference model, so a config of only these (and "sft") is ``reference_free``: no π_ref is
        kept or run, and the logged rewards are β log π_θ of the averaged log-probabilities, as those
        trainers log them.
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
    simpo_gamma: float = 0.5
    precompute_ref_log_probs: bool = False
    ld_alpha: float = None
    use_weighting: bool = False
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512

    def __post_init__(self):
        super().__post_init__()
        for name in ("reference_free", "precompute_ref_log_probs", "use_weighting", "sync_ref_model"):
            checks.flag(getattr(self, name), name)
        if not isinstance(self.loss_type, str):
            try:
                self.loss_type = list(self.loss_type)
            except TypeError:
                raise TypeError(f"loss_type must be a name or a list of names, got {self.loss_type!r}") from None
        kinds = set(self.loss_kinds) if all(isinstance(k, str) for k in self.loss_kinds) else set()
        if kinds & set(REFERENCE_FREE_LOSS_TYPES) and kinds <= {*REFERENCE_FREE_LOSS_TYPES, "sft"}:
            self.reference_free = True                 # SimPO and ORPO have no reference model
        # the loss function is the authority on its own arguments: one dry call validates them all
        one = np.full(1, -1.0)           # a valid log-probability for every loss (ORPO needs < 0)
        try:
            dpo_loss(one, one, one, one, beta=self.beta, loss_type=self.loss_type,
                     label_smoothing=self.label_smoothing, loss_weights=self.loss_weights,
                     f_divergence_type=self.f_divergence_type,
                     f_alpha_divergence_coef=self.f_alpha_divergence_coef, discopop_tau=self.discopop_tau,
                     simpo_gamma=self.simpo_gamma)
        except (TypeError, ValueError) as err:
            raise type(err)(f"DPOConfig: {err}") from None
        self.beta = float(self.beta)
        if self.loss_weights is not None:
            self.loss_weights = [float(w) for w in np.atleast_1d(self.loss_weights)]
        self.ld_alpha = checks.number(self.ld_alpha, "ld_alpha", 0.0, 1.0, optional=True)
        self.ref_model_mixup_alpha = checks.number(self.ref_model_mixup_alpha, "ref_model_mixup_alpha", 0.0, 1.0)
        self.ref_model_sync_steps = checks.integer(self.ref_model_sync_steps, "ref_model_sync_steps", low=1)
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
        """Length-normalised DPO compares per-token mean log-probs, and so does IPO as TRL runs it
        (TRL's convention; the IPO paper, Azar et al. 2023, writes whole-response log-probs)."""
        return any(k in AVERAGED_LOSSES for k in self.loss_kinds)


# ---- the trainer --------------------------------------------------------------------------

class DPOTrainer(Trainer):
    """Direct Preference Optimization of ``model`` (π_θ) against ``ref_model`` (π_ref).

    ``DPOTrainer(model, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
    tokenizer=None, **overrides)``: ``overrides`` set fields of ``args`` (``beta=0.1`` in the
    notes' snippet). Datasets are lists of ``{"prompt", "chosen", "rejected"}`` records (or a
    JSONL path), checked by ``data.load_preferences``. ``ref_model=None`` makes π_ref a frozen
    copy of the initial policy. ``tokenizer`` is required (``ByteTokenizer`` for any text,
    ``BPETokenizer`` for a GPT-2, ``CharTokenizer`` for a known alphabet); TRL's newer name for it,
    ``processing_class``, is accepted too.
    """

    name = "dpo"
    data_kind = "preference"

    def __init__(self, model, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
                 tokenizer=None, processing_class=None, **overrides):
        args = resolve_config(DPOConfig, args, overrides)
        tokenizer = resolve_tokenizer(tokenizer, processing_class)
        check_model_fits(model, "model", args, tokenizer)
        checks.beta(args.beta, "beta", model.dtype)           # β·h in the model's dtype, before the first step
        super().__init__(model, args, tokenizer)
        self.ref_model = None if args.reference_free else reference_model(model, ref_model, args, tokenizer)
        self.train_features = self.tokenize(train_dataset, split="train")
        self.eval_features = self.tokenize(eval_dataset, split="eval")
        self._ref_table = {}        # precomputed log π_ref per split: (chosen (n,), rejected (n,))
        self._measured = {}         # features of datasets measured with ``measure``, by name
        if "bco_pair" in args.loss_kinds:
            self.state["counters"] = {"bco_mean": 0.0, "bco_count": 0}

    def _features(self, split):
        return {"train": self.train_features, "eval": self.eval_features}.get(split) or self._measured[split]

    def measure(self, records, split="measured"):
        """``batch_outputs`` of every pair of ``records`` (any preference dataset: a held-out split,
        a user's file), scored as training scores them; a list of per-chunk outputs."""
        self._measured[split] = self.tokenize(records, drop=False)    # every record scored, in order
        self._ref_table.pop(split, None)
        return [self.batch_outputs(idx, split) for idx in self.eval_chunks(len(self._measured[split]))]

    # -- one batch --------------------------------------------------------------------------

    def batch_outputs(self, idx, split="train", backward=False, policy_weights=None):
        """The DPO loss of the pairs ``idx`` of ``split``, and everything logged about them.

        ``backward=True`` also accumulates dL/dθ into ``model.grads`` through the seam, and is a
        training step for the variants with state (BCO's running mean moves only then).
        ``policy_weights`` (B,) fixes WPO's weights instead of computing them from the policy (a
        gradient check holds them constant, as the training step does). Returns a dict: loss
        (float; nan, before any backward, when the logits or log-probabilities are not finite),
        per-pair losses, chosen/rejected rewards and log-probs, policy_weights, and the
        response-logit sums and counts of the chosen and rejected rows.
        """
        B = len(idx)
        batch = collate_preferences([self._features(split)[int(i)] for i in idx], self.tokenizer.pad_token_id)
        logits = self.model.forward(batch["input_ids"], batch["attention_mask"], cache=backward)  # (2B, T, V)
        if not bool(backend.xp().isfinite(logits).all()):
            return {"loss": float("nan")}                  # a diverged policy: the loop stops cleanly
        logps, cache = self.sequence_logps(logits, batch["labels"])                # (2B,) log π_θ(y|x)
        if not bool(backend.xp().isfinite(logps).all()):
            return {"loss": float("nan")}
        ref_chosen, ref_rejected = self.reference_logps(split, idx, batch)          # log π_ref, constants
        pi = ag.Tensor(logps, requires_grad=backward)
        options, weights = self.variant_inputs(logps, ref_chosen, ref_rejected, batch["labels"], logits,
                                               training=backward and split == "train", weights=policy_weights)
        losses, chosen_rewards, rejected_rewards = dpo_loss(pi[:B], pi[B:], ref_chosen, ref_rejected, **options)
        if weights is not None:
            losses = losses * weights
        loss = losses.mean()
        if backward:
            loss.backward()                                                            # dL/dlogps
            self.model.backward(variants.sequence_logps_backward(pi.grad, cache))      # → dL/dlogits → dL/dθ
        logit_sums, logit_counts = response_logit_sums(logits, batch["labels"])
        numbers = backend.xp().stack([loss.data, logit_sums[:B].sum(), logit_counts[:B].sum(),
                                      logit_sums[B:].sum(), logit_counts[B:].sum()])
        loss_value, chosen_sum, chosen_count, rejected_sum, rejected_count = \
            backend.to_numpy(numbers).tolist()                                         # one host transfer
        return {"loss": loss_value, "losses": losses.data,
                "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
                "chosen_logps": logps[:B], "rejected_logps": logps[B:], "policy_weights": weights,
                "chosen_logit_sum": chosen_sum, "chosen_logit_count": int(chosen_count),
                "rejected_logit_sum": rejected_sum, "rejected_logit_count": int(rejected_count)}

    def sequence_logps(self, logits, labels):
        """log π(y|x) of each row and the cache of its backward: the notes' ``get_batch_logps``
        (summed; the per-token mean for IPO; LD-DPO's weighting with ``ld_alpha``)."""
        return variants.sequence_logps_forward(logits, labels, self.args.average_log_prob, self.args.ld_alpha)

    def variant_inputs(self, logps, ref_chosen, ref_rejected, labels, logits, training, weights=None):
        """What the loss needs beyond the four log-probabilities: ``dpo_loss``'s settings with the
        variants' per-batch inputs, and WPO's pair weights (or None)."""
        a = self.args
        B = len(logps) // 2
        options = dict(beta=a.beta, loss_type=a.loss_type, label_smoothing=a.label_smoothing,
                       reference_free=a.reference_free, loss_weights=a.loss_weights,
                       f_divergence_type=a.f_divergence_type, f_alpha_divergence_coef=a.f_alpha_divergence_coef,
                       discopop_tau=a.discopop_tau, simpo_gamma=a.simpo_gamma)
        if "bco_pair" in a.loss_kinds:
            c = self.state["counters"]
            if training:       # BCO's δ includes this batch's rewards before its loss is computed
                refs = (logps[:B] * 0, logps[B:] * 0) if ref_chosen is None else (ref_chosen, ref_rejected)
                rewards = [implicit_rewards(lp, ref, a.beta) for lp, ref in zip((logps[:B], logps[B:]), refs)]
                c["bco_mean"], c["bco_count"] = variants.update_running_mean(c["bco_mean"], c["bco_count"], *rewards)
            options["bco_delta"] = c["bco_mean"]
        if "sft" in a.loss_kinds and not a.average_log_prob:
            options["chosen_lengths"] = logprobs.response_mask(labels[:B]).sum(axis=1)     # RPO's |y_w|
        if a.use_weighting and weights is None:
            weights = variants.wpo_weights(logits, labels)
        return options, (None if weights is None else backend.asarray(weights, logps.dtype))

    # -- reference log-probs -----------------------------------------------------------------

    def _reference_logps_of_batch(self, batch):
        """log π_ref of the 2B rows, with no graph and no activation cache (π_ref is frozen)."""
        logits = self.ref_model.forward(batch["input_ids"], batch["attention_mask"], cache=False)
        return logprobs.batch_logps_forward(logits, batch["labels"], self.args.average_log_prob)[0]

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

    def reference_logps(self, split, idx, batch):
        """log π_ref(y_w|x), log π_ref(y_l|x) of the pairs ``idx``: (None, None) when reference-free."""
        if self.args.reference_free:
            return None, None
        if self.args.precompute_ref_log_probs:
            chosen, rejected = self.precompute_reference_logps(split)
            index = backend.asarray(np.asarray(idx, dtype=np.int64))
            return chosen[index], rejected[index]
        logps = self._reference_logps_of_batch(batch)
        return logps[:len(idx)], logps[len(idx):]

    # -- the loop's hooks ---------------------------------------------------------------------

    def training_step(self, idx):
        out = self.batch_outputs(idx, "train", backward=True)
        if not math.isfinite(out["loss"]):
            return {"loss": out["loss"]}
        return {"loss": out["loss"], **_summary([out])}

    def on_step_end(self):
        a = self.args
        if a.sync_ref_model and self.state["step"] % a.ref_model_sync_steps == 0:
            variants.sync_reference(self.ref_model.params, self.model.params, a.ref_model_mixup_alpha)

    def fingerprints(self):
        reference = {} if self.ref_model is None else {"reference model": fingerprint(self.ref_model.params)}
        return {**super().fingerprints(), **reference}

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
        pairs (not over batches), so the numbers do not depend on the eval batch size, except for
        "aot"/"aot_unpaired", whose sort couples the pairs of each batch of per_device_eval_batch_size."""
        if not self.eval_features:
            raise ValueError("evaluate() needs an eval_dataset")
        outs = [self.batch_outputs(idx, "eval") for idx in self.eval_chunks(len(self.eval_features))]
        if any(not math.isfinite(o["loss"]) for o in outs):
            return {"eval/loss": float("nan")}
        losses = backend.xp().concatenate([o["losses"] for o in outs])
        return {"eval/loss": float(backend.to_numpy(losses.mean())),
                **{"eval/" + k: v for k, v in _summary(outs).items()}}


# ---- metrics --------------------------------------------------------------------------------

def response_logit_sums(logits, labels):
    """Σ of the logits (over the vocabulary and the response positions) and the number of entries,
    per row: (sums (B',), counts (B',)); logits/chosen = Σ sums / Σ counts over the chosen rows."""
    xp = backend.xp()
    mask = logprobs.response_mask(labels)                                   # (B', T')
    per_position = xp.asarray(logits)[:, :-1, :].sum(axis=-1)               # (B', T')
    sums = xp.where(mask, per_position, 0.0).sum(axis=1)
    return sums, mask.sum(axis=1) * logits.shape[-1]


def _summary(outs):
    """The standard DPO metrics from one or more ``batch_outputs`` (per-pair means)."""
    xp = backend.xp()
    cat = lambda key: xp.concatenate([xp.asarray(o[key]) for o in outs])    # noqa: E731
    rewards = pair_metrics(cat("chosen_rewards"), cat("rejected_rewards"))
    metrics = {"rewards/chosen": rewards["chosen"], "rewards/rejected": rewards["rejected"],
               "rewards/accuracies": rewards["accuracy"], "rewards/margins": rewards["margin"]}
    logps = xp.stack([cat("chosen_logps").mean(), cat("rejected_logps").mean()])
    metrics["logps/chosen"], metrics["logps/rejected"] = backend.to_numpy(logps).tolist()   # one transfer
    for side in ("chosen", "rejected"):
        total = sum(o[f"{side}_logit_sum"] for o in outs)
        count = sum(o[f"{side}_logit_count"] for o in outs)
        metrics[f"logits/{side}"] = total / max(count, 1)
    return metrics
