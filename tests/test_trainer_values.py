"""Every value the DPO trainer computes and logs, against a computation that shares none of its code.

The gradient checks of test_trainers.py hold dL/dθ against finite differences of the trainer's own
loss, so a loss that is consistently wrong would pass them. Here each value is computed again from
the model alone: one unpadded forward per response (no batch, no padding, no masks, no
``logprobs``), a log-softmax in NumPy, and each loss written out from its paper. At step 0
(π_ref = π_θ) every loss type has a closed form; after a few steps the policy has moved, and the
logged metrics of every step, and the evaluation, are held against the same formulas."""

import math

import numpy as np
import pytest

from dpo_np.data import format_prompt
from dpo_np.losses import LOSS_TYPES, REFERENCE_FREE_LOSS_TYPES
from dpo_np.model import GPT, GPTConfig
from dpo_np.tokenizer import CharTokenizer
from dpo_np.trainers import DPOTrainer

# responses of unequal lengths within each pair, so sums, means, |y_w| and LD-DPO's split all differ
PAIRS = [{"prompt": "ab", "chosen": "abc", "rejected": "c"},
         {"prompt": "cab", "chosen": "b", "rejected": "bacca"},
         {"prompt": "a", "chosen": "cc", "rejected": "b"},
         {"prompt": "bca", "chosen": "aab", "rejected": "cbab"},
         {"prompt": "cc", "chosen": "bcab", "rejected": "a"},
         {"prompt": "ba", "chosen": "ca", "rejected": "abcba"}]
EVAL_PAIRS = [{"prompt": "ac", "chosen": "ba", "rejected": "cab"}, {"prompt": "b", "chosen": "c", "rejected": "aa"},
              {"prompt": "cb", "chosen": "abca", "rejected": "b"}, {"prompt": "abc", "chosen": "a", "rejected": "bb"}]
TOK = CharTokenizer.from_corpus(format_prompt("") + "abc")
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=1, n_head=2, n_embd=8)
BETA = 0.3
LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
          "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected")


def _trainer(tmp_path, dtype=np.float64, ref_seed=None, **kw):
    args = dict(output_dir=str(tmp_path / "run"), max_length=18, max_prompt_length=12, show_progress=False,
                per_device_train_batch_size=3, per_device_eval_batch_size=3, learning_rate=2e-2, beta=BETA,
                logging_steps=1, save_at_end=False)
    args.update(kw)
    ref = None if ref_seed is None else GPT(TINY, seed=ref_seed, dtype=dtype)
    return DPOTrainer(GPT(TINY, seed=0, dtype=dtype), ref, args=args, train_dataset=PAIRS,
                      eval_dataset=EVAL_PAIRS, tokenizer=TOK)


# ---- log-probabilities from the model alone ----------------------------------------------------

def response_logits(model, prompt_ids, response_ids):
    """The logits that predict each response token, (|y|, V), from ONE forward of x ⊕ y alone."""
    ids = np.array([list(prompt_ids) + list(response_ids)])
    return model.forward(ids, cache=False)[0][len(prompt_ids) - 1:-1].astype(np.float64)


def token_logps(z, response_ids):
    """log π(y_t | x, y_<t) per token and the full log-softmax, (|y|,) and (|y|, V)."""
    logp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    return logp[np.arange(len(response_ids)), response_ids], logp


def sequence_logp(tokens, other_length, average, ld_alpha):
    """log π(y|x) as the loss reads it: Σ_t (DPO), the mean (IPO, sigmoid_norm), or LD-DPO's
    Σ_{t ≤ ℓ_p} + α Σ_{t > ℓ_p} with ℓ_p the shorter response's length (then the mean if asked)."""
    if ld_alpha is None:
        total = tokens.sum()
    else:
        public = min(len(tokens), other_length)
        total = tokens[:public].sum() + ld_alpha * tokens[public:].sum()
    return total / len(tokens) if average else total


