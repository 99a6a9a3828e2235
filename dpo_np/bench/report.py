"""Every benchmark in one report, with the machine it ran on.

    python -m dpo_np bench all --json bench.json

- the model's training step at the toy shape and at GPT-2 small's (12 layers × 768 channels × 12
  heads, vocabulary 50,257; a reduced batch on a CPU, block 256 on a GPU), each against the
  matrix-multiply throughput the same array library reaches on the same shapes in the same run;
- a DPO step against an SFT step on the same sequences;
- the exact closed-form optimum over 262,144 responses;
- generation, with the key/value cache and without;
- where torch and transformers are installed, the toy forward+backward and a DPO step against
  PyTorch eager and ``torch.compile`` (``benchmarks/torch_peer.py``, run in a process of its own by
  ``peer``: the package never imports torch); without them the report says so under "torch".

``table.performance_table(report)`` turns the report into the README's table.

Each benchmark is timed in blocks of consecutive calls with the first of each block dropped (see
``model._median_of_block``), so one library's or one shape's warm-up never lands in another's.
"""

import sys

from dpo_np import backend
from dpo_np.bench import machine
from dpo_np.bench.closed_form import bench_closed_form
from dpo_np.bench.dpo import bench_dpo
from dpo_np.bench.generate import bench_generate
from dpo_np.bench.model import GPT2_SMALL_TARGET_RATIO, bench_model
from dpo_np.bench.peer import bench_torch

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)


def run_all(print_fn=print, quick=False):
    """Run every benchmark; returns ``{"machine", "model_toy", "model_gpt2_small", "dpo", "closed_form",
    "generate", "torch"}``; ``machine`` holds the load average before the first and after the last.
    ``quick`` shrinks every size (for a test of the report itself, not for numbers)."""
    gpu = backend.backend_name() == "cupy"
    small = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=50) if quick else GPT2_SMALL
    runs = [
        ("model_toy", lambda: bench_model(steps=2 if quick else 10, rounds=1 if quick else 5, print_fn=print_fn,
                                          **(dict(n_layer=1, n_embd=16, n_head=2, batch_size=2) if quick else {}))),
        ("model_gpt2_small", lambda: bench_model(block_size=256 if gpu else (16 if quick else 128),
                                                 batch_size=8 if gpu else (1 if quick else 2),
                                                 steps=2 if quick else 3, rounds=1 if quick else 3,
                                                 gemm_inner=2, print_fn=print_fn, target=GPT2_SMALL_TARGET_RATIO,
                                                 **small)),
        ("dpo", lambda: bench_dpo(**(dict(n_pairs=2, n_layer=1, n_head=2, n_embd=16, repeats=1, warmup=0)
                                     if quick else {}), print_fn=print_fn)),
        ("closed_form", lambda: bench_closed_form(**(dict(vocab_size=3, length=3, repeats=1) if quick else {}))),
        ("generate", lambda: bench_generate(**(dict(n_layer=1, n_embd=16, n_head=2, new_tokens=5) if quick else {}),
                                            print_fn=print_fn)),
        ("torch", lambda: bench_torch(quick=quick, print_fn=print_fn)),
    ]
    report = {"machine": machine.describe()}
    print_fn(f"machine: {machine.one_line(report['machine'])}")
    for k, (name, run) in enumerate(runs):
        print(f"bench all: {name} ({k + 1} of {len(runs)})", file=sys.stderr, flush=True)
        report[name] = run()
    report["machine"]["load_average_end"] = machine.load_average()
    return report
