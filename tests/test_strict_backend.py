"""The strict backend: NumPy underneath, CuPy's refusals on top. Its arrays never become host
arrays implicitly, every training path gives the NumPy backend's numbers bit for bit, and a
training step moves a few numbers to the host — as many for a deeper model."""

import copy
import json
import os

import numpy as np
import pytest

from dpo_np import autograd as ag
from dpo_np import backend, logprobs, rlhf
from dpo_np.data import format_prompt
from dpo_np.experiments.closed_form import run_closed_form
from dpo_np.generate import beam_search, generate, greedy_answer
from dpo_np.losses import LOSS_TYPES, dpo_loss
from dpo_np.model import GPT, GPTConfig
from dpo_np.optim import AdamW
from dpo_np.reward_model import RewardConfig, RewardModel, RewardTrainer
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.tokenizer import CharTokenizer
from dpo_np.trainers import DPOConfig, DPOTrainer

PAIRS = [
    {"prompt": "ab", "chosen": "abc", "rejected": "c"},
    {"prompt": "cab", "chosen": "b", "rejected": "bacca"},
    {"prompt": "a", "chosen": "cc", "rejected": "ab"},
    {"prompt": "bca", "chosen": "aab", "rejected": "cbab"},
]
RECORDS = [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS]
TOK = CharTokenizer.from_corpus(format_prompt("") + "abc")
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=1, n_head=2, n_embd=8)
RUN = dict(max_length=18, max_prompt_length=12, show_progress=False, per_device_train_batch_size=2,
           learning_rate=1e-2, logging_steps=1)
# what one training step may move to the host: the logged metrics and the checks' verdicts
MAX_TRANSFERS_PER_STEP = 20


@pytest.fixture
def strict():
    previous = backend.backend_name()
    yield backend.set_backend("strict")
    backend.set_backend(previous)


