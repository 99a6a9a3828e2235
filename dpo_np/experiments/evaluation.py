"""Measuring a trained policy against its reference: sampled KL, implicit rewards, answers.

What the notes' objective and the DPO paper's metrics ask about a policy π_θ after training,
each computed from the models alone:

- KL(π_θ ‖ π_ref) over whole responses (``estimate_kl``): the penalty term of the RLHF
  objective, estimated from responses sampled from π_θ;
- the implicit reward r̂(x, y) = β log π_θ(y|x)/π_ref(y|x) of held-out pairs (DPO paper eq. 5)
  and its pair accuracy (``implicit_reward_metrics``);
- a reward model's own pair accuracy (``reward_model_scores``);
- the policy's own answers, sampled and greedy, judged by the toy data's gold judge
  (``judged_answers``, ``toy_preferences.judge``), and accuracies split by the family of rules that
  made a pair (``accuracy_by_family``).
"""

import math

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks
from dpo_np.data import format_prompt, prompt_template_of
from dpo_np.experiments import toy_preferences
from dpo_np.generate import generate


# ---- KL(π_θ ‖ π_ref) over whole responses ----------------------------------------------------

def sample_responses(model, tokenizer, prompts, n_samples=1, seed=0, max_new_tokens=None, do_sample=True):
    """y ~ π_θ(·|x), ``n_samples`` per prompt, at temperature 1 with nothing filtered (exact π_θ);
    with ``do_sample=False`` the greedy response instead (one is enough: it is the same every time).

    Each response stops right after the end token, or after ``max_new_tokens`` tokens (None: as
    many as ``block_size`` leaves after the prompt). Prompts of one token length are sampled as
    one batch (``generate.generate``), with the generator seeded by (seed, that length), so the
    result depends only on ``seed`` and the prompts. Returns a list of
    ``(prompt_ids, response_ids)``, ``n_samples`` consecutive entries per prompt, in prompt order.
    """
    checks.integer(n_samples, "n_samples", low=1)
    encoded = [tokenizer.encode(format_prompt(p, prompt_template_of(tokenizer))) for p in prompts]
    out = [None] * (len(encoded) * n_samples)
    by_length = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    for length, members in sorted(by_length.items()):
        room = model.config.block_size - length
        if room <= 0:
            raise ValueError(f"prompts: {prompts[members[0]]!r} is {length} tokens, no room left in "
                             f"block_size={model.config.block_size}")
        n_new = room if max_new_tokens is None else min(int(max_new_tokens), room)
        rows = [i for i in members for _ in range(n_samples)]
        idx = np.array([encoded[i] for i in rows], dtype=np.int64)               # (rows, length)
        seqs = generate(model, idx, n_new, do_sample=do_sample, eos_token_id=tokenizer.eos_token_id,
                        seed=[seed, length])
        for k, (i, seq) in enumerate(zip(rows, seqs)):
            out[i * n_samples + k % n_samples] = (encoded[i], seq[length:])
    return out


def per_token_kl(policy, ref, samples, pad_token_id=0, chunk=64):
    """Σ_t KL(π_θ(·|x, y_<t) ‖ π_ref(·|x, y_<t)) over each sample's response positions: (N,) float64.

    One forward of each model over the padded x ⊕ y rows; the logits at position t predict token
    t + 1, so the response's |y| next-token distributions are read at positions P−1 … P+|y|−2.
    Each term is Σ_v π_θ(v) (log π_θ(v) − log π_ref(v)) over the whole vocabulary, in float64,
    from log-softmax (never the log of a softmax).
    """
    xp = backend.xp()
    values = []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        T = max(len(p) + len(r) for p, r in part)
        ids = np.full((len(part), T), pad_token_id, dtype=np.int64)              # (N, T)
        mask = np.zeros((len(part), T), dtype=np.int64)
        scored = np.zeros((len(part), T), dtype=bool)    # positions whose logits predict a response token
        for i, (p, r) in enumerate(part):
            ids[i, :len(p) + len(r)] = list(p) + list(r)
            mask[i, :len(p) + len(r)] = 1
            scored[i, len(p) - 1:len(p) + len(r) - 1] = True
        ids_b, mask_b = backend.asarray(ids), backend.asarray(mask)
        lp = _log_softmax64(policy.forward(ids_b, mask_b, cache=False))          # (N, T, V)
        lq = _log_softmax64(ref.forward(ids_b, mask_b, cache=False))
        kl_t = (xp.exp(lp) * (lp - lq)).sum(axis=-1)                             # (N, T)
        values.append(backend.to_numpy(xp.where(backend.asarray(scored), kl_t, 0.0).sum(axis=1)))
    return np.concatenate(values) if values else np.zeros(0)


def _log_softmax64(logits):
    return ag.log_softmax(logits.astype("float64"), axis=-1).data     # a constant: no graph is built