def independent_quantities(trainer, features, policy, reference):
    """Per pair: pw, pl (policy, as the loss reads them), rw, rl (reference: plain sum or mean),
    |y_w|, WPO's weight, and the response-logit sums and counts of each side."""
    a = trainer.args
    q = {k: [] for k in ("pw", "pl", "rw", "rl", "len_w", "wpo", "zsum_w", "zn_w", "zsum_l", "zn_l")}
    for f in features:
        zw, zl = (response_logits(policy, f["prompt_ids"], f[k]) for k in ("chosen_ids", "rejected_ids"))
        (tw, lw), (tl, ll) = token_logps(zw, f["chosen_ids"]), token_logps(zl, f["rejected_ids"])
        q["pw"].append(sequence_logp(tw, len(tl), a.average_log_prob, a.ld_alpha))
        q["pl"].append(sequence_logp(tl, len(tw), a.average_log_prob, a.ld_alpha))
        for key, ids in (("rw", f["chosen_ids"]), ("rl", f["rejected_ids"])):
            if a.reference_free:
                q[key].append(0.0)                                  # log π_ref ≡ 0
            else:
                ref_tokens, _ = token_logps(response_logits(reference, f["prompt_ids"], ids), ids)
                q[key].append(ref_tokens.mean() if a.average_log_prob else ref_tokens.sum())
        # WPO (Zhou et al. 2024, eq. 2): ℓ̄(y) = mean_t [log p(y_t) − log Σ_v p_v²], w = min(1, e^{ℓ̄_w + ℓ̄_l})
        mean_w, mean_l = ((t - np.log((np.exp(lp) ** 2).sum(-1))).mean() for t, lp in ((tw, lw), (tl, ll)))
        q["wpo"].append(min(1.0, math.exp(mean_w + mean_l)))
        q["len_w"].append(len(f["chosen_ids"]))
        q["zsum_w"].append(zw.sum()), q["zn_w"].append(zw.size)
        q["zsum_l"].append(zl.sum()), q["zn_l"].append(zl.size)
    return {k: np.array(v, dtype=np.float64) for k, v in q.items()}


# ---- the losses, from their papers ---------------------------------------------------------------

def logsig(z):
    return -np.logaddexp(0.0, -z)


def sig(z):
    return np.exp(logsig(z))


def f_score(rho_w, rho_l, kind, alpha):
    """h = f'(u_w) − f'(u_l), u = π_θ/π_ref = e^ρ (f-DPO, Wang et al. 2023, Table 1)."""
    f_prime = {"reverse_kl": lambda u: np.log(u) + 1, "forward_kl": lambda u: -1 / u,
               "js_divergence": lambda u: np.log(2 * u / (1 + u)),
               "alpha_divergence": lambda u: (1 - u ** -alpha) / alpha}[kind]
    return f_prime(np.exp(rho_w)) - f_prime(np.exp(rho_l))


def paper_loss(kind, q, a, delta):
    """ℓ per pair for one loss type; β, ε, τ from the config ``a``; δ BCO's shift."""
    beta, eps, tau, gamma = a.beta, a.label_smoothing, a.discopop_tau, a.simpo_gamma
    rho_w, rho_l = q["pw"] - q["rw"], q["pl"] - q["rl"]
    h = f_score(rho_w, rho_l, a.f_divergence_type, a.f_alpha_divergence_coef)
    z, half = beta * h, 1 / (2 * beta)
    smoothed = lambda x: -(1 - eps) * logsig(x) - eps * logsig(-x)          # noqa: E731 (cDPO, Mitchell 2023)
    if kind in ("sigmoid", "sigmoid_norm"):
        return smoothed(z)                                                  # DPO eq. 7
    if kind == "robust":                                                    # rDPO, Chowdhury et al. 2024
        return ((1 - eps) * -logsig(z) - eps * -logsig(-z)) / (1 - 2 * eps)
    if kind == "hinge":                                                     # SLiC-HF
        return np.maximum(0.0, 1 - z)
    if kind == "ipo":                                                       # Azar et al. 2023, eq. 17
        return (h - half) ** 2
    if kind == "bco_pair":                                                  # Jung et al. 2024
        return -logsig(beta * rho_w - delta) - logsig(-(beta * rho_l - delta))
    if kind == "nca_pair":                                                  # Chen et al. 2024
        return -logsig(beta * rho_w) - 0.5 * logsig(-beta * rho_w) - 0.5 * logsig(-beta * rho_l)
    if kind == "sppo_hard":                                                 # Wu et al. 2024
        return (rho_w - half) ** 2 + (rho_l + half) ** 2
    if kind == "exo_pair":                                                  # Ji et al. 2024, eq. 16
        e = eps or 1e-3
        return sig(z) * (logsig(z) - np.log(1 - e)) + sig(-z) * (logsig(-z) - np.log(e))
    if kind == "apo_zero":                                                  # D'Oosterlinck et al. 2024, eq. 7
        return 1 - sig(beta * rho_w) + sig(beta * rho_l)
    if kind == "apo_down":                                                  # eq. 8
        return sig(beta * rho_w) + 1 - sig(beta * (rho_w - rho_l))
    if kind == "aot":                                                       # Melnyk et al. 2024
        return smoothed(beta * (np.sort(q["pw"] - q["pl"]) - np.sort(q["rw"] - q["rl"])))
    if kind == "aot_unpaired":
        return smoothed(beta * (np.sort(rho_w) - np.sort(rho_l)))
    if kind == "discopop":                                                  # Lu et al. 2024, eq. 5
        m = sig(z / tau)
        return (1 - m) * -logsig(z) + m * np.exp(-z)
    if kind == "sft":                                                       # RPO's NLL term
        return -q["pw"] if a.average_log_prob else -q["pw"] / q["len_w"]
    if kind == "simpo":                       # Meng et al. 2024: β·(mean log π(y_w) − mean log π(y_l)) − γ
        return smoothed(beta * q["pw"] - beta * q["pl"] - gamma)
    if kind == "orpo":                        # Hong et al. 2024: NLL + λ·odds ratio, odds of e^{mean log π}
        p_w, p_l = np.exp(q["pw"]), np.exp(q["pl"])
        return -q["pw"] - beta * logsig(np.log(p_w / (1 - p_w)) - np.log(p_l / (1 - p_l)))
    raise AssertionError(kind)


