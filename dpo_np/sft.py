"""Supervised fine-tuning: the model that becomes π_ref.

DPO starts from a supervised model (the DPO paper, §4: π_ref = π^SFT), trained
by maximum likelihood on prompt/response pairs. The loss is the mean negative
log-likelihood of the RESPONSE tokens only — the prompt x is given, not
predicted, so its positions carry label −100 and count nothing:

    L_SFT = −(1/N) Σ_{rows} Σ_{t ∈ response} log π_θ(y_t | x, y_<t),   N = response tokens in the batch

computed with the same hand-written log-prob pair as DPO (``logprobs.batch_logps_forward``:
the per-row sum of the notes' ``get_batch_logps``), whose backward hands dL/dlogits to the model.

"""

import math
from dataclasses import dataclass

from dpo_np import backend
from dpo_np import logprobs
from dpo_np.data import collate_sft
from dpo_np.training import Trainer, TrainingConfig, check_model_fits, resolve_config, resolve_tokenizer


@dataclass
class SFTConfig(TrainingConfig):
    """Training arguments for supervised fine-tuning (``TrainingConfig``'s fields)."""
    output_dir: str = "runs/sft"
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    per_device_train_batch_size: int = 16
    max_length: int = 160
    max_prompt_length: int = 64
    logging_steps: int = 10


def sft_loss_forward(logits, labels):
    """L_SFT and its cache: the mean NLL over every response token of the batch.

    Returns (loss (float), n_tokens, cache). Rows are summed by ``logprobs.batch_logps_forward``,
    then the batch total is divided by the number of response tokens N (a token-level mean, so a
    long response weighs in proportion to its tokens). A batch with no response token has loss 0.
    Non-finite logits (a diverged model) give loss = nan and no cache, which the training loop
    turns into its clean stop.
    """
    n = int(backend.to_numpy(logprobs.response_mask(labels).sum()))              # N
    if not bool(backend.xp().isfinite(logits).all()):
        return float("nan"), n, None
    logps, cache = logprobs.batch_logps_forward(logits, labels)                 # (B,)
    loss = -float(backend.to_numpy(logps.sum())) / max(n, 1)
    return loss, n, (cache, logps.shape[0], n, logits.dtype)


# the forward was L = −(1/N) Σ_b logps_b, so dL/dlogps_b = −1/N for every row
def sft_loss_backward(cache):
    """dL_SFT/dlogits (B, T, V), the backward of ``sft_loss_forward``."""
    logps_cache, B, n, dtype = cache
    dlogps = backend.xp().full((B,), -1.0 / max(n, 1), dtype=dtype)
    return logprobs.batch_logps_backward(dlogps, logps_cache)


class SFTTrainer(Trainer):
    """Maximum likelihood on ``{"prompt", "response"}`` records (a list or a JSONL path).

    ``SFTTrainer(model, args=None, train_dataset=None, eval_dataset=None, tokenizer=None, **overrides)``
    mirrors ``DPOTrainer`` (``processing_class`` is TRL's name for ``tokenizer``); ``overrides`` set
    fields of ``args``. Logs loss, lr, grad_norm and
    tokens (response tokens trained on so far) to ``output_dir/metrics.jsonl``.
    """

    name = "sft"
    cumulative_metrics = ("tokens",)

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, tokenizer=None,
                 processing_class=None, **overrides):
        args = resolve_config(SFTConfig, args, overrides)
        tokenizer = resolve_tokenizer(tokenizer, processing_class)
        check_model_fits(model, "model", args, tokenizer)
        super().__init__(model, args, tokenizer)
        self.train_features = self.tokenize(train_dataset, split="train")
        self.eval_features = self.tokenize(eval_dataset, split="eval")
        self.state["counters"] = {"tokens": 0}

    def _batch(self, features, idx):
        return collate_sft([features[int(i)] for i in idx], self.tokenizer.pad_token_id)

    def training_step(self, idx):
        batch = self._batch(self.train_features, idx)
        logits = self.model.forward(batch["input_ids"], batch["attention_mask"])       # (B, T, V)
        loss, n, cache = sft_loss_forward(logits, batch["labels"])
        if not math.isfinite(loss):
            return {"loss": loss}
        self.model.backward(sft_loss_backward(cache))
        self.state["counters"]["tokens"] += n
        return {"loss": loss, "tokens": self.state["counters"]["tokens"]}

    def evaluate(self):
        """``eval/loss``: the token-level mean NLL of every eval response (independent of batching)."""
        if not self.eval_features:
            raise ValueError("evaluate() needs an eval_dataset")
        total, count = 0.0, 0
        for idx in self.eval_chunks(len(self.eval_features)):
            batch = self._batch(self.eval_features, idx)
            logits = self.model.forward(batch["input_ids"], batch["attention_mask"], cache=False)
            loss, n, _ = sft_loss_forward(logits, batch["labels"])
            total, count = total + loss * n, count + n
        return {"eval/loss": total / max(count, 1), "eval/tokens": count}