def estimate_kl(policy, ref, tokenizer, prompts, n_samples=4, seed=0, max_new_tokens=None):
    """KL(π_θ ‖ π_ref) of whole responses, averaged over ``prompts``: a Monte Carlo estimate.

    The KL term of the RLHF objective (the notes; DPO paper eq. 3) is over whole responses,
        KL(x) = Σ_y π_θ(y|x) log π_θ(y|x)/π_ref(y|x),
    a sum over every y: too many to enumerate. Both log-probabilities are sums over tokens, so
    by the chain rule of KL
        KL(x) = E_{y∼π_θ(·|x)} [ Σ_t KL(π_θ(·|x, y_<t) ‖ π_ref(·|x, y_<t)) ],
    the expected sum of the next-token KLs along a response drawn from π_θ. This estimator draws
    y ∼ π_θ (seeded, ending with the end token) and averages that sum. It is unbiased, like the
    plain log π_θ(y|x) − log π_ref(y|x) of the same draws, but each of its terms is the exact
    expectation, given y_<t, of the corresponding log-ratio term (the next token is averaged out
    instead of sampled), which removes that token's sampling noise; and, unlike the plain
    log-ratio, it is never negative. With ``max_new_tokens`` set (or a full block), a response cut before its end
    token counts its first tokens only: the estimate is then of the KL of the first
    ``max_new_tokens`` tokens, a lower bound of the whole.

    Returns ``{"kl", "stderr", "per_sample" (N,), "lengths" (N,), "ended", "n", "samples"}``: the
    mean over the N = len(prompts)·n_samples draws, its standard error, the fraction of draws that
    ended with the end token, and the draws themselves (``sample_responses``'s list).
    """
    samples = sample_responses(policy, tokenizer, prompts, n_samples, seed, max_new_tokens)
    values = per_token_kl(policy, ref, samples, tokenizer.pad_token_id)
    n = len(values)
    if n == 0:
        raise ValueError("prompts is empty: no response to estimate the KL on")
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    eos = tokenizer.eos_token_id
    return {"kl": float(values.mean()), "stderr": stderr, "per_sample": values,
            "lengths": np.array([len(r) for _, r in samples]),
            "ended": float(np.mean([len(r) > 0 and r[-1] == eos for _, r in samples])), "n": n,
            "samples": samples}


def answer_texts(samples, tokenizer):
    """The text of each sampled response, or None where it was cut before its end token (an
    unfinished answer, which the judge counts as following neither rule)."""
    eos = tokenizer.eos_token_id
    return [tokenizer.decode(r) if len(r) and r[-1] == eos else None for _, r in samples]


def judged_answers(model, tokenizer, prompts, n_samples, seed, max_new_tokens=None, samples=None):
    """The gold judge (``toy_preferences.judge_shares``) on π_θ's answers to ``prompts``: sampled
    (``n_samples`` each at temperature 1, or the ``samples`` already drawn) and greedy. Returns
    ``{"sampled": shares, "greedy": shares, "greedy_answers": {prompt: text}}``."""
    if samples is None:
        samples = sample_responses(model, tokenizer, prompts, n_samples, seed, max_new_tokens)
    greedy = answer_texts(sample_responses(model, tokenizer, prompts, 1, seed, max_new_tokens, do_sample=False),
                          tokenizer)
    sampled_prompts = [p for p in prompts for _ in range(len(samples) // max(1, len(prompts)))]
    return {"sampled": toy_preferences.judge_shares(sampled_prompts, answer_texts(samples, tokenizer)),
            "greedy": toy_preferences.judge_shares(list(prompts), greedy),
            "greedy_answers": dict(zip(prompts, greedy))}


# ---- the held-out comparisons ---------------------------------------------------------------

def implicit_reward_metrics(trainer, records):
    """Per-pair measurements of preference ``records`` under a ``DPOTrainer``'s π_θ and π_ref.

    r̂(x, y) = β (log π_θ(y|x) − log π_ref(y|x)) (DPO paper eq. 5) for y_w and y_l of each pair,
    scored exactly as training scores them (``DPOTrainer.batch_outputs`` with the trainer's own
    settings). Returns the accuracy r̂_w > r̂_l (a tie counts as a miss), the number of exact ties,
    the mean margin r̂_w − r̂_l, the accuracy of log π_θ(y_w|x) > log π_θ(y_l|x), the DPO loss, and
    the arrays themselves.
    """
    outs = trainer.measure(records)
    if any(not math.isfinite(o["loss"]) for o in outs):
        raise ValueError("non-finite log-probabilities on the pairs measured")
    r_w, r_l = _concat(outs, "chosen_rewards"), _concat(outs, "rejected_rewards")
    lp_w, lp_l = _concat(outs, "chosen_logps"), _concat(outs, "rejected_logps")
    losses = _concat(outs, "losses")
    return {"pairs": len(r_w), "implicit_reward_accuracy": float(np.mean(r_w > r_l)),
            "implicit_reward_ties": int(np.sum(r_w == r_l)),
            "implicit_reward_margin": float(np.mean(r_w - r_l)),
            "logp_accuracy": float(np.mean(lp_w > lp_l)), "dpo_loss": float(losses.mean()),
            "chosen_rewards": r_w, "rejected_rewards": r_l, "chosen_logps": lp_w, "rejected_logps": lp_l}


def reward_model_scores(trainer, records):
    """r_φ(x, y_w) and r_φ(x, y_l) of preference ``records`` under a ``RewardTrainer``'s model: two (n,) arrays."""
    feats = trainer.tokenize(records)
    outs = [trainer.batch_outputs(feats, idx) for idx in trainer.eval_chunks(len(feats))]
    return _concat(outs, "chosen"), _concat(outs, "rejected")


def _concat(outs, key):
    """One float64 host array of ``key`` over a list of per-batch outputs."""
    return np.concatenate([backend.to_numpy(o[key]) for o in outs]).astype(np.float64)


def accuracy_by_family(records, wins):
    """{family: (wins, pairs)} of a boolean per record, by each record's ``"family"`` ("other" if none)."""
    out = {}
    for r, w in zip(records, wins):
        f = r.get("family", "other")
        won, n = out.get(f, (0, 0))
        out[f] = (won + int(bool(w)), n + 1)
    return out
