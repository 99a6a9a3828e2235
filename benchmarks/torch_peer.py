"""The same work in PyTorch, timed beside ours in one process: the peer behind the speed ratios.

    python -m dpo_np bench torch          # runs this file in a process of its own (dpo_np.bench.peer)
    python benchmarks/torch_peer.py --json torch.json [--quick]

This file lives beside the package, not in it: dpo_np never imports torch. It needs torch and
transformers; ``dpo_np.bench.peer`` says so and skips it without them.

The peer is Hugging Face's ``GPT2LMHeadModel`` holding our parameters (``pretrained.config_to_hf``,
GPT-2's names), so both sides compute the same logits, which is checked before any timing. Two
comparisons, each in rounds of blocks (one block per side per round, the order rotated from round
to round, the first call of each block dropped, see ``model._median_of_block``), reported as the
median of the per-round ratios ours / theirs with its spread:

- forward+backward of the toy model on the next-token loss (``model.next_token_step`` against
  ``F.cross_entropy`` and ``loss.backward()``), against PyTorch eager and ``torch.compile``;
- one DPO step, policy forward+backward and reference forward, on the toy preference pairs:
  ``DPOTrainer.batch_outputs(…, backward=True)`` (the trainer's own step, with the metrics it
  logs) against the same in PyTorch (sigmoid loss, the implicit rewards and the response-logit
  sums the trainer logs), eager.

PyTorch runs on as many threads as BLAS does here (the caller sets OPENBLAS_NUM_THREADS for this
process).
"""

import argparse
import statistics
import sys
import time

import numpy as np

from dpo_np import backend, memory
from dpo_np.bench import machine
from dpo_np.bench.dpo import toy_dpo_trainer
from dpo_np.bench.model import _median_of_block, next_token_step
from dpo_np.bench.peer import unavailable
from dpo_np.data import collate_preferences
from dpo_np.files import write_json_atomic
from dpo_np.model import GPT, GPTConfig
from dpo_np.pretrained import PREFIX, config_to_hf

TOY = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=96)    # bench model's default
SAME_LOGITS_ATOL = 1e-4                # float32 logits of the two implementations, O(1) in size


