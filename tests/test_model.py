"""Proofs for the hand-written GPT (dpo_np/model.py).

Every layer's backward is held against float64 central differences and against the same layer
written with the autograd's ops; the whole model's gradients against central differences on a
padded batch; padding against unpadded runs; and the tied embedding, the error messages and the
dtypes are pinned down. Every check projects on a RANDOM upstream gradient: with an all-ones one
the softmax backward is exactly zero and a check would pass while testing nothing.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np import autograd as ag
from dpo_np import model as M
from dpo_np.autograd import Tensor
from dpo_np.gradcheck import central_difference, relative_error
from dpo_np.model import GPT, GPTConfig

TINY = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _right_padded_mask(lengths, T):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)


def _numeric(forward, arrays, dout, i, coords=None):
    """∂ Σ(forward(*arrays) · dout) / ∂ arrays[i] by central differences (h = 1e-5)."""
    return central_difference(lambda a: float((forward(*a) * dout).sum()), list(arrays), i, 1e-5, coords)


# ----------------------------------------------------------------------------------------------
# each layer vs central differences (float64, random upstream gradient)

def test_layernorm_backward_matches_central_differences():
    r = _rng(1)
    x, w, b = r.normal(size=(2, 3, 6)) * 2 + 0.5, r.normal(size=6), r.normal(size=6)
    out, cache = M.layernorm_forward(x, w, b)
    dout = r.normal(size=out.shape)
    grads = M.layernorm_backward(dout, cache)
    fwd = lambda x, w, b: M.layernorm_forward(x, w, b)[0]
    for i, g in enumerate(grads):
        assert relative_error(g, _numeric(fwd, (x, w, b), dout, i)) < 1e-6


def test_linear_backward_matches_central_differences_for_any_leading_shape():
    r = _rng(2)
    x, w, b = r.normal(size=(2, 3, 5)), r.normal(size=(5, 4)), r.normal(size=4)
    out, cache = M.linear_forward(x, w, b)
    assert out.shape == (2, 3, 4)
    dout = r.normal(size=out.shape)
    grads = M.linear_backward(dout, cache)
    fwd = lambda x, w, b: M.linear_forward(x, w, b)[0]
    for i, g in enumerate(grads):
        assert g.shape == (x, w, b)[i].shape
        assert relative_error(g, _numeric(fwd, (x, w, b), dout, i)) < 1e-6


def test_gelu_backward_matches_central_differences():
    r = _rng(3)
    x = r.normal(size=(3, 7)) * 2.5            # spans the tanh's curved and saturated parts
    out, cache = M.gelu_forward(x)
    dout = r.normal(size=out.shape)
    dx = M.gelu_backward(dout, cache)
    assert relative_error(dx, _numeric(lambda x: M.gelu_forward(x)[0], (x,), dout, 0)) < 1e-6


@pytest.mark.parametrize("lengths", [None, (5, 3, 1, 0)], ids=["causal", "causal+padding"])
def test_attention_backward_matches_central_differences(lengths):
    r = _rng(4)
    B, T, C, nh = 4, 5, 8, 2
    mask = None if lengths is None else _right_padded_mask(lengths, T)
    qkv = r.normal(size=(B, T, 3 * C))
    out, cache = M.attention_forward(qkv, nh, mask)
    dout = r.normal(size=out.shape)
    dqkv = M.attention_backward(dout, cache)
    num = _numeric(lambda a: M.attention_forward(a, nh, mask)[0], (qkv,), dout, 0)
    assert relative_error(dqkv, num) < 1e-6
    assert np.all(np.isfinite(out))            # a fully padded row (length 0) still attends to itself


def test_embedding_backward_matches_central_differences_with_repeated_tokens():
    r = _rng(5)
    V, Tmax, C = 6, 7, 4
    idx = np.array([[1, 1, 3, 0], [3, 5, 1, 1]])    # token 1 four times: its gradients must add up
    wte, wpe = r.normal(size=(V, C)), r.normal(size=(Tmax, C))
    out, cache = M.embedding_forward(idx, wte, wpe)
    dout = r.normal(size=out.shape)
    dwte, dwpe = M.embedding_backward(dout, cache)
    fwd = lambda wte, wpe: M.embedding_forward(idx, wte, wpe)[0]
    assert relative_error(dwte, _numeric(fwd, (wte, wpe), dout, 0)) < 1e-6
    assert relative_error(dwpe, _numeric(fwd, (wte, wpe), dout, 1)[:4]) < 1e-6


def test_lm_head_backward_matches_central_differences():
    r = _rng(6)
    h, wte = r.normal(size=(2, 3, 4)), r.normal(size=(5, 4))
    out, cache = M.lm_head_forward(h, wte)
    dout = r.normal(size=out.shape)
    grads = M.lm_head_backward(dout, cache)
    fwd = lambda h, wte: M.lm_head_forward(h, wte)[0]
    for i, g in enumerate(grads):
        assert relative_error(g, _numeric(fwd, (h, wte), dout, i)) < 1e-6


def test_block_backward_matches_central_differences_with_padding():
    r = _rng(7)
    cfg = GPTConfig(**TINY)
    p = {k[len("h.0."):]: v + r.normal(size=v.shape) * 0.1          # perturb biases and LN away from 0/1
         for k, v in GPT(cfg, seed=1, dtype=np.float64).params.items() if k.startswith("h.0.")}
    names = sorted(p)
    x = r.normal(size=(3, 5, cfg.n_embd))
    mask = _right_padded_mask((5, 2, 4), 5)

    def fwd(x, *values):
        return M.block_forward(x, dict(zip(names, values)), "", cfg.n_head, mask)[0]

    out, cache = M.block_forward(x, p, "", cfg.n_head, mask)
    dout = r.normal(size=out.shape)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dx = M.block_backward(dout, cache, grads)
    arrays = (x, *[p[k] for k in names])
    assert relative_error(dx, _numeric(fwd, arrays, dout, 0)) < 1e-6
    for i, k in enumerate(names, start=1):
        assert relative_error(grads[k], _numeric(fwd, arrays, dout, i)) < 1e-6, k


# ----------------------------------------------------------------------------------------------
# each layer vs the same layer written with the autograd's ops

def ag_layernorm(x, w, b):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc ** 2).mean(axis=-1, keepdims=True)
    return xc / (var + 1e-5) ** 0.5 * w + b


def ag_linear(x, w, b):
    return x @ w + b


def ag_gelu(x):
    return 0.5 * x * (1.0 + ag.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def ag_attention(qkv, n_head, mask):
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    heads = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)       # (3, B, nh, T, hs)
    q, k, v = heads[0], heads[1], heads[2]
    s = q @ k.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(hs))
    allowed = np.tril(np.ones((T, T), dtype=bool))[None, None]
    if mask is not None:
        allowed = allowed & (mask.astype(bool)[:, None, None, :] | np.eye(T, dtype=bool))
    att = ag.softmax(ag.where(allowed, s, -1e9), axis=-1)
    return (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)


def _autograd_grads(fn, arrays, dout):
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    fn(*leaves).backward(dout)
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("name", ["layernorm", "linear", "gelu", "attention", "attention+padding"])
def test_layer_backward_matches_the_autograd(name):
    r = _rng(8)
    B, T, C, nh = 3, 6, 8, 2
    mask = _right_padded_mask((6, 4, 1), T)
    if name == "layernorm":
        arrays = (r.normal(size=(B, T, C)), r.normal(size=C), r.normal(size=C))
        ours, theirs = M.layernorm_forward, ag_layernorm
        back = M.layernorm_backward
    elif name == "linear":
        arrays = (r.normal(size=(B, T, C)), r.normal(size=(C, 3 * C)), r.normal(size=3 * C))
        ours, theirs, back = M.linear_forward, ag_linear, M.linear_backward
    elif name == "gelu":
        arrays = (r.normal(size=(B, T, 4 * C)) * 2,)
        ours, theirs, back = M.gelu_forward, ag_gelu, lambda d, c: (M.gelu_backward(d, c),)
    else:
        m = mask if name == "attention+padding" else None
        arrays = (r.normal(size=(B, T, 3 * C)),)
        ours = lambda qkv: M.attention_forward(qkv, nh, m)
        theirs = lambda qkv: ag_attention(qkv, nh, m)
        back = lambda d, c: (M.attention_backward(d, c),)
    out, cache = ours(*arrays)
    ref = theirs(*[Tensor(a) for a in arrays]).data
    assert np.allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = r.normal(size=out.shape)
    for g, g_ref in zip(back(dout, cache), _autograd_grads(theirs, arrays, dout)):
        assert relative_error(g, g_ref) < 1e-6


# ----------------------------------------------------------------------------------------------
# the whole model

def _tiny_model(seed=0, dtype=np.float64, jitter=0.1):
    """A tiny float64 GPT whose biases and LayerNorm gains are moved off 0 and 1, so that every
    parameter's gradient is generic (a zero bias can hide a missing term)."""
    model = GPT(GPTConfig(**TINY), seed=seed, dtype=dtype)
    r = _rng(seed + 100)
    for k, v in model.params.items():
        if k.endswith(".bias") or ".ln_" in k or k.startswith("ln_"):
            model.params[k] = (v + jitter * r.normal(size=v.shape)).astype(dtype)
    return model


