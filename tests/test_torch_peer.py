"""The PyTorch peer of the benchmarks computes what we compute, and its ratios are its own times'.

Timings are not asserted; the arithmetic of the report and the sameness of the two models are.
Skipped without torch and transformers (the benchmark then reports them as not measured).
"""

import importlib.util

import numpy as np
import pytest

from dpo_np.bench import peer
from dpo_np.model import GPT, GPTConfig

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

# the peer lives beside the package (benchmarks/), never in it: loaded by its path
_spec = importlib.util.spec_from_file_location("torch_peer", peer.SCRIPT)
torch_peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_peer)


def test_the_peer_holds_our_parameters_and_gives_our_logits_on_a_padded_batch():
    model = GPT(GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=16), seed=4)
    hf = torch_peer.hf_model(model)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 23, size=(3, 12))
    mask = (np.arange(12)[None, :] < np.array([12, 7, 2])[:, None]).astype(np.int64)
    ours = model.forward(idx, mask, cache=False)
    with torch.no_grad():
        theirs = hf(input_ids=torch.from_numpy(idx), attention_mask=torch.from_numpy(mask)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], rtol=0, atol=1e-5)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()      # tied, as ours


def test_the_quick_comparison_reports_its_own_times_and_the_same_losses():
    r = torch_peer.bench_torch(rounds=3, steps=1, compile=False, n_pairs=2, batch_size=2,
                               toy=dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=50),
                               dpo_model=dict(n_layer=1, n_head=2, n_embd=16), print_fn=lambda *a: None)
    assert r["available"] and r["torch_threads"] >= 1
    for key in ("fwd_bwd", "dpo_step"):
        c = r[key]
        ratios = [a / b for a, b in zip(c["times"]["ours"], c["times"]["eager"])]
        assert c["ratio_eager"]["rounds"] == pytest.approx(ratios)
        assert c["ratio_eager"]["min"] <= c["ratio_eager"]["median"] <= c["ratio_eager"]["max"]
        assert c["ours_s"] == pytest.approx(float(np.median(c["times"]["ours"])))
        assert c["loss_ours"] == pytest.approx(c["loss_torch"], rel=1e-5)
        assert c["max_abs_logit_diff"] <= torch_peer.SAME_LOGITS_ATOL
    assert r["dpo_step"]["loss_ours"] == pytest.approx(np.log(2.0), rel=1e-6)    # π_θ = π_ref at the start


def test_a_peer_with_other_logits_is_refused():
    with pytest.raises(RuntimeError, match="not the same model"):
        torch_peer._same_numbers(np.zeros(3, dtype=np.float32), torch.tensor([0.0, 0.0, 1.0]))


def test_bench_torch_runs_the_peer_in_a_process_of_its_own_and_reads_its_report():
    r = peer.bench_torch(quick=True, print_fn=lambda *a: None)
    assert r["available"] and set(r) >= {"torch", "transformers", "fwd_bwd", "dpo_step"}
    assert r["dpo_step"]["loss_ours"] == pytest.approx(np.log(2.0), rel=1e-6)
