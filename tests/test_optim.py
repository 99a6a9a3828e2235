"""AdamW is PyTorch's update to the last bit of float64, clipping is the global L2 rule,
the schedule has the promised shape, and a saved optimizer resumes exactly."""

import io
import math

import numpy as np
import pytest

from dpo_np.optim import AdamW, clip_grad_norm, cosine_schedule


def _params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"h.0.mlp.c_fc.weight": rng.normal(size=(3, 4)).astype(dtype),   # a matrix: decays
            "h.0.mlp.c_fc.bias": rng.normal(size=(4,)).astype(dtype),       # a bias: does not
            "ln_f.weight": rng.normal(size=(4,)).astype(dtype)}            # a LayerNorm gain: does not


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=p.shape).astype(p.dtype) for k, p in params.items()}


def _adamw_by_hand(p, grads, lr, b1, b2, eps, wd):
    """The AdamW update as written in the docstring, one array, float64, no shortcuts."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p - lr * wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_adamw_matches_the_update_written_out_for_several_steps_with_and_without_decay():
    lr, betas, eps, wd = 0.01, (0.8, 0.95), 1e-6, 0.3
    params = _params()
    start = {k: p.copy() for k, p in params.items()}
    opt = AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    assert opt.decay == {"h.0.mlp.c_fc.weight"}          # GPT-2 rule: only ndim >= 2 decays
    history = [_grads(params, seed) for seed in range(1, 7)]
    for g in history:
        opt.step(g)
    for k, p in params.items():
        expected = _adamw_by_hand(start[k], [g[k] for g in history], lr, *betas, eps,
                                  wd if k in opt.decay else 0.0)
        np.testing.assert_allclose(p, expected, rtol=1e-13, atol=1e-15)
    # and decay really changes the matrix: without it the result is measurably different
    no_decay = _adamw_by_hand(start["h.0.mlp.c_fc.weight"], [g["h.0.mlp.c_fc.weight"] for g in history],
                              lr, *betas, eps, 0.0)
    assert np.abs(no_decay - params["h.0.mlp.c_fc.weight"]).max() > 1e-4


def test_first_step_moves_each_weight_by_lr_against_the_sign_of_its_gradient():
    # at t = 1 bias correction gives m̂ = g and v̂ = g², so the step is lr · g / (|g| + ε)
    params = {"w": np.array([1.0, -2.0, 3.0])}
    opt = AdamW(params, lr=0.1, eps=1e-300, weight_decay=0.0)     # ε > 0 but below every |g| here
    opt.step({"w": np.array([0.5, -4.0, 1e-3])})
    np.testing.assert_allclose(params["w"], [0.9, -1.9, 2.9], rtol=0, atol=1e-15)


def test_decay_argument_chooses_the_decayed_names():
    params = _params()
    assert AdamW(params, decay=["ln_f.weight"]).decay == {"ln_f.weight"}
    assert AdamW(params, decay=lambda name, p: name.endswith("bias")).decay == {"h.0.mlp.c_fc.bias"}
    with pytest.raises(ValueError, match="decay.*nope"):
        AdamW(params, decay=["nope"])


def test_float32_parameters_and_moments_stay_float32_and_track_the_float64_update():
    params = _params(np.float32)
    start = {k: p.astype(np.float64) for k, p in params.items()}
    ids = {k: id(p) for k, p in params.items()}
    opt = AdamW(params, lr=1e-2, weight_decay=0.1)
    history = [_grads(params, seed) for seed in range(1, 4)]
    for g in history:
        opt.step(g)
    for k, p in params.items():
        assert p.dtype == np.float32 and opt.m[k].dtype == np.float32 and opt.v[k].dtype == np.float32
        assert id(p) == ids[k]                               # updated in place
        expected = _adamw_by_hand(start[k], [g[k].astype(np.float64) for g in history], 1e-2, 0.9, 0.999,
                                  1e-8, 0.1 if k in opt.decay else 0.0)
        np.testing.assert_allclose(p, expected, rtol=1e-6, atol=1e-6)


def test_adamw_minimises_a_quadratic():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 50.0, size=10)             # badly conditioned on purpose: Adam rescales per weight
    c = rng.normal(size=10)
    params = {"p": np.zeros(10)}
    loss = lambda: 0.5 * float(np.sum(a * (params["p"] - c) ** 2))   # noqa: E731
    start = loss()
    opt = AdamW(params, weight_decay=0.0)
    for it in range(600):
        opt.step({"p": a * (params["p"] - c)}, lr=cosine_schedule(it, 0.1, 20, 600, min_lr=1e-4))
    assert loss() < 1e-6 * start
    np.testing.assert_allclose(params["p"], c, atol=1e-3)


def test_state_dict_round_trip_gives_identical_subsequent_updates():
    params_a = _params(np.float32)
    opt_a = AdamW(params_a, lr=3e-3, betas=(0.85, 0.99), weight_decay=0.05, decay=["ln_f.weight"])
    for seed in range(3):
        opt_a.step(_grads(params_a, seed))
    buf = io.BytesIO()
    np.savez(buf, **opt_a.state_dict())                  # as a checkpoint stores it: plain arrays, no pickle
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}

    params_b = {k: p.copy() for k, p in params_a.items()}
    opt_b = AdamW(params_b)                              # default hyper-parameters: restored from the state
    opt_b.load_state_dict(state)
    assert (opt_b.t, opt_b.lr, opt_b.betas, opt_b.decay) == (3, 3e-3, (0.85, 0.99), {"ln_f.weight"})
    for seed in range(3, 6):
        g = _grads(params_a, seed)
        opt_a.step(g)
        opt_b.step({k: x.copy() for k, x in g.items()})
    for k in params_a:
        assert np.array_equal(params_a[k], params_b[k])   # bitwise


def test_state_dict_is_a_snapshot_not_a_view():
    params = _params()
    opt = AdamW(params)
    opt.step(_grads(params, 1))
    state = opt.state_dict()
    saved = state["exp_avg/ln_f.weight"].copy()
    opt.step(_grads(params, 2))
    assert np.array_equal(state["exp_avg/ln_f.weight"], saved)


def test_load_state_dict_rejects_state_for_other_parameters():
    params = _params()
    state = AdamW(params).state_dict()
    other = {"w": np.zeros((2, 2))}
    with pytest.raises(ValueError, match="exp_avg.*missing"):
        AdamW(other).load_state_dict(state)
    bad = dict(state)
    bad["exp_avg_sq/ln_f.weight"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"exp_avg_sq.*ln_f.weight.*shape \(5,\)"):
        AdamW(params).load_state_dict(bad)
    del bad["step"]
    with pytest.raises(ValueError, match="missing.*step"):
        AdamW(params).load_state_dict(bad)


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-1e-3), "lr"), (dict(lr=float("nan")), "lr"), (dict(betas=(1.0, 0.999)), "betas"),
    (dict(betas=(0.9, -0.1)), "betas"), (dict(eps=-1e-8), "eps"), (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyper_parameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdamW(_params(), **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(betas=0.9), "betas"), (dict(lr="0.1"), "lr"), (dict(eps=True), "eps"), (dict(weight_decay=None), "weight_decay"),
])
def test_hyper_parameters_of_the_wrong_kind_raise_type_error_naming_them(kwargs, name):
    with pytest.raises(TypeError, match=name):
        AdamW(_params(), **kwargs)


def test_zero_epsilon_is_refused_because_it_would_divide_zero_by_zero():
    """A coordinate whose gradient has always been 0 has m = v = 0: with ε = 0 its update is 0/0."""
    params = {"w": np.array([1.0, 2.0])}
    with np.errstate(invalid="ignore"):
        m, v = np.zeros(2), np.zeros(2)
        assert np.isnan(m / (np.sqrt(v) + 0.0)).all()
    with pytest.raises(ValueError, match="eps must be > 0"):
        AdamW(params, eps=0.0)


def test_grads_with_missing_extra_or_misshapen_entries_are_rejected_before_any_update():
    params = _params()
    before = {k: p.copy() for k, p in params.items()}
    opt = AdamW(params)
    g = _grads(params, 0)
    with pytest.raises(ValueError, match=r"missing \['ln_f.weight'\]"):
        opt.step({k: v for k, v in g.items() if k != "ln_f.weight"})
    with pytest.raises(ValueError, match=r"unexpected \['wte.weight'\]"):
        opt.step({**g, "wte.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"grads\['h.0.mlp.c_fc.bias'\] has shape \(5,\)"):
        opt.step({**g, "h.0.mlp.c_fc.bias": np.zeros(5)})
    with pytest.raises(ValueError, match="lr"):
        opt.step(g, lr=-1.0)
    assert opt.t == 0 and all(np.array_equal(params[k], before[k]) for k in params)
    with pytest.raises(TypeError, match="floating"):
        AdamW({"idx": np.arange(3)})


def test_clip_grad_norm_returns_the_global_norm_and_rescales_to_max_norm():
    grads = _grads(_params(), 0)
    flat = np.concatenate([g.ravel() for g in grads.values()])
    norm = float(np.sqrt(np.sum(flat ** 2)))
    before = {k: g.copy() for k, g in grads.items()}
    total = clip_grad_norm(grads, max_norm=0.25 * norm)
    assert total == pytest.approx(norm, rel=1e-14)
    scale = 0.25 * norm / (norm + 1e-6)
    for k in grads:
        np.testing.assert_allclose(grads[k], before[k] * scale, rtol=1e-14)   # same direction, in place
    after = np.sqrt(sum(float(np.sum(g ** 2)) for g in grads.values()))
    assert after == pytest.approx(0.25 * norm, rel=1e-5)


def test_clip_grad_norm_leaves_small_gradients_untouched():
    grads = _grads(_params(), 1)
    before = {k: g.copy() for k, g in grads.items()}
    norm = clip_grad_norm(grads, max_norm=1e6)
    assert all(np.array_equal(grads[k], before[k]) for k in grads)
    assert norm == pytest.approx(math.sqrt(sum(float(np.sum(g ** 2)) for g in before.values())), rel=1e-14)


def test_clip_grad_norm_refuses_non_finite_gradients_and_bad_max_norm():
    grads = _grads(_params(), 2)
    grads["ln_f.weight"][1] = np.nan
    with pytest.raises(ValueError, match="ln_f.weight"):
        clip_grad_norm(grads, 1.0)
    assert math.isnan(clip_grad_norm(grads, 1.0, error_if_nonfinite=False))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="max_norm"):
            clip_grad_norm(_grads(_params(), 0), bad)


def test_cosine_schedule_warms_up_linearly_then_decays_to_min_lr():
    max_lr, min_lr, warmup, total = 6e-4, 6e-5, 10, 110
    lrs = [cosine_schedule(s, max_lr, warmup, total, min_lr) for s in range(total + 20)]
    assert lrs[0] == pytest.approx(max_lr / warmup)                  # never a wasted zero step
    assert lrs[warmup - 1] == pytest.approx(max_lr)
    assert lrs[warmup] == pytest.approx(max_lr)                      # decay starts at the top
    assert lrs[(warmup + total) // 2] == pytest.approx((max_lr + min_lr) / 2)   # cos(π/2) = 0
    assert lrs[total] == pytest.approx(min_lr) and all(lr == min_lr for lr in lrs[total:])
    warm, decay = np.array(lrs[:warmup]), np.array(lrs[warmup:])
    np.testing.assert_allclose(np.diff(warm), max_lr / warmup)      # linear
    assert np.all(np.diff(decay) <= 0)                               # monotone non-increasing
    assert min(lrs[warmup:]) >= min_lr                                # never below the floor


def test_cosine_schedule_without_warmup_and_bad_arguments():
    assert cosine_schedule(0, 1.0, 0, 10) == 1.0
    assert cosine_schedule(10, 1.0, 0, 10) == 0.0
    for args, name in [((-1, 1.0, 0, 10), "step"), ((0, 1.0, -1, 10), "warmup_steps"),
                       ((0, 1.0, 5, 4), "total_steps"), ((0, 1.0, 0, 10, 2.0), "min_lr"),
                       ((0, float("nan"), 0, 10), "max_lr")]:
        with pytest.raises(ValueError, match=name):
            cosine_schedule(*args)
    with pytest.raises(TypeError, match="step"):
        cosine_schedule(1.5, 1.0, 0, 10)


# ---- an outside reference: PyTorch (skipped when it is not installed) ----------------------

@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 1e-6)])
def test_adamw_and_clipping_agree_with_pytorch(dtype, rtol):
    torch = pytest.importorskip("torch")
    lr, betas, eps, wd = 3e-3, (0.9, 0.95), 1e-8, 0.1
    params = _params(dtype)
    opt = AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    tparams = {k: torch.tensor(p.copy(), requires_grad=True) for k, p in params.items()}
    topt = torch.optim.AdamW(
        [{"params": [tparams[k] for k in params if k in opt.decay], "weight_decay": wd},
         {"params": [tparams[k] for k in params if k not in opt.decay], "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps)
    for seed in range(5):
        g = _grads(params, seed)
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k] * 3.0)
        g = {k: v * 3.0 for k, v in g.items()}
        norm = clip_grad_norm(g, 1.0)
        tnorm = torch.nn.utils.clip_grad_norm_(list(tparams.values()), 1.0)
        assert norm == pytest.approx(float(tnorm), rel=rtol)
        opt.step(g)
        topt.step()
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=rtol, atol=rtol)