def expected_values(trainer, features, policy, reference, delta=0.0, batch_size=None):
    """The per-pair losses and every logged metric of ``features``, computed independently. AOT's sort
    couples the pairs of one batch, so its losses are computed batch by batch (``batch_size``)."""
    a = trainer.args
    batch_size = batch_size or len(features)
    chunks = [independent_quantities(trainer, features[i:i + batch_size], policy, reference)
              for i in range(0, len(features), batch_size)]
    weights = a.loss_weights or [1.0] * len(a.loss_kinds)
    losses = np.concatenate([sum(w * paper_loss(kind, c, a, delta) for kind, w in zip(a.loss_kinds, weights))
                             * (c["wpo"] if a.use_weighting else 1.0) for c in chunks])
    q = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    chosen, rejected = a.beta * (q["pw"] - q["rw"]), a.beta * (q["pl"] - q["rl"])   # DPO eq. 5, once
    return {"losses": losses, "chosen_rewards": chosen, "rejected_rewards": rejected,
            "loss": losses.mean(), "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).mean(), "rewards/margins": (chosen - rejected).mean(),
            "logps/chosen": q["pw"].mean(), "logps/rejected": q["pl"].mean(),
            "logits/chosen": q["zsum_w"].sum() / q["zn_w"].sum(),
            "logits/rejected": q["zsum_l"].sum() / q["zn_l"].sum()}


# ---- step 0: π_ref = π_θ, every reward 0, every loss its closed form -----------------------------

def step0_loss(kind, beta, eps, sft_nll):
    """The loss of a pair with h = ρ_w = ρ_l = 0, worked out by hand."""
    e = eps or 1e-3
    return {"sigmoid": math.log(2), "sigmoid_norm": math.log(2), "robust": math.log(2), "hinge": 1.0,
            "ipo": (1 / (2 * beta)) ** 2, "bco_pair": 2 * math.log(2), "nca_pair": 2 * math.log(2),
            "sppo_hard": 2 * (1 / (2 * beta)) ** 2,
            "exo_pair": -math.log(2) - 0.5 * math.log(1 - e) - 0.5 * math.log(e),
            "apo_zero": 1.0, "apo_down": 1.0, "aot": math.log(2), "aot_unpaired": math.log(2),
            "discopop": (math.log(2) + 1) / 2, "sft": sft_nll}[kind]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", [k for k in LOSS_TYPES if k not in REFERENCE_FREE_LOSS_TYPES])