def _padded_batch(seed=0):
    r = _rng(seed)
    lengths = (8, 5, 2)
    idx = r.integers(0, TINY["vocab_size"], size=(3, 8))
    mask = _right_padded_mask(lengths, 8)
    return idx, mask, lengths


def test_model_parameter_gradients_match_central_differences_on_a_padded_batch():
    model = _tiny_model()
    idx, mask, _ = _padded_batch()
    r = _rng(9)
    # L = Σ over real tokens of logits · random dout (padded positions weigh nothing)
    dout = r.normal(size=(3, 8, TINY["vocab_size"])) * mask[..., None]
    model.zero_grad()
    model.forward(idx, mask)
    model.backward(dout)
    names = list(model.params)
    arrays = [model.params[k] for k in names]

    def loss(values):
        model.params.update(zip(names, values))
        return float((model.forward(idx, mask, cache=False) * dout).sum())

    for i, k in enumerate(names):
        size = arrays[i].size
        coords = None if size <= 40 else r.choice(size, 40, replace=False)
        num = central_difference(loss, arrays, i, 1e-5, coords)
        ana = model.grads[k].reshape(-1)[coords] if coords is not None else model.grads[k]
        num = num.reshape(-1)[coords] if coords is not None else num
        assert relative_error(ana, num) < 1e-5, k


