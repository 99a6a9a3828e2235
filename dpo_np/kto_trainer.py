"""``KTOConfig`` and ``KTOTrainer``: KTO (Ethayarajh et al. 2024) on unpaired thumbs up and down.

A KTO dataset needs no pairs: each line is one response and whether it was good,

    {"prompt": "What is 2+2?", "completion": "4", "label": true}

(the layout of the standard KTO trainer). One step, across the same seam as the DPO step:

    logps    = log π_θ(y_i|x_i)                                  summed over the completion's tokens (B,)
    ref      = log π_ref(y_i|x_i)                                no graph
    z_ref    = max(0, mean_i [log π_θ(y'_i|x_i) − log π_ref(y'_i|x_i)])   the mismatched rows, no graph
    L        = mean_i kto_loss(logps, ref, label, z_ref)          ``successors.kto_loss``
    L.backward() → dL/dlogps → batch_logps_backward → π_θ.backward

The mismatched completion y'_i of row i is the completion of row i − 1 of the same batch (row 0 takes
the last one's), as the standard trainer pairs them, so z_ref estimates KL(π_θ ‖ π_ref) from
responses the policy did not write for those prompts; a batch needs at least two examples.

Logged: loss, kl (z_ref), rewards/chosen and rewards/rejected (the mean β(log π_θ − log π_ref) over
the desirable and the undesirable examples of the batch), rewards/margins (their difference, when a
batch holds both), logps/chosen, logps/rejected; ``eval/...`` from ``evaluate``.
"""

import math
from dataclasses import dataclass

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, logprobs
from dpo_np.data import collate_unpaired
from dpo_np.successors import kto_loss, kto_reference_point
from dpo_np.training import Trainer, TrainingConfig, check_model_fits, fingerprint, reference_model, resolve_config


@dataclass
class KTOConfig(TrainingConfig):
    """Training arguments plus KTO's knobs, under the standard KTOConfig's names.

    beta: β of the value function σ(β(ρ − z_ref)). desirable_weight, undesirable_weight: λ_D, λ_U
    (the paper balances them so that λ_D n_D / (λ_U n_U) lies in [1, 4/3]).
    per_device_train_batch_size (and the eval one) must be ≥ 2: z_ref needs mismatched rows.
    """
    output_dir: str = "runs/kto"
    learning_rate: float = 1e-3
    logging_steps: int = 1
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        self.beta = checks.positive(self.beta, "beta")
        self.desirable_weight = checks.positive(self.desirable_weight, "desirable_weight")
        self.undesirable_weight = checks.positive(self.undesirable_weight, "undesirable_weight")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2 for KTO: its reference point z_ref pairs each prompt "
                                 f"with another example's completion of the same batch")