def hf_model(model):
    """transformers' GPT2LMHeadModel with ``model``'s parameters (float32, dropout 0, tied head)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    hf = GPT2LMHeadModel(GPT2Config(**config_to_hf(model.config)))
    state = {PREFIX + k: torch.from_numpy(np.array(backend.to_numpy(p), dtype=np.float32)) for k, p in model.params.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GPT2LMHeadModel's parameters differ from ours: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.float().train()


def bench_torch(rounds=5, steps=10, compile=True, n_pairs=16, toy=None, batch_size=32, dpo_model=None, seed=0,
                print_fn=print, progress_file=None):
    """Ours against PyTorch eager (and ``torch.compile``) on the toy forward+backward and a DPO step.

    Returns ``{"available": False, "reason"}`` without torch; else ``{"available": True, "torch",
    "transformers", "torch_threads", "cpu_capability", "fwd_bwd": {...}, "dpo_step": {...}}``, each
    comparison with the median seconds per side, the per-round ratios ours / theirs and their
    median, min and max.
    ``toy`` (GPTConfig fields; None: ``TOY``) and ``batch_size`` shape the forward+backward;
    ``dpo_model`` (n_layer, n_head, n_embd, block_size; None: the DPO benchmark's) the DPO step.
    """
    reason = unavailable()
    if reason:
        print_fn(f"bench torch: {reason}")
        return {"available": False, "reason": reason}
    import torch
    import transformers
    memory.keep_freed_memory()
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX2":
        # torch.compile picks its vector width from the CPU, not from ATEN_CPU_CAPABILITY: on an
        # AVX-512 CPU held to AVX2 (benchmarks/without_avx512.sh) its kernels crashed until held too
        import torch._inductor.config
        torch._inductor.config.cpp.simdlen = 256
    torch.manual_seed(seed)
    torch.set_num_threads(machine.blas_threads()["threads"])
    say = progress_file if progress_file is not None else sys.stderr
    res = {"available": True, "torch": torch.__version__, "transformers": transformers.__version__,
           "torch_threads": torch.get_num_threads(), "cpu_capability": capability,
           "memory": memory.status()}
    print(f"bench torch: forward+backward, {rounds} rounds", file=say, flush=True)
    res["fwd_bwd"] = _fwd_bwd(rounds, steps, compile, dict(TOY if toy is None else toy), batch_size, seed)
    print(f"bench torch: DPO step, {rounds} rounds", file=say, flush=True)
    res["dpo_step"] = _dpo_step(rounds, steps, n_pairs, dpo_model or {}, seed)
    _report(res, print_fn)
    return res


def _fwd_bwd(rounds, steps, compile, toy, batch_size, seed):
    import torch
    import torch.nn.functional as F
    model = GPT(GPTConfig(**toy), seed=seed, dtype=np.float32)
    V = model.config.vocab_size
    rng = np.random.default_rng(seed)          # the batch bench model draws
    idx = rng.integers(0, V, size=(batch_size, model.config.block_size))
    targets = rng.integers(0, V, size=(batch_size, model.config.block_size))
    hf = hf_model(model)
    t_idx, t_targets = torch.from_numpy(idx), torch.from_numpy(targets[:, 1:]).reshape(-1)

    def step(module):
        def run():
            hf.zero_grad(set_to_none=True)
            logits = module(input_ids=t_idx).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), t_targets)
            loss.backward()
            return loss.item()
        return run

    sides = {"ours": lambda: next_token_step(model, idx, targets), "eager": step(hf)}
    check = _same_numbers(model.forward(idx, cache=False), hf(input_ids=t_idx).logits)
    ours_loss, eager_loss = float(sides["ours"]()), float(sides["eager"]())
    out = {"shape": {**model.config.to_dict(), "batch_size": batch_size}, "max_abs_logit_diff": check,
           "loss_ours": ours_loss, "loss_torch": eager_loss}
    if compile:
        try:
            t = time.perf_counter()
            sides["compiled"] = step(torch.compile(hf))
            sides["compiled"]()
            sides["compiled"]()                      # the backward graph compiles on the first calls
            out["compile_s"] = time.perf_counter() - t
        except Exception as err:                     # no C++ compiler, an unsupported platform
            sides.pop("compiled", None)
            out["compiled_error"] = f"{type(err).__name__}: {err}".splitlines()[0]
    return {**out, **_rounds(sides, rounds, steps)}


def _dpo_step(rounds, steps, n_pairs, dpo_model, seed):
    import torch
    trainer = toy_dpo_trainer(n_pairs=n_pairs, seed=seed, precompute_ref_log_probs=False, **dpo_model)
    idx = np.arange(n_pairs)
    batch = collate_preferences([trainer.train_features[i] for i in idx], trainer.tokenizer.pad_token_id)
    policy, reference = hf_model(trainer.model), hf_model(trainer.ref_model)
    reference.eval()
    ids, mask, labels = (torch.from_numpy(np.asarray(batch[k])) for k in ("input_ids", "attention_mask", "labels"))

    def ours():
        trainer.model.zero_grad()
        return trainer.batch_outputs(idx, "train", backward=True)["loss"]

    def eager():
        policy.zero_grad(set_to_none=True)
        return _torch_dpo_step(policy, reference, ids, mask, labels, trainer.args.beta)

    real = np.asarray(batch["attention_mask"]).astype(bool)
    check = _same_numbers(trainer.model.forward(batch["input_ids"], batch["attention_mask"], cache=False)[real],
                          policy(input_ids=ids, attention_mask=mask).logits[torch.from_numpy(real)])
    out = {"shape": {**trainer.model.config.to_dict(), "pairs": n_pairs,
                     "batch": [int(n) for n in np.asarray(batch["input_ids"]).shape]},
           "max_abs_logit_diff": check, "loss_ours": float(ours()), "loss_torch": float(eager())}
    return {**out, **_rounds({"ours": ours, "eager": eager}, rounds, steps)}


def _torch_dpo_step(policy, reference, ids, mask, labels, beta):
    """The DPO step of ``DPOTrainer.batch_outputs`` in PyTorch: log π_θ and log π_ref of the 2B rows
    (summed response log-probs), the sigmoid loss, its backward, the rewards and logit sums logged."""
    import torch
    import torch.nn.functional as F

    def logps_of(logits):
        shifted = labels[:, 1:]
        keep = shifted != -100
        picked = torch.gather(logits[:, :-1].log_softmax(-1), 2, shifted.clamp(min=0)[..., None])[..., 0]
        return (picked * keep).sum(-1), keep

    B = ids.shape[0] // 2
    logits = policy(input_ids=ids, attention_mask=mask).logits
    logps, keep = logps_of(logits)
    with torch.no_grad():
        ref_logps, _ = logps_of(reference(input_ids=ids, attention_mask=mask).logits)
    margin = (logps[:B] - logps[B:]) - (ref_logps[:B] - ref_logps[B:])
    loss = -F.logsigmoid(beta * margin).mean()
    loss.backward()
    with torch.no_grad():
        rewards = beta * (logps - ref_logps)
        logit_sums = (logits[:, :-1].sum(-1) * keep).sum(-1)
        numbers = torch.stack([loss, rewards[:B].mean(), rewards[B:].mean(), logit_sums[:B].sum(), logit_sums[B:].sum()])
    return numbers.tolist()[0]


def _same_numbers(ours, theirs):
    """max |ours − theirs| of two logit arrays, refused above ``SAME_LOGITS_ATOL``: a peer that
    computed something else would make every ratio meaningless."""
    diff = float(np.abs(np.asarray(backend.to_numpy(ours)) - theirs.detach().numpy()).max())
    if not diff <= SAME_LOGITS_ATOL:
        raise RuntimeError(f"the PyTorch peer's logits differ from ours by {diff:.3g}: not the same model")
    return diff


def _rounds(sides, rounds, steps):
    """``rounds`` rounds of one block per side (order rotated), per-round ratios ours / each peer."""
    names = list(sides)
    times = {k: [] for k in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_median_of_block(sides[name], steps))
    out = {"rounds": rounds, "steps": steps, **{f"{k}_s": statistics.median(v) for k, v in times.items()},
           "times": times}
    for peer in names[1:]:
        ratios = [a / b for a, b in zip(times["ours"], times[peer])]
        out[f"ratio_{peer}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                "rounds": ratios}
    return out


def _report(r, print_fn):
    print_fn(f"Against PyTorch {r['torch']} (transformers {r['transformers']}, {r['torch_threads']} threads, "
             f"{r['cpu_capability']} kernels); "
             f"ratios are ours / theirs, median of per-round ratios (min–max); below 1 we are faster")
    for key, what in (("fwd_bwd", "toy forward+backward"), ("dpo_step", "DPO step (policy fwd+bwd, reference fwd)")):
        c = r[key]
        line = f"  {what:<42s} ours {c['ours_s'] * 1e3:8.2f} ms"
        for peer in ("eager", "compiled"):
            if f"{peer}_s" in c:
                q = c[f"ratio_{peer}"]
                line += (f"   {peer} {c[f'{peer}_s'] * 1e3:8.2f} ms: {q['median']:.2f}x "
                         f"({q['min']:.2f}–{q['max']:.2f})")
        print_fn(line)
        if "compiled_error" in c:
            print_fn(f"    torch.compile failed: {c['compiled_error']}")


#: the quick comparison ``bench all --quick`` asks for: a check of the report, not numbers
QUICK = dict(rounds=1, steps=1, compile=False, n_pairs=2, batch_size=2,
             toy=dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=50),
             dpo_model=dict(n_layer=1, n_head=2, n_embd=16))


def main(argv=None):
    """``bench_torch`` with its report written to ``--json``, for ``dpo_np.bench.peer``."""
    parser = argparse.ArgumentParser(description="The PyTorch peer of dpo_np's benchmarks.")
    parser.add_argument("--json", required=True, metavar="PATH", help="where the report goes")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a check of the report, not numbers")
    args = parser.parse_args(argv)
    write_json_atomic(args.json, bench_torch(**(QUICK if args.quick else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