def test_padded_batch_gives_the_logits_of_unpadded_rows():
    model = _tiny_model()
    idx, mask, lengths = _padded_batch(1)
    logits = model.forward(idx, mask)
    for b, n in enumerate(lengths):
        alone = model.forward(idx[b:b + 1, :n])
        assert np.allclose(logits[b, :n], alone[0], rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_padding_never_changes_real_tokens_and_never_makes_nan(data):
    B = data.draw(st.integers(1, 4))
    T = data.draw(st.integers(1, TINY["block_size"]))
    lengths = data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    seed = data.draw(st.integers(0, 2**16))
    r = _rng(seed)
    model = _tiny_model(seed % 3)
    idx = r.integers(0, TINY["vocab_size"], size=(B, T))
    logits = model.forward(idx, _right_padded_mask(lengths, T))
    assert np.all(np.isfinite(logits))
    for b, n in enumerate(lengths):
        if n:
            assert np.allclose(logits[b, :n], model.forward(idx[b:b + 1, :n])[0], rtol=1e-10, atol=1e-12)


def test_gradients_of_a_padded_batch_equal_the_sum_of_unpadded_row_gradients():
    model = _tiny_model()
    idx, mask, lengths = _padded_batch(2)
    dout = _rng(10).normal(size=(3, 8, TINY["vocab_size"])) * mask[..., None]
    model.zero_grad()
    model.forward(idx, mask)
    model.backward(dout)
    padded = {k: g.copy() for k, g in model.grads.items()}
    model.zero_grad()
    for b, n in enumerate(lengths):        # accumulating backwards add up, as in llm.c
        model.forward(idx[b:b + 1, :n])
        model.backward(np.ascontiguousarray(dout[b:b + 1, :n]))
    for k in padded:
        assert np.allclose(padded[k], model.grads[k], rtol=1e-10, atol=1e-13), k


def _autograd_gpt_logits(model, idx, mask, params, head_weight):
    """The whole GPT written with the autograd's ops; ``head_weight`` may be an untied copy of wte."""
    cfg = model.config
    T = idx.shape[1]
    x = params["wte.weight"][idx] + params["wpe.weight"][:T]
    for i in range(cfg.n_layer):
        h = lambda n: params[f"h.{i}.{n}"]
        a = ag_layernorm(x, h("ln_1.weight"), h("ln_1.bias"))
        a = ag_attention(ag_linear(a, h("attn.c_attn.weight"), h("attn.c_attn.bias")), cfg.n_head, mask)
        x = x + ag_linear(a, h("attn.c_proj.weight"), h("attn.c_proj.bias"))
        m = ag_gelu(ag_linear(ag_layernorm(x, h("ln_2.weight"), h("ln_2.bias")),
                              h("mlp.c_fc.weight"), h("mlp.c_fc.bias")))
        x = x + ag_linear(m, h("mlp.c_proj.weight"), h("mlp.c_proj.bias"))
    x = ag_layernorm(x, params["ln_f.weight"], params["ln_f.bias"])
    return x @ head_weight.transpose(1, 0)


def test_tied_embedding_collects_the_head_and_the_embedding_gradient():
    model = _tiny_model()
    idx, mask, _ = _padded_batch(3)
    dout = _rng(11).normal(size=(3, 8, TINY["vocab_size"]))
    model.zero_grad()
    logits = model.forward(idx, mask)
    model.backward(dout)

    # untied: the embedding table and the head weight are two leaves holding the same values
    leaves = {k: Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    head = Tensor(model.params["wte.weight"].copy(), requires_grad=True)
    ref = _autograd_gpt_logits(model, idx, mask, leaves, head)
    assert np.allclose(logits, ref.data, rtol=1e-12, atol=1e-12)
    ref.backward(dout)
    g_emb, g_head = leaves["wte.weight"].grad, head.grad
    assert relative_error(model.grads["wte.weight"], g_emb + g_head) < 1e-10
    # both parts matter: neither alone is the tied gradient
    assert relative_error(model.grads["wte.weight"], g_head) > 1e-3
    assert relative_error(model.grads["wte.weight"], g_emb) > 1e-3
    for k, leaf in leaves.items():          # and the rest of the model agrees with the autograd
        if k != "wte.weight":
            assert relative_error(model.grads[k], leaf.grad) < 1e-8, k


def test_backward_calls_the_layers_in_exactly_the_reverse_order_of_the_forward(monkeypatch):
    calls = []
    for layer in ("embedding", "layernorm", "linear", "attention", "gelu", "lm_head"):
        for phase in ("forward", "backward"):
            name = f"{layer}_{phase}"
            fn = getattr(M, name)

            def spy(*args, _fn=fn, _layer=layer, _phase=phase):
                out = _fn(*args)
                # identify each call by its layer and the array whose gradient it carries
                key = id(out[1]) if _phase == "forward" else id(args[1])
                calls.append((_phase, _layer, key))
                return out
            monkeypatch.setattr(M, name, spy)
    model = _tiny_model()
    idx, mask, _ = _padded_batch(4)
    logits = model.forward(idx, mask)
    model.backward(_rng(12).normal(size=logits.shape))
    fwd = [(layer, key) for phase, layer, key in calls if phase == "forward"]
    bwd = [(layer, key) for phase, layer, key in calls if phase == "backward"]
    n_layer = TINY["n_layer"]    # embedding, per block 2 LN + 4 linear + attention + GELU, ln_f, head
    assert len(fwd) == 1 + n_layer * (2 + 4 + 1 + 1) + 1 + 1
    assert bwd == fwd[::-1]


# ----------------------------------------------------------------------------------------------
# parameters, initialisation, dtypes

def test_params_have_gpt2_names_shapes_and_initialisation():
    cfg = GPTConfig()
    model = GPT(cfg, seed=0)
    V, T, C, L = cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer
    p = model.params
    assert p["wte.weight"].shape == (V, C) and p["wpe.weight"].shape == (T, C)
    assert p["h.0.attn.c_attn.weight"].shape == (C, 3 * C) and p["h.0.attn.c_attn.bias"].shape == (3 * C,)
    assert p["h.3.mlp.c_fc.weight"].shape == (C, 4 * C) and p["h.3.mlp.c_proj.weight"].shape == (4 * C, C)
    assert len(p) == 2 + 12 * L + 2 and set(p) == set(M.param_shapes(cfg))
    c_proj = np.concatenate([p[f"h.{i}.{n}.c_proj.weight"].ravel() for i in range(L) for n in ("attn", "mlp")])
    assert abs(c_proj.std() / (0.02 / math.sqrt(2 * L)) - 1) < 0.02
    assert abs(p["h.1.mlp.c_fc.weight"].std() / 0.02 - 1) < 0.02
    for k, v in p.items():
        if k.endswith(".bias"):
            assert not v.any(), k
        elif ".ln_" in k or k.startswith("ln_"):
            assert np.all(v == 1), k
    same = GPT(cfg, seed=0, dtype=np.float64)
    assert all(np.array_equal(v, same.params[k].astype(np.float32)) for k, v in p.items())
    assert not np.array_equal(GPT(cfg, seed=1).params["wte.weight"], p["wte.weight"])


def test_float32_model_stays_float32_and_float64_params_give_float64():
    model = GPT(GPTConfig(**TINY), seed=0, dtype=np.float32)
    idx, mask, _ = _padded_batch(5)
    logits = model.forward(idx, mask)
    assert logits.dtype == np.float32 and model.forward_body(idx).dtype == np.float32
    logits = model.forward(idx, mask)
    model.backward(np.ones_like(logits))
    assert all(g.dtype == np.float32 for g in model.grads.values())
    # the dict is the source of truth: replacing its entries with float64 makes a float64 model
    for k in model.params:
        model.params[k] = model.params[k].astype(np.float64)
    logits64 = model.forward(idx, mask)
    assert logits64.dtype == np.float64
    assert np.allclose(logits64, logits, rtol=1e-4, atol=1e-5)
    model.backward(np.ones_like(logits64))
    assert all(g.dtype == np.float64 for g in model.grads.values())


def test_forward_reads_the_params_dict_at_call_time():
    model = _tiny_model()
    idx = _padded_batch(6)[0]
    before = model.forward(idx, cache=False)
    model.params["ln_f.bias"] = model.params["ln_f.bias"] + 1.0
    after = model.forward(idx, cache=False)
    # logits = (h + 1) @ wteᵀ = before + Σ_c wte[v, c]
    assert np.allclose(after, before + model.params["wte.weight"].sum(axis=1), rtol=1e-12, atol=1e-12)


def test_forward_body_and_head_compose_to_forward_and_backward():
    model = _tiny_model()
    idx, mask, _ = _padded_batch(7)
    dout = _rng(13).normal(size=(3, 8, TINY["vocab_size"]))
    model.zero_grad()
    logits = model.forward(idx, mask)
    model.backward(dout)
    full = {k: g.copy() for k, g in model.grads.items()}
    model.zero_grad()
    h = model.forward_body(idx, mask)
    assert np.allclose(h @ model.params["wte.weight"].T, logits, rtol=1e-12, atol=1e-12)
    model.backward_body(dout @ model.params["wte.weight"])
    full["wte.weight"] -= np.einsum("btv,btc->vc", dout, h)        # the head's share, by hand
    for k in full:
        assert np.allclose(model.grads[k], full[k], rtol=1e-10, atol=1e-12), k


def test_zero_grad_resets_and_grads_accumulate_across_backwards():
    model = _tiny_model()
    idx = _padded_batch(8)[0]
    dout = _rng(14).normal(size=(3, 8, TINY["vocab_size"]))
    model.forward(idx)
    model.backward(dout)
    once = {k: g.copy() for k, g in model.grads.items()}
    model.backward(dout)
    assert all(np.allclose(model.grads[k], 2 * once[k], rtol=1e-12, atol=0) for k in once)
    model.zero_grad()
    assert set(model.grads) == set(model.params) and not any(g.any() for g in model.grads.values())


def test_config_round_trips_and_validates():
    cfg = GPTConfig(**TINY)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert GPTConfig() == GPTConfig(vocab_size=96, block_size=64, n_layer=4, n_head=4, n_embd=128)
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(n_layer=0)
    with pytest.raises(TypeError, match="block_size"):
        GPTConfig(block_size=8.0)
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({**TINY, "dropout": 0.1})


# ----------------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("idx, err, match", [
    (np.array([[0, 13]]), ValueError, "outside"),
    (np.array([[-1, 2]]), ValueError, "outside"),
    (np.zeros((1, 9), dtype=np.int64), ValueError, "block_size"),
    (np.zeros((1, 3), dtype=np.float64), TypeError, "integer"),
    (np.zeros(3, dtype=np.int64), ValueError, "2-D"),
    (np.zeros((1, 2, 3), dtype=np.int64), ValueError, "2-D"),
    (np.zeros((1, 0), dtype=np.int64), ValueError, "non-empty"),
], ids=["id>=V", "id<0", "T>block_size", "float ids", "1-D", "3-D", "empty"])
def test_bad_idx_raises_naming_it(idx, err, match):
    with pytest.raises(err, match=match) as info:
        GPT(GPTConfig(**TINY)).forward(idx)
    assert "idx" in str(info.value)