class KTOTrainer(Trainer):
    """KTO of ``model`` (π_θ) against ``ref_model`` (π_ref; None: a frozen copy of the initial policy) on
    unpaired ``{"prompt", "completion", "label"}`` records (a list or a JSONL path, ``data.load_unpaired``)."""

    name = "kto"
    data_kind = "unpaired"

    def __init__(self, model, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
                 tokenizer=None, **overrides):
        args = resolve_config(KTOConfig, args, overrides)
        check_model_fits(model, "model", args, tokenizer)
        super().__init__(model, args, tokenizer)
        self.ref_model = reference_model(model, ref_model, args, tokenizer)
        self.train_features = self.tokenize(train_dataset)
        self.eval_features = self.tokenize(eval_dataset)

    def example_length(self, i):
        f = self.train_features[i]
        return len(f["prompt_ids"]) + len(f["completion_ids"])

    def batch_outputs(self, idx, split="train", backward=False, reference_point=None):
        """KTO's loss of the examples ``idx`` of ``split`` and what is logged about them; with
        ``backward``, dL/dθ accumulated into ``model.grads`` (z_ref held constant, as KTO defines it).
        ``reference_point`` fixes z_ref instead of estimating it (a gradient check holds it so). loss is
        nan (before any backward) when the policy's logits are not finite."""
        features = [(self.train_features if split == "train" else self.eval_features)[int(i)] for i in idx]
        if len(features) < 2:
            raise ValueError("a KTO batch needs at least 2 examples: z_ref pairs each prompt with another's completion")
        pad = self.tokenizer.pad_token_id
        batch = collate_unpaired(features, pad)
        shifted = collate_unpaired(features, pad, completions=np.roll(np.arange(len(features)), 1))
        # the mismatched rows first: a forward without cache would drop the one the backward needs
        mismatched = self._logps(self.model, shifted)
        if not bool(backend.xp().isfinite(mismatched).all()):
            return {"loss": float("nan")}
        z = kto_reference_point(mismatched, self._logps(self.ref_model, shifted)) if reference_point is None \
            else checks.number(reference_point, "reference_point")
        ref = self._logps(self.ref_model, batch)
        logits = self.model.forward(batch["input_ids"], batch["attention_mask"], cache=backward)   # (B, T, V)
        if not bool(backend.xp().isfinite(logits).all()):
            return {"loss": float("nan")}
        logps, cache = logprobs.batch_logps_forward(logits, batch["labels"])                    # (B,) summed
        good = np.array([f["label"] for f in features], dtype=bool)
        pi = ag.Tensor(logps, requires_grad=backward)
        a = self.args
        losses = kto_loss(pi, ref, good, z, beta=a.beta, desirable_weight=a.desirable_weight,
                          undesirable_weight=a.undesirable_weight)
        loss = losses.mean()
        if backward:
            loss.backward()
            self.model.backward(logprobs.batch_logps_backward(pi.grad, cache))
        rewards = a.beta * (backend.to_numpy(logps) - backend.to_numpy(ref))
        return {"loss": float(backend.to_numpy(loss.data)), "losses": losses.data, "kl": z, "rewards": rewards,
                "logps": backend.to_numpy(logps), "desirable": good}

    @staticmethod
    def _logps(model, batch):
        """log π(y|x) of each row under ``model``, with no graph and no activation cache."""
        logits = model.forward(batch["input_ids"], batch["attention_mask"], cache=False)
        return logprobs.batch_logps_forward(logits, batch["labels"])[0]

    def training_step(self, idx):
        out = self.batch_outputs(idx, "train", backward=True)
        return {"loss": out["loss"]} if not math.isfinite(out["loss"]) else {"loss": out["loss"], **_summary([out])}

    def evaluate(self):
        """``eval/`` metrics over every eval example (z_ref is estimated per eval batch of
        per_device_eval_batch_size; a last batch of one example joins the one before it)."""
        if not self.eval_features:
            raise ValueError("evaluate() needs an eval_dataset")
        chunks = self.eval_chunks(len(self.eval_features))
        if len(chunks) > 1 and len(chunks[-1]) < 2:
            chunks = chunks[:-2] + [np.concatenate(chunks[-2:])]
        outs = [self.batch_outputs(idx, "eval") for idx in chunks]
        if any(not math.isfinite(o["loss"]) for o in outs):
            return {"eval/loss": float("nan")}
        losses = np.concatenate([backend.to_numpy(o["losses"]) for o in outs])
        return {"eval/loss": float(losses.mean()), **{"eval/" + k: v for k, v in _summary(outs).items()}}

    def fingerprints(self):
        return {**super().fingerprints(), "reference model": fingerprint(self.ref_model.params)}


def _summary(outs):
    """kl (the mean z_ref of the batches) and the per-example means over the desirable and undesirable examples."""
    good = np.concatenate([o["desirable"] for o in outs])
    rewards, logps = np.concatenate([o["rewards"] for o in outs]), np.concatenate([o["logps"] for o in outs])
    metrics = {"kl": float(np.mean([o["kl"] for o in outs]))}
    for side, mask in (("chosen", good), ("rejected", ~good)):
        if mask.any():
            metrics[f"rewards/{side}"] = float(rewards[mask].mean())
            metrics[f"logps/{side}"] = float(logps[mask].mean())
    if good.any() and (~good).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics
