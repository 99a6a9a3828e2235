"""An outside reference: the same GPT-2 written independently in PyTorch, loading our parameters.

minGPT checks its model against Hugging Face's GPT-2; here PyTorch's own layers (layer_norm,
gelu(approximate="tanh"), masked softmax attention) and PyTorch's autograd stand in for that,
in float64, on a right-padded batch. Skipped when torch is not installed.
"""

import math

import numpy as np
import pytest

from dpo_np.gradcheck import relative_error
from dpo_np.model import GPT, GPTConfig

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_gpt_logits(p, cfg, idx, mask):
    """GPT-2 forward from a dict of torch tensors named as in a GPT-2 checkpoint (Conv1D: x @ W + b)."""
    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    hs = C // nh
    x = p["wte.weight"][idx] + p["wpe.weight"][:T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    keys = mask.bool()[:, None, None, :] | torch.eye(T, dtype=torch.bool)    # a query sees itself
    allowed = causal & keys                                                  # (B, 1, T, T)
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        a = F.layer_norm(x, (C,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps=1e-5)
        q, k, v = (a @ p[h + "attn.c_attn.weight"] + p[h + "attn.c_attn.bias"]).split(C, dim=-1)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))     # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~allowed, torch.finfo(att.dtype).min).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ p[h + "attn.c_proj.weight"] + p[h + "attn.c_proj.bias"]
        a = F.layer_norm(x, (C,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps=1e-5)
        a = F.gelu(a @ p[h + "mlp.c_fc.weight"] + p[h + "mlp.c_fc.bias"], approximate="tanh")
        x = x + a @ p[h + "mlp.c_proj.weight"] + p[h + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    return x @ p["wte.weight"].T


def test_logits_and_every_gradient_match_an_independent_pytorch_gpt2():
    cfg = GPTConfig(vocab_size=17, block_size=10, n_layer=2, n_head=4, n_embd=16)
    model = GPT(cfg, seed=3, dtype=np.float64)
    rng = np.random.default_rng(0)
    for k, v in model.params.items():        # generic biases and gains, not GPT-2's 0 and 1
        if v.ndim == 1:
            model.params[k] = v + 0.1 * rng.normal(size=v.shape)
    idx = rng.integers(0, cfg.vocab_size, size=(3, 10))
    mask = (np.arange(10)[None, :] < np.array([10, 6, 1])[:, None]).astype(np.int64)
    dlogits = rng.normal(size=(3, 10, cfg.vocab_size))

    logits = model.forward(idx, mask)
    model.zero_grad()
    model.backward(dlogits)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    t_logits = torch_gpt_logits(tp, cfg, torch.tensor(idx), torch.tensor(mask))
    t_logits.backward(torch.tensor(dlogits))

    real = mask.astype(bool)
    assert np.allclose(logits[real], t_logits.detach().numpy()[real], rtol=1e-12, atol=1e-12)
    assert np.allclose(logits, t_logits.detach().numpy(), rtol=1e-10, atol=1e-10)
    for k, t in tp.items():
        assert relative_error(model.grads[k], t.grad.numpy()) < 1e-10, k
