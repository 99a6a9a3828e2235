"""Supervised fine-tuning: the model that becomes π_ref.

DPO starts from a supervised model (the DPO paper, §4: π_ref = π^SFT), trained
by maximum likelihood on prompt/response pairs. The loss is the mean negative
log-likelihood of the RESPONSE tokens only — the prompt x is given, not
predicted, so its positions carry label −100 and count nothing:

    L_SFT = −(1/N) Σ_{rows} Σ_{t ∈ response} log π_θ(y_t | x, y_<t),   N = response tokens in the batch

computed with the same hand-written log-prob pair as DPO (``logprobs.batch_logps_forward``:
the per-row sum of the notes' ``get_batch_logps``), whose backward hands dL/dlogits to the model.

    python -m dpo_np sft      # run_sft(): the toy corpus, a small GPT, a checkpoint, greedy answers
"""

import math
import time
from dataclasses import dataclass

from dpo_np import backend
from dpo_np import logprobs
from dpo_np.data import collate_sft, format_prompt, load_sft, tokenize_sft
from dpo_np.training import Trainer, TrainingConfig, check_model_fits, resolve_config


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
    n = int(logprobs.response_mask(labels).sum())                                # N
    if not bool(backend.xp().isfinite(logits).all()):
        return float("nan"), n, None
    logps, cache = logprobs.batch_logps_forward(logits, labels)                 # (B,)
    loss = -float(logps.sum()) / max(n, 1)
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
    mirrors ``DPOTrainer``; ``overrides`` set fields of ``args``. Logs loss, lr, grad_norm and
    tokens (response tokens trained on so far) to ``output_dir/metrics.jsonl``.
    """

    name = "sft"
    cumulative_metrics = ("tokens",)

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, tokenizer=None, **overrides):
        args = resolve_config(SFTConfig, args, overrides)
        check_model_fits(model, "model", args, tokenizer)
        super().__init__(model, args, tokenizer)
        self.train_features = self._tokenize(train_dataset)
        self.eval_features = self._tokenize(eval_dataset)
        self.state["counters"] = {"tokens": 0}

    def _tokenize(self, dataset):
        if dataset is None:
            return []
        a = self.args
        return [tokenize_sft(self.tokenizer, r, a.max_length, a.max_prompt_length) for r in load_sft(dataset)]

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


def greedy_answer(model, tokenizer, prompt, max_new_tokens=None):
    """π_θ's greedy answer to ``prompt`` (formatted with ``data.format_prompt``), up to the end token.

    At most ``block_size − len(prompt)`` new tokens, so the context is never cropped.
    """
    from dpo_np.generate import generate
    ids = tokenizer.encode(format_prompt(prompt))
    room = model.config.block_size - len(ids)
    if room <= 0:
        raise ValueError(f"prompt is {len(ids)} tokens, no room left in block_size={model.config.block_size}")
    n = room if max_new_tokens is None else min(int(max_new_tokens), room)
    out = generate(model, ids, n, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[len(ids):])


def run_sft(output_dir="runs/sft", max_steps=2000, learning_rate=3e-3, batch_size=16, n_layer=3, n_head=4,
            n_embd=96, block_size=160, seed=0, data_seed=0, show_progress=True, print_fn=print):
    """Supervised fine-tuning of a small GPT on ``toydata.sft_corpus(data_seed)``; the command ``sft``.

    Builds the character tokenizer from ``toydata.vocabulary_text()``, trains for ``max_steps``
    (cosine schedule), saves the checkpoint ``output_dir/final`` (metrics in
    ``output_dir/metrics.jsonl``), then prints the greedy answers to the notes' three prompts.
    Returns ``{"model", "tokenizer", "trainer", "result", "answers", "checkpoint", "seconds"}``.
    """
    from dpo_np import toydata
    from dpo_np.model import GPT, GPTConfig
    from dpo_np.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.from_corpus(toydata.vocabulary_text())
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=n_layer,
                       n_head=n_head, n_embd=n_embd)
    model = GPT(config, seed=seed)
    corpus = toydata.sft_corpus(data_seed)
    args = SFTConfig(output_dir=output_dir, max_steps=max_steps, learning_rate=learning_rate,
                     per_device_train_batch_size=batch_size, max_length=block_size, seed=seed,
                     show_progress=show_progress)
    trainer = SFTTrainer(model, args, train_dataset=corpus, tokenizer=tokenizer)
    print_fn(f"sft: {len(corpus)} examples, GPT {n_layer} layers × {n_embd} channels "
             f"({model.num_params():,} parameters), {trainer.total_steps} steps")
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    print_fn(f"sft: final training loss {result['metrics'].get('loss', float('nan')):.4f} "
             f"in {seconds:.0f} s; checkpoint: {trainer.final_checkpoint}")
    answers = {}
    for prompt in toydata.NOTES_PROMPTS:
        answers[prompt] = greedy_answer(model, tokenizer, prompt)
        print_fn(f"  Q: {prompt}\n  A: {answers[prompt]}")
    return {"model": model, "tokenizer": tokenizer, "trainer": trainer, "result": result,
            "answers": answers, "checkpoint": trainer.final_checkpoint, "seconds": seconds}