def test_at_step0_every_loss_type_has_zero_rewards_and_its_closed_form_value(tmp_path, kind, dtype):
    trainer = _trainer(tmp_path, dtype=dtype, loss_type=kind, max_steps=1)     # ref_model=None: a frozen copy
    out = trainer.batch_outputs(np.arange(len(PAIRS)))
    assert np.all(out["chosen_rewards"] == 0) and np.all(out["rejected_rewards"] == 0)
    q = independent_quantities(trainer, trainer.train_features, trainer.model, trainer.ref_model)
    sft_nll = -q["pw"] if trainer.args.average_log_prob else -q["pw"] / q["len_w"]   # the policy's NLL per token
    expected = np.broadcast_to(step0_loss(kind, BETA, 0.0, sft_nll), (len(PAIRS),))
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(out["losses"], expected, **tol)
    trainer.train()                                                            # and as the first step logs it
    row = trainer.state["log_history"][0]
    first = [trainer.train_features[i] for i in trainer.batch_for_step(0)]
    assert row["rewards/chosen"] == row["rewards/rejected"] == row["rewards/margins"] == 0.0
    assert row["rewards/accuracies"] == 0.0                                   # a tie is not a correct ranking
    if kind != "sft":
        assert row["loss"] == pytest.approx(step0_loss(kind, BETA, 0.0, None), **{"rel": tol["rtol"]})
    else:
        q = independent_quantities(trainer, first, GPT(TINY, seed=0, dtype=dtype), trainer.ref_model)
        assert row["loss"] == pytest.approx(float((-q["pw"] / q["len_w"]).mean()), rel=tol["rtol"])


@pytest.mark.parametrize("settings", [dict(label_smoothing=0.1), dict(loss_type="robust", label_smoothing=0.2),
                                      dict(loss_type="exo_pair", label_smoothing=0.1),
                                      dict(f_divergence_type="js_divergence"),
                                      dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.6),
                                      dict(f_divergence_type="forward_kl", loss_type="hinge"),
                                      dict(ld_alpha=0.4), dict(use_weighting=True)],
                         ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_at_step0_smoothing_f_divergences_ld_and_wpo_keep_the_closed_form(tmp_path, settings):
    """ε, every f (f'(1) − f'(1) = 0) and LD-DPO's weighting leave h = 0 at π_θ = π_ref; WPO multiplies
    log 2 by each pair's own weight."""
    trainer = _trainer(tmp_path, **settings)
    a = trainer.args
    out = trainer.batch_outputs(np.arange(len(PAIRS)))
    # LD-DPO re-weights π_θ only, so its rewards are not 0 at step 0: h is then computed, not assumed
    q = independent_quantities(trainer, trainer.train_features, trainer.model, trainer.ref_model)
    if a.ld_alpha is None:
        assert np.all(out["chosen_rewards"] == 0) and np.all(out["rejected_rewards"] == 0)
        expected = step0_loss(a.loss_kinds[0], BETA, a.label_smoothing, None) * (q["wpo"] if a.use_weighting else 1.0)
    else:
        expected = paper_loss("sigmoid", q, a, 0.0)
    np.testing.assert_allclose(out["losses"], np.broadcast_to(expected, (len(PAIRS),)), rtol=1e-12, atol=1e-14)


def test_reference_free_at_step0_scores_the_policy_itself(tmp_path):
    """With log π_ref ≡ 0 the rewards are β log π_θ and h = log π_θ(y_w) − log π_θ(y_l), even at step 0."""
    trainer = _trainer(tmp_path, reference_free=True)
    out = trainer.batch_outputs(np.arange(len(PAIRS)))
    q = independent_quantities(trainer, trainer.train_features, trainer.model, None)
    np.testing.assert_allclose(out["chosen_rewards"], BETA * q["pw"], rtol=1e-12)
    np.testing.assert_allclose(out["rejected_rewards"], BETA * q["pl"], rtol=1e-12)
    np.testing.assert_allclose(out["losses"], -logsig(BETA * (q["pw"] - q["pl"])), rtol=1e-12)


