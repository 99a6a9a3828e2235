"""How fast the model writes: tokens per second of sampling, with and without the key/value cache.

Generation feeds each new token back in (the notes' "iteratively generating the next token").
Without a cache every step recomputes the whole prefix; with one (``GPT.decode``) each step costs
one position. Both runs draw the same tokens from the same seed, which this checks.

    python -m dpo_np bench generate
"""

import time

import numpy as np

from dpo_np import backend
from dpo_np.generate import generate
from dpo_np.model import GPT, GPTConfig


class _WithoutCache:
    """The same model seen without ``decode``, so ``generate`` recomputes every prefix."""

    def __init__(self, model):
        self.config, self._model = model.config, model

    def forward(self, idx, attention_mask=None, cache=True):
        return self._model.forward(idx, attention_mask, cache=False)


def bench_generate(n_layer=3, n_head=4, n_embd=96, block_size=160, vocab_size=96, batch_size=8, prompt_length=20,
                   new_tokens=100, seed=0, verbose=True, print_fn=print):
    """Sample ``new_tokens`` after ``batch_size`` random prompts, with the cache and without; returns
    tokens/s of each (new tokens over the whole batch) and the speed-up."""
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd), seed=seed)
    prompts = np.random.default_rng(seed).integers(0, vocab_size, size=(batch_size, prompt_length))
    out, seconds = {}, {}
    for name, m in (("cached", model), ("uncached", _WithoutCache(model))):
        generate(m, prompts[:, :2], 2, seed=seed)                      # warm-up
        t0 = time.perf_counter()
        out[name] = generate(m, prompts, new_tokens, seed=seed)
        if backend.backend_name() == "cupy":
            backend.xp().cuda.Stream.null.synchronize()
        seconds[name] = time.perf_counter() - t0
    if out["cached"] != out["uncached"]:
        raise AssertionError("generation with the cache drew other tokens than without it")
    n = batch_size * new_tokens
    res = {"config": model.config.to_dict(), "batch_size": batch_size, "prompt_length": prompt_length,
           "new_tokens": new_tokens, "tokens_per_s": n / seconds["cached"],
           "tokens_per_s_without_cache": n / seconds["uncached"], "speedup": seconds["uncached"] / seconds["cached"]}
    if verbose:
        print_fn(f"generation: GPT {n_layer} layers × {n_embd}, {batch_size} prompts of {prompt_length} tokens, "
                 f"{new_tokens} new tokens each (sampled)")
        print_fn(f"  with the key/value cache {res['tokens_per_s']:10,.0f} tokens/s")
        print_fn(f"  recomputing each prefix  {res['tokens_per_s_without_cache']:10,.0f} tokens/s"
                 f"   (the cache is {res['speedup']:.1f}× faster; the same tokens)")
    return res