def _host(x):
    """``x`` with every array (and Tensor) moved to the host, to compare the two backends."""
    if isinstance(x, ag.Tensor):
        x = x.data
    if isinstance(x, dict):
        return {k: _host(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_host(v) for v in x)
    return backend.to_numpy(x) if isinstance(x, backend.StrictArray) else x


def _on_device(x):
    """Whether a strict array is somewhere in ``x``: the path really ran on the strict backend."""
    if isinstance(x, ag.Tensor):
        x = x.data
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return any(_on_device(v) for v in x)
    return isinstance(x, backend.StrictArray)


def _numpy_then_strict(fn, device=True):
    """fn() under the NumPy backend, then under strict; both results on the host."""
    results = []
    for name in ("numpy", "strict"):
        backend.set_backend(name)
        out = fn()
        if name == "strict" and device:
            assert _on_device(out), "the strict run returned no device array"
        results.append(_host(out))
    return results


def _assert_same(a, b):
    """Equal to the bit: the same values, dtypes, keys and types (NaN equals NaN)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b or (a != a and b != b), (a, b)


# ---- the array itself ----------------------------------------------------------------------

def test_a_strict_array_refuses_every_implicit_conversion_to_numpy(strict):
    x = backend.asarray(np.arange(6.0).reshape(2, 3))
    assert not isinstance(x, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError, match="use `.get"):
        x.__array__()
    implicit = [np.array, lambda a: np.asarray([a, a]), np.exp, np.sum, np.isfinite, lambda a: np.concatenate([a]),
                lambda a: np.ones(3) + a, lambda a: a * np.ones(3), lambda a: np.float64(a), float, int]
    for convert in implicit:
        with pytest.raises(TypeError):
            convert(x)
    for name in ("__array_interface__", "__array_struct__", "data", "ctypes", "tobytes"):
        assert not hasattr(x, name), name
    with pytest.raises(ValueError):
        bool(x)                                       # more than one element: ambiguous, as in CuPy


def test_a_strict_array_allows_what_cupy_allows(strict):
    host = np.arange(6.0).reshape(2, 3)
    x = backend.asarray(host)
    row0, row1 = x                                    # unpacking along the first axis
    assert [backend.to_numpy(r).tolist() for r in x] == host.tolist()
    assert (x.shape, x.dtype, x.ndim, x.size, len(x)) == (host.shape, host.dtype, 2, 6, 2)
    same = [
        (row1 - row0, host[1] - host[0]), (x.T, host.T), (x.reshape(3, 2), host.reshape(3, 2)),
        (x.sum(axis=0), host.sum(axis=0)), (x.max(), host.max()), (x.astype(np.float32), host.astype(np.float32)),
        (x[0, 1:], host[0, 1:]), (x[np.array([1, 0])], host[[1, 0]]), (x[x > 2], host[host > 2]),
        (2.0 * x + 1 - x / 2, 2.0 * host + 1 - host / 2), (x ** 2, host ** 2), (-abs(x), -abs(host)),
        (x @ x.T, host @ host.T), (x == x, host == host), (np.float32(2) * x, np.float32(2) * host),
        (3 > x, 3 > host),
    ]
    for got, want in same:
        assert isinstance(got, backend.StrictArray)
        _assert_same(backend.to_numpy(got), np.asarray(want))
    y = x.copy()
    y[0] = 5.0
    y[1, :2] += 1.0
    alias = y
    y *= 2                                            # in place: the same array, as in NumPy
    assert alias is y
    np.testing.assert_array_equal(backend.to_numpy(y), [[10.0, 10.0, 10.0], [8.0, 10.0, 10.0]])
    deep = copy.deepcopy(y)
    deep += 1
    np.testing.assert_array_equal(backend.to_numpy(y)[0], [10.0, 10.0, 10.0])
    total = x.sum()
    assert (float(total), int(total), bool(total), total.item()) == (15.0, 15, True, 15.0)


def test_every_way_to_the_host_is_counted_and_nothing_else_is(strict):
    xp = backend.xp()
    x = backend.asarray(np.arange(4.0))
    s = x.sum()
    before = backend.host_transfers()
    _ = (x.shape, x.dtype, x + 1, x.sum(), x[1:], xp.exp(x), len(x), list(x), x.T, xp.zeros(3))
    assert backend.host_transfers() == before               # staying on the device costs nothing
    transfers = [lambda: backend.to_numpy(x), x.get, s.item, lambda: float(s), lambda: int(s),
                 lambda: bool(s), x.tolist, lambda: f"{s:.2f}", lambda: repr(x), lambda: float(x[1:2])]
    for move in transfers:
        n = backend.host_transfers()
        move()
        assert backend.host_transfers() == n + 1
    host = backend.to_numpy(x)
    host[0] = 99.0                                          # a copy, as CuPy's .get() gives
    assert backend.to_numpy(x)[0] == 0.0


def test_the_strict_module_runs_numpys_functions_on_device_arrays(strict):
    xp = backend.xp()
    assert xp.ndarray is backend.StrictArray and backend.backend_name() == "strict"
    assert xp.float32 is np.float32 and xp.finfo is np.finfo      # types and dtypes stay NumPy's
    a = np.arange(6.0).reshape(2, 3)
    d = backend.asarray(a)
    same = [
        (xp.exp(d), np.exp(a)), (xp.zeros((2, 3)), np.zeros((2, 3))), (xp.where(d > 2, d, 0), np.where(a > 2, a, 0)),
        (xp.einsum("ij,kj->ik", d, d), np.einsum("ij,kj->ik", a, a)), (xp.linalg.norm(d), np.linalg.norm(a)),
        (xp.concatenate([d, d]), np.concatenate([a, a])), (xp.add.reduce(d, axis=1), np.add.reduce(a, axis=1)),
        (xp.maximum(d, 1.0), np.maximum(a, 1.0)), (xp.take_along_axis(d, xp.argsort(-d), -1), np.sort(a)[:, ::-1]),
    ]
    for got, want in same:
        assert isinstance(got, backend.StrictArray)
        _assert_same(backend.to_numpy(got), np.asarray(want))
    assert isinstance(xp.random.rand(2), backend.StrictArray)      # submodules are delegated too
    rows, cols = xp.nonzero(d > 2)
    assert isinstance(rows, backend.StrictArray) and backend.to_numpy(cols).tolist() == [0, 1, 2]
    for host_in in (lambda: xp.exp(a), lambda: xp.concatenate([d, a]), lambda: d + a):
        with pytest.raises(TypeError, match="backend.asarray"):  # host data must be moved first
            host_in()
    out = backend.scatter_add(xp.zeros(3), xp.asarray([0, 0, 2]), xp.asarray([1.0, 2.0, 5.0]))
    np.testing.assert_array_equal(backend.to_numpy(out), [3.0, 0.0, 5.0])


# ---- the training paths, run unchanged -------------------------------------------------------

def test_autograd_forward_and_backward_match_numpy(strict):
    rng = np.random.default_rng(0)
    x0, w0, idx = rng.normal(size=(3, 4)), rng.normal(size=(4, 5)), np.array([[1], [0], [4]])

    def run():
        x, w = ag.Tensor(x0, requires_grad=True), ag.Tensor(w0, requires_grad=True)
        h = ag.tanh(x @ w) * 0.5 + ag.sigmoid(x).sum(axis=1, keepdims=True)
        lp = ag.log_softmax(h, axis=-1)
        picked = ag.gather(lp, idx, axis=-1).sum()
        rest = ag.logsigmoid(h[[0, 0, 2]]).mean() + ag.concatenate([h, -h], axis=0).max(axis=0).sum()
        rest = rest + ag.softplus(ag.sort(h[:, 1:], axis=-1)).sum() + ag.where(h.data > 0, h, h * 2).sum()
        loss = picked + rest + ag.logsumexp(h.reshape(5, 3).T, axis=0).sum() + ag.exp(-ag.relu(h)).sum()
        loss.backward()
        return loss, x.grad, w.grad

    _assert_same(*_numpy_then_strict(run))


def test_gpt_forward_and_backward_match_numpy(strict):
    rng = np.random.default_rng(1)
    idx = rng.integers(TINY.vocab_size, size=(2, 7))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    dlogits = rng.normal(size=(2, 7, TINY.vocab_size))

    def run():
        model = GPT(TINY, seed=0, dtype=np.float64)
        logits = model.forward(backend.asarray(idx), backend.asarray(mask))
        model.zero_grad()
        model.backward(backend.asarray(dlogits))
        return logits, model.grads

    _assert_same(*_numpy_then_strict(run))


def test_log_probabilities_and_their_backward_match_numpy(strict):
    rng = np.random.default_rng(2)
    logits0 = rng.normal(size=(3, 6, 5))
    labels0 = np.array([[-100, -100, 1, 2, 3, 4], [-100, 0, 0, -100, -100, -100], [-100] * 6])
    upstream = rng.normal(size=3)

    def run():
        out = []
        for average in (False, True):
            logits, labels = ag.Tensor(logits0, requires_grad=True), backend.asarray(labels0)
            logps = logprobs.get_batch_logps(logits, labels, average_log_prob=average)
            (logps * upstream).sum().backward()
            fast, cache = logprobs.batch_logps_forward(backend.asarray(logits0), labels, average_log_prob=average)
            out += [logps, logits.grad, fast, logprobs.batch_logps_backward(backend.asarray(upstream), cache)]
        return out

    _assert_same(*_numpy_then_strict(run))


def test_dpo_loss_of_every_loss_type_and_its_gradient_match_numpy(strict):
    rng = np.random.default_rng(3)
    pw0, pl0, rw0, rl0 = (rng.normal(size=4) - 3.0 for _ in range(4))
    kinds = [dict(loss_type=t) for t in LOSS_TYPES] + [dict(reference_free=True),
                                                      dict(loss_type="robust", label_smoothing=0.1)]

    def run():
        out = []
        for kw in kinds:
            pw, pl = ag.Tensor(pw0, requires_grad=True), ag.Tensor(pl0, requires_grad=True)
            refs = (None, None) if kw.get("reference_free") else (backend.asarray(rw0), backend.asarray(rl0))
            lengths = dict(chosen_lengths=backend.asarray([3, 1, 2, 5])) if kw.get("loss_type") == "sft" else {}
            losses, chosen, rejected = dpo_loss(pw, pl, *refs, beta=0.2, **kw, **lengths)
            losses.mean().backward()
            out.append((losses, chosen, rejected, pw.grad, pl.grad))
        return out

    _assert_same(*_numpy_then_strict(run))


def test_adamw_steps_match_numpy(strict):
    rng = np.random.default_rng(4)
    params0 = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
    grads0 = [{k: rng.normal(size=v.shape) for k, v in params0.items()} for _ in range(3)]

    def run():
        params = {k: backend.asarray(v) for k, v in params0.items()}
        opt = AdamW(params, lr=0.1, weight_decay=0.1)
        for g in grads0:
            opt.step({k: backend.asarray(v) for k, v in g.items()})
        return params, opt.m, opt.v

    _assert_same(*_numpy_then_strict(run))


def _trained(trainer):
    trainer.train()
    return trainer.state["log_history"], trainer.evaluate(), trainer.model.params


@pytest.mark.parametrize("options", [dict(), dict(precompute_ref_log_probs=True, use_weighting=True, loss_type="ipo")])
def test_dpo_trainer_matches_numpy(strict, tmp_path, options):
    runs = iter(("numpy", "strict"))

    def run():
        args = DPOConfig(output_dir=str(tmp_path / next(runs)), max_steps=2, **RUN, **options)
        return _trained(DPOTrainer(GPT(TINY, seed=0), args=args, train_dataset=PAIRS, eval_dataset=PAIRS[:3],
                                   tokenizer=TOK))

    _assert_same(*_numpy_then_strict(run))


def test_sft_trainer_matches_numpy(strict, tmp_path):
    runs = iter(("numpy", "strict"))

    def run():
        args = SFTConfig(output_dir=str(tmp_path / next(runs)), max_steps=2, **RUN)
        return _trained(SFTTrainer(GPT(TINY, seed=0), args=args, train_dataset=RECORDS, eval_dataset=RECORDS[:2],
                                   tokenizer=TOK))

    _assert_same(*_numpy_then_strict(run))


def test_reward_trainer_matches_numpy(strict, tmp_path):
    runs = iter(("numpy", "strict"))

    def run():
        args = RewardConfig(output_dir=str(tmp_path / next(runs)), max_steps=2, **RUN)
        return _trained(RewardTrainer(RewardModel(TINY, seed=0), args=args, train_dataset=PAIRS,
                                      eval_dataset=PAIRS, tokenizer=TOK))

    _assert_same(*_numpy_then_strict(run))


def test_generation_greedy_sampled_and_beam_matches_numpy(strict):
    def run():
        model = GPT(TINY, seed=0)
        assert backend.backend_name() == "numpy" or _on_device(model.params)
        return (generate(model, [1, 2], 6, do_sample=False),
                generate(model, [[1, 2], [3, 1]], 6, temperature=0.8, top_k=4, top_p=0.9, eos_token_id=1, seed=5),
                beam_search(model, [1, 2], 4, num_beams=3), greedy_answer(model, TOK, "ab", 4))

    _assert_same(*_numpy_then_strict(run, device=False))


def test_optimal_policy_and_the_closed_form_run_match_numpy(strict):
    rng = np.random.default_rng(6)
    ref0 = rng.normal(size=(2, 5))
    ref0 -= np.log(np.exp(ref0).sum(-1, keepdims=True))
    r0 = rng.normal(size=(2, 5))

    def run():
        ref, r = backend.asarray(ref0), backend.asarray(r0)
        star = rlhf.optimal_policy(ref, r, 0.5)
        exact = [star, rlhf.log_partition(ref, r, 0.5), rlhf.rlhf_objective(star, ref, r, 0.5),
                 rlhf.implicit_reward(star, ref, 0.5), rlhf.kl_divergence(star, ref), rlhf.bradley_terry(r[0], r[1])]
        result = run_closed_form(pairs=2000, steps=20, log_every=5, progress=False)
        del result["seconds"]                                        # wall-clock times differ
        return exact, result

    _assert_same(*_numpy_then_strict(run))


# ---- host transfers per training step ---------------------------------------------------------

def _transfers_per_step(make_trainer, tmp_path):
    """The host transfers of one training step (logging every step): steps 2–3 of a run, minus step 1."""
    counts = []
    for steps in (1, 3):
        trainer = make_trainer(str(tmp_path / f"steps-{steps}"), steps)
        before = backend.host_transfers()
        trainer.train()
        counts.append(backend.host_transfers() - before)
    return (counts[1] - counts[0]) / 2


def _dpo(config):
    return lambda out, steps: DPOTrainer(GPT(config, seed=0), args=DPOConfig(
        output_dir=out, max_steps=steps, save_at_end=False, **RUN), train_dataset=PAIRS, tokenizer=TOK)


def test_a_dpo_step_moves_a_few_numbers_to_the_host_however_deep_the_model(strict, tmp_path, record_property):
    per_step = _transfers_per_step(_dpo(TINY), tmp_path / "shallow")
    deeper = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=3, n_head=2, n_embd=8)
    assert _transfers_per_step(_dpo(deeper), tmp_path / "deep") == per_step   # not one per parameter
    record_property("host_transfers_per_dpo_step", per_step)
    print(f"host transfers per DPO training step: {per_step:g}")
    assert 0 < per_step <= MAX_TRANSFERS_PER_STEP


@pytest.mark.parametrize("trainer", ["sft", "reward"])
def test_an_sft_or_reward_step_moves_a_few_numbers_to_the_host(strict, tmp_path, trainer, record_property):
    def make(out, steps):
        if trainer == "sft":
            return SFTTrainer(GPT(TINY, seed=0), args=SFTConfig(output_dir=out, max_steps=steps, save_at_end=False,
                                                                **RUN), train_dataset=RECORDS, tokenizer=TOK)
        return RewardTrainer(RewardModel(TINY, seed=0), args=RewardConfig(output_dir=out, max_steps=steps,
                                                                          save_at_end=False, **RUN),
                             train_dataset=PAIRS, tokenizer=TOK)

    per_step = _transfers_per_step(make, tmp_path)
    record_property(f"host_transfers_per_{trainer}_step", per_step)
    assert 0 < per_step <= MAX_TRANSFERS_PER_STEP


# ---- the commands, end to end ------------------------------------------------------------------------

STRICT_COMMANDS = {
    "gridworld": ["gridworld", "--iterations", "3", "--episodes", "4", "--horizon", "10", "--variance-episodes", "4",
                  "--variance-seeds", "2"],
    "gridworld --seeds": ["gridworld", "--iterations", "2", "--episodes", "3", "--horizon", "8", "--variance-episodes",
                          "3", "--variance-seeds", "1", "--seeds", "0-1"],
    "rlhf": ["rlhf", "--quick", "--steps", "4", "--pairs", "2000"],
    "exact-gpt": ["exact-gpt", "--quick", "--seeds", "0"],
    "successors": ["successors", "--quick", "--seeds", "0", "--steps", "20", "--pairs", "400"],
    "closed-form --seeds": ["closed-form", "--seeds", "0-1", "--pairs", "2000", "--steps", "20", "--figure", ""],
}


def _measured(path):
    """A command's --json without what may differ between two runs of it: times, the options, the threads."""
    def drop(x):
        if isinstance(x, dict):
            return {k: drop(v) for k, v in x.items() if "seconds" not in k and k not in ("options", "threads", "machine")}
        return [drop(v) for v in x] if isinstance(x, list) else x
    with open(path, encoding="utf-8") as f:
        return drop(json.load(f))


@pytest.mark.parametrize("name", STRICT_COMMANDS)
def test_the_commands_run_on_the_strict_backend_and_measure_what_numpy_measures(name, tmp_path, capsys):
    """gridworld, rlhf, exact-gpt, successors and closed-form --seeds keep every array of theirs on the
    device (the strict backend refuses any other), and print the same numbers to the bit as on NumPy."""
    from dpo_np.cli import main
    args = STRICT_COMMANDS[name]
    out = [] if "--figure" in args else ["--output-dir", ""]
    results = []
    previous = backend.backend_name()
    try:
        for which in ("numpy", "strict"):
            backend.set_backend(which)
            assert main([*args, *out, "--quiet", "--json", str(tmp_path / f"{which}.json")]) == 0, capsys.readouterr()
            results.append(_measured(tmp_path / f"{which}.json"))
    finally:
        backend.set_backend(previous)
    _assert_same(*results)


def test_figures_and_diagnose_run_on_the_strict_backend(strict, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from dpo_np.cli import main
    assert main(["figures", "--quick", "--only", "gridworld", "closed-form", "successors", "--output-dir",
                 str(tmp_path / "f")]) == 0
    assert sorted(os.listdir(tmp_path / "f")) == ["closed_form.png", "gridworld.png", "successors.png", "successors_gpt.png"]
    trainer = SFTTrainer(GPT(TINY, seed=0), args=SFTConfig(output_dir=str(tmp_path / "run"), max_steps=3,
                                                           **RUN), train_dataset=RECORDS, tokenizer=TOK)
    trainer.train()
    assert main(["diagnose", str(tmp_path / "run"), "--json", str(tmp_path / "d.json"), "--figure",
                 str(tmp_path / "d.png")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["steps"]["last"] == 3