@pytest.mark.parametrize("kind", REFERENCE_FREE_LOSS_TYPES)
def test_simpo_and_orpo_keep_no_reference_and_score_the_averaged_policy_at_step0(tmp_path, kind):
    """SimPO and ORPO never read π_ref: the trainer keeps none, the rewards are β·mean_t log π_θ (as the
    standard CPO and ORPO trainers log them), and the loss is the paper's on those averages."""
    trainer = _trainer(tmp_path, loss_type=kind, simpo_gamma=0.7)
    assert trainer.ref_model is None and trainer.args.reference_free and trainer.args.average_log_prob
    out = trainer.batch_outputs(np.arange(len(PAIRS)))
    q = independent_quantities(trainer, trainer.train_features, trainer.model, None)
    assert np.all(q["rw"] == 0)
    np.testing.assert_allclose(out["chosen_rewards"], BETA * q["pw"], rtol=1e-12)
    np.testing.assert_allclose(out["rejected_rewards"], BETA * q["pl"], rtol=1e-12)
    np.testing.assert_allclose(out["losses"], paper_loss(kind, q, trainer.args, 0.0), rtol=1e-12)
    lengths = np.array([len(f["chosen_ids"]) for f in trainer.train_features])
    summed = independent_quantities(_trainer(tmp_path / "sum", reference_free=True), trainer.train_features,
                                    trainer.model, None)["pw"]
    np.testing.assert_allclose(q["pw"], summed / lengths, rtol=1e-12)            # the per-token mean


# ---- a moved policy: every logged value of every step, and the evaluation -------------------------

def record_expected(trainer):
    """Wrap ``training_step`` so each step first computes, independently and from θ as it is then,
    what that step should log. TR-DPO's reference and BCO's δ are tracked here too, by their
    definitions, not read from the trainer."""
    a, log, seen, synced = trainer.args, [], [], [0]
    reference = None if a.reference_free else {k: p.copy() for k, p in trainer.ref_model.params.items()}
    original = trainer.training_step

    def catch_up():
        """TR-DPO: after every ref_model_sync_steps-th update, θ_ref ← αθ + (1 − α)θ_ref."""
        done = trainer.state["step"]
        if a.sync_ref_model and done and done % a.ref_model_sync_steps == 0 and synced[0] != done:
            synced[0] = done
            for k, p in trainer.model.params.items():
                reference[k] = a.ref_model_mixup_alpha * p + (1 - a.ref_model_mixup_alpha) * reference[k]
        return _model_with(reference, trainer.model.dtype)

    def step(idx):
        ref = catch_up()
        features = [trainer.train_features[int(i)] for i in idx]
        q = expected_values(trainer, features, trainer.model, ref)
        seen.extend(np.concatenate([q["chosen_rewards"], q["rejected_rewards"]]))   # BCO: every reward once
        log.append(expected_values(trainer, features, trainer.model, ref, delta=float(np.mean(seen))))
        return original(idx)

    trainer.training_step = step
    return log, seen, catch_up


def _model_with(params, dtype):
    if params is None:
        return None
    model = GPT(TINY, dtype=dtype)
    for k, p in params.items():
        model.params[k] = p.copy()
    return model