@pytest.mark.parametrize("mask, match", [
    (np.ones((2, 3)), "shape"),
    (np.array([[1, 1, 1, 2], [1, 0, 0, 0]]), "0 and 1"),
    (np.array([[0, 1, 1, 1], [1, 1, 0, 0]]), "right-padded"),
], ids=["shape", "values", "left-padded"])
def test_bad_attention_mask_raises_naming_it(mask, match):
    with pytest.raises(ValueError, match=match) as info:
        GPT(GPTConfig(**TINY)).forward(np.zeros((2, 4), dtype=np.int64), mask)
    assert "attention_mask" in str(info.value)


def test_backward_rejects_bad_dlogits_and_a_missing_cache():
    model = GPT(GPTConfig(**TINY), dtype=np.float32)
    idx = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="forward"):
        model.backward(np.zeros((2, 4, 13), dtype=np.float32))
    logits = model.forward(idx)
    with pytest.raises(ValueError, match="dlogits.*shape"):
        model.backward(np.zeros((2, 4, 12), dtype=np.float32))
    with pytest.raises(TypeError, match="dlogits.*dtype"):
        model.backward(np.zeros(logits.shape, dtype=np.float64))
    model.forward(idx, cache=False)
    with pytest.raises(ValueError, match="cache"):
        model.backward(np.zeros(logits.shape, dtype=np.float32))
    model.forward_body(idx)                 # a body alone has no head to differentiate
    with pytest.raises(ValueError, match="head"):
        model.backward(np.zeros(logits.shape, dtype=np.float32))
    with pytest.raises(ValueError, match="dh.*shape"):
        model.backward_body(np.zeros((2, 4, 7), dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# the benchmark's bookkeeping (its timings are not asserted: they depend on the machine)

def test_bench_counts_every_matmul_flop_of_forward_and_backward_from_the_shapes():
    from dpo_np.bench.model import bench_model
    B, T, C, V, nh, L = 2, 8, 16, 11, 2, 1
    r = bench_model(n_layer=L, n_head=nh, n_embd=C, block_size=T, batch_size=B, vocab_size=V,
                    steps=1, verbose=False)
    N = B * T
    linears = 2 * N * C * (3 * C + C + 4 * C + 4 * C)      # c_attn, attn.c_proj, c_fc, mlp.c_proj
    attention = 2 * (2 * B * nh * T * T * (C // nh))         # q @ kᵀ and att @ v
    head = 2 * N * C * V
    forward = L * (linears + attention) + head
    assert r["model_flops_per_step"] == forward + 2 * forward   # each backward GEMM pair = 2x its forward
    assert r["adamw"] == "on" and np.isfinite(r["loss_last"])
    assert r["tracemalloc_peak_bytes"] > 0 and 0 < r["ratio"]


# ---- inference with a key/value cache ---------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(1, 11), min_size=1, max_size=4, unique=True), seed=st.integers(0, 2**31 - 1))
def test_decode_with_a_key_value_cache_gives_the_logits_of_the_whole_sequence(cuts, seed):
    """Feeding a sequence in pieces, each with the keys and values of the pieces before it, gives
    every position exactly the logits one forward of the whole sequence gives it."""
    config = GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=8)
    model = GPT(config, seed=seed % 1000, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, 11, size=(3, 12))
    whole = model.forward(idx, cache=False)
    bounds = [0] + sorted(cuts) + [12]
    pieces, past = [], None
    for a, b in zip(bounds[:-1], bounds[1:]):
        logits, past = model.decode(idx[:, a:b], past)
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=0, atol=1e-12)
    assert len(past) == 2 and past[0][0].shape == (3, 2, 12, 4)


def test_decode_refuses_to_run_past_the_context():
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    _, past = model.decode(np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="3 cached \\+ 2 new tokens exceed block_size=4"):
        model.decode(np.zeros((1, 2), dtype=np.int64), past)
