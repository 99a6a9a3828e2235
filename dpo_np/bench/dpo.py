"""What a DPO step costs beyond supervised fine-tuning of the same sequences.

With log π_ref precomputed once (``precompute_ref_log_probs``), a DPO step on N pairs is ONE
forward and ONE backward of the policy over the 2N rows x ⊕ y_w, x ⊕ y_l (the DPO paper's
reference trainer: chosen and rejected in one concatenated batch), plus the loss on 2N numbers.
An SFT step on those same 2N sequences does the same forward and backward with a different loss
at the end, so the ratio of the two step times is the price of the DPO loss itself:

    ratio = t(DPO step, N pairs) / t(SFT step, the same 2N rows)      target <= 1.15

Both steps are the training loop's own step (``training.Trainer.update``): zero the gradients,
the trainer's ``training_step`` (collation, forward, loss, backward), gradient clipping and the
AdamW update, on one model with one optimizer configuration; the padded batches are checked to
be identical. Times are medians over ``repeats`` after ``warmup``, the two steps interleaved so
both see the same machine.

    python -m dpo_np bench dpo
"""

import statistics
import time

import numpy as np

from dpo_np import backend, checks
from dpo_np.data import collate_preferences, collate_sft
from dpo_np.experiments import toy_preferences
from dpo_np.model import GPT, GPTConfig
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.tokenizer import CharTokenizer
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.training import frozen_copy

TARGET_RATIO = 1.15


def toy_pairs(n_pairs, seed=0):
    """The first ``n_pairs`` train pairs of the toy preference data, and its character tokenizer."""
    checks.integer(n_pairs, "n_pairs", low=1)
    tokenizer = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    pairs = toy_preferences.preference_dataset(seed)["train"]
    if n_pairs > len(pairs):
        raise ValueError(f"n_pairs ({n_pairs}) is more than the {len(pairs)} toy train pairs")
    return pairs[:n_pairs], tokenizer


def _common(block_size):
    return dict(output_dir="runs/bench_dpo", max_length=block_size, max_prompt_length=min(64, block_size - 1),
                learning_rate=1e-4, show_progress=False, save_at_end=False, max_grad_norm=1.0)


def toy_dpo_trainer(n_pairs=16, n_layer=3, n_head=4, n_embd=96, block_size=160, seed=0,
                    precompute_ref_log_probs=True):
    """A ``DPOTrainer`` of a fresh GPT (π_ref its frozen copy) on ``toy_pairs(n_pairs)``, all of them
    in one batch: the DPO step the benchmarks time."""
    pairs, tokenizer = toy_pairs(n_pairs, seed)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=n_layer,
                       n_head=n_head, n_embd=n_embd)
    model = GPT(config, seed=seed)
    return DPOTrainer(model, frozen_copy(model), DPOConfig(per_device_train_batch_size=n_pairs,
                                                           precompute_ref_log_probs=precompute_ref_log_probs,
                                                           **_common(block_size)),
                      train_dataset=pairs, tokenizer=tokenizer)


def bench_dpo(n_pairs=16, n_layer=3, n_head=4, n_embd=96, block_size=160, repeats=15, warmup=3, seed=0,
              profile=False, verbose=True, print_fn=print):
    """Time one DPO step on ``n_pairs`` toy pairs and one SFT step on the same 2·n_pairs sequences.

    Returns ``{"dpo_step_s", "sft_step_s", "ratio", "target", "dpo_times", "sft_times",
    "batch_shape", "n_pairs", "config", "profile"}`` (median seconds; ``profile`` holds the
    cProfile text of a few DPO steps when ``profile=True``, else None).
    """
    for name, value, low in (("n_pairs", n_pairs, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        checks.integer(value, name, low=low)
    dpo = toy_dpo_trainer(n_pairs, n_layer, n_head, n_embd, block_size, seed)
    pairs, tokenizer = toy_pairs(n_pairs, seed)
    model, config = dpo.model, dpo.model.config
    # the same 2N sequences as SFT records: every x ⊕ y_w, then every x ⊕ y_l (the DPO row order)
    sequences = [{"prompt": r["prompt"], "response": r[side]} for side in ("chosen", "rejected") for r in pairs]
    sft = SFTTrainer(model, SFTConfig(per_device_train_batch_size=2 * n_pairs, **_common(block_size)),
                     train_dataset=sequences, tokenizer=tokenizer)
    dpo.precompute_reference_logps("train")          # once, outside the timed step (as train() does)
    dpo_idx, sft_idx = np.arange(n_pairs), np.arange(2 * n_pairs)
    a = collate_preferences([dpo.train_features[i] for i in dpo_idx], tokenizer.pad_token_id)
    b = collate_sft([sft.train_features[i] for i in sft_idx], tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "labels"):
        if not bool((a[key] == b[key]).all()):
            raise AssertionError(f"the DPO and SFT batches differ in {key}; the comparison would be unfair")

    def step(trainer, idx):
        t = time.perf_counter()
        trainer.update(idx, lr=trainer.args.learning_rate)          # the training loop's own step
        if backend.backend_name() == "cupy":
            backend.xp().cuda.Stream.null.synchronize()
        return time.perf_counter() - t

    for _ in range(warmup):
        step(dpo, dpo_idx)
        step(sft, sft_idx)
    dpo_times, sft_times = [], []
    for _ in range(repeats):
        dpo_times.append(step(dpo, dpo_idx))
        sft_times.append(step(sft, sft_idx))
    t_dpo, t_sft = statistics.median(dpo_times), statistics.median(sft_times)

    profile_text = None
    if profile:
        import cProfile
        import io
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(5):
            step(dpo, dpo_idx)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
        profile_text = s.getvalue()

    res = {"dpo_step_s": t_dpo, "sft_step_s": t_sft, "ratio": t_dpo / t_sft, "target": TARGET_RATIO,
           "dpo_times": dpo_times, "sft_times": sft_times, "batch_shape": tuple(int(n) for n in a["input_ids"].shape),
           "n_pairs": n_pairs, "config": config.to_dict(), "n_params": model.num_params(),
           "repeats": repeats, "profile": profile_text}
    if verbose:
        _report(res, print_fn)
    return res


def _report(r, print_fn):
    c = r["config"]
    B2, T = r["batch_shape"]
    print_fn(f"DPO step vs SFT step: GPT {c['n_layer']} layers × {c['n_embd']} channels ({r['n_params']:,} parameters), "
             f"{r['n_pairs']} pairs = {B2} sequences padded to T = {T}; median of {r['repeats']}")
    print_fn(f"  SFT step on the 2N sequences       {r['sft_step_s'] * 1e3:8.2f} ms")
    print_fn(f"  DPO step, log π_ref precomputed    {r['dpo_step_s'] * 1e3:8.2f} ms")
    verdict = "within" if r["ratio"] <= r["target"] else "ABOVE"
    print_fn(f"  ratio DPO / SFT                    {r['ratio']:8.3f}   ({verdict} the target {r['target']:.2f})")
    if r["profile"]:
        print_fn(r["profile"])