VARIANTS = {**{kind: dict(loss_type=kind) for kind in LOSS_TYPES},
            "sigmoid-cdpo": dict(label_smoothing=0.1),
            "robust-eps": dict(loss_type="robust", label_smoothing=0.2),
            "exo_pair-eps": dict(loss_type="exo_pair", label_smoothing=0.1),
            "aot-eps": dict(loss_type="aot", label_smoothing=0.1),
            "aot_unpaired-eps": dict(loss_type="aot_unpaired", label_smoothing=0.2),
            "sigmoid_norm-eps": dict(loss_type="sigmoid_norm", label_smoothing=0.1),
            "reference_free": dict(reference_free=True),
            "bco_pair-reference_free": dict(loss_type="bco_pair", reference_free=True),
            "ref_model_given": dict(ref_seed=5),
            "precomputed_reference": dict(ref_seed=5, precompute_ref_log_probs=True),
            "js": dict(f_divergence_type="js_divergence"),
            "alpha": dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.6),
            "forward_kl": dict(f_divergence_type="forward_kl"),
            "ipo-js": dict(loss_type="ipo", f_divergence_type="js_divergence"),
            "hinge-alpha": dict(loss_type="hinge", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5),
            "robust-forward_kl": dict(loss_type="robust", label_smoothing=0.1, f_divergence_type="forward_kl"),
            "exo_pair-js": dict(loss_type="exo_pair", f_divergence_type="js_divergence"),
            "discopop-tau": dict(loss_type="discopop", discopop_tau=0.5),
            "ld_alpha": dict(ld_alpha=0.3),
            "ld_alpha-ipo": dict(ld_alpha=0.5, loss_type="ipo"),
            "wpo": dict(use_weighting=True),
            "wpo-ipo": dict(use_weighting=True, loss_type="ipo"),
            "rpo": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
            "simpo-gamma-eps": dict(loss_type="simpo", simpo_gamma=1.2, label_smoothing=0.1),
            "cpo_simpo": dict(loss_type=["simpo", "sft"], loss_weights=[1.0, 0.5]),
            "mixed": dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]),
            "trdpo": dict(sync_ref_model=True, ref_model_mixup_alpha=0.4, ref_model_sync_steps=2),
            "trdpo-hard": dict(sync_ref_model=True, ref_model_mixup_alpha=1.0, ref_model_sync_steps=1)}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_logged_value_of_every_step_and_the_evaluation_match_an_independent_computation(tmp_path, name):
    trainer = _trainer(tmp_path, max_steps=5, **VARIANTS[name])
    log, seen, reference = record_expected(trainer)
    trainer.train()
    rows = [r for r in trainer.state["log_history"] if "loss" in r]
    assert len(rows) == len(log) == 5
    for step, (row, want) in enumerate(zip(rows, log), start=1):
        for metric in LOGGED:
            assert row[metric] == pytest.approx(want[metric], rel=1e-9, abs=1e-12), (step, metric)
    # the values were checked at a policy that had moved (TR-DPO's hard sync keeps π_ref = π_θ)
    assert abs(rows[-1]["logps/chosen"] - rows[0]["logps/chosen"]) > 1e-4
    assert abs(rows[-1]["rewards/margins"]) > 1e-4 or name == "trdpo-hard"
    # the evaluation: per-pair quantities averaged over all 4 pairs (eval chunks of 3 and 1)
    want = expected_values(trainer, trainer.eval_features, trainer.model, reference(),
                           delta=float(np.mean(seen)) if seen else 0.0, batch_size=3)
    got = trainer.evaluate()
    for metric in LOGGED:
        assert got["eval/" + metric] == pytest.approx(want[metric], rel=1e-9, abs=1e-12), metric
    # and per pair, as batch_outputs reports them (all four in one batch)
    want = expected_values(trainer, trainer.eval_features, trainer.model, reference(),
                           delta=float(np.mean(seen)) if seen else 0.0)
    out = trainer.batch_outputs(np.arange(len(EVAL_PAIRS)), "eval")
    for key in ("losses", "chosen_rewards", "rejected_rewards"):
        np.testing.assert_allclose(out[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_rpo_term_divides_by_the_chosen_length_on_pairs_of_unequal_length(tmp_path):
    """ℓ_RPO = −log σ(βh) − w log π_θ(y_w|x)/|y_w|: |y_w| is the chosen response's token count, not
    the rejected one's nor the longer one's (the pairs here differ, so a wrong length would show)."""
    trainer = _trainer(tmp_path, ref_seed=5, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.7])
    features = trainer.train_features
    lengths_w = np.array([len(f["chosen_ids"]) for f in features])
    lengths_l = np.array([len(f["rejected_ids"]) for f in features])
    assert np.all(lengths_w != lengths_l)
    q = independent_quantities(trainer, features, trainer.model, trainer.ref_model)
    dpo = -logsig(BETA * ((q["pw"] - q["rw"]) - (q["pl"] - q["rl"])))
    out = trainer.batch_outputs(np.arange(len(PAIRS)))
    np.testing.assert_allclose(out["losses"], dpo + 0.7 * -q["pw"] / lengths_w, rtol=1e-12)
    for wrong in (lengths_l, np.maximum(lengths_w, lengths_l)):
        assert not np.allclose(out["losses"], dpo + 0.7 * -q["pw"] / wrong, rtol=1e-6)


def test_logged_logits_are_the_mean_logit_over_the_positions_that_predict_the_response(tmp_path):
    """logits/chosen = Σ of every vocabulary logit at the positions predicting y_w, over all of them."""
    trainer = _trainer(tmp_path, ref_seed=5)
    out = trainer.batch_outputs(np.arange(len(PAIRS)))
    for side, key in (("chosen", "chosen_ids"), ("rejected", "rejected_ids")):
        blocks = [response_logits(trainer.model, f["prompt_ids"], f[key]) for f in trainer.train_features]
        assert out[f"{side}_logit_count"] == sum(b.size for b in blocks) == \
            TOK.vocab_size * sum(len(f[key]) for f in trainer.train_features)
        np.testing.assert_allclose(out[f"{side}_logit_sum"], sum(b.sum() for b in blocks), rtol=1e-12)
