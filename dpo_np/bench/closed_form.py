"""How long the exact RLHF optimum takes when every response is enumerated.

For V = 8, L = 6 there are 8^6 = 262,144 responses per prompt. The benchmark
times, separately and vectorized in log space:

- ``enumerate``: listing every response (``toy_problem.enumerate_responses``);
- ``reference``: exact log π_ref(y|x) from the autoregressive table, a sum of
  L next-token log-probabilities per response (``toy_problem.sequence_logprobs``);
- ``rewards``: the known reward r(x, y) of every response (``toy_problem.random_rewards``);
- ``optimal``: log Z(x), log π*(y|x) and J(π*) (DPO paper eq. 4, ``rlhf.py``).

Each is the best of ``repeats`` runs (the least disturbed by other work on the
machine), with the median beside it. It also reports how far J(π*) is from
β log Z(x), which should be rounding error even with rewards in the hundreds.
"""

import statistics
import sys
import time

import numpy as np

from dpo_np import backend, rlhf
from dpo_np.experiments import toy_problem


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if backend.backend_name() == "cupy":      # wait for the device before reading the clock
            backend.xp().cuda.Stream.null.synchronize()
        times.append(time.perf_counter() - t)
    return out, times


def bench_closed_form(vocab_size=8, length=6, n_prompts=4, beta=0.1, repeats=5, seed=0, reward_scale=30.0,
                      file=None, verbose=True):
    """Time π*, log Z and J computed exactly over all V^L responses × P prompts; returns a dict.

    ``reward_scale`` = 30 puts rewards in the hundreds, so r/β reaches the
    thousands: the point is that log space keeps it finite. The dict has, per
    stage ("enumerate", "reference", "rewards", "optimal"), the best and median
    seconds, plus "total_best", "n_responses", the largest |J(π*) − β log Z(x)| and the config.
    """
    repeats = int(repeats)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    beta = rlhf.check_beta(beta)
    out = sys.stdout if file is None else file

    responses, t_enum = _timed(lambda: toy_problem.enumerate_responses(vocab_size, length), repeats)
    table = toy_problem.random_reference_table(n_prompts, vocab_size, length, seed=seed)       # (P, L, V+1, V)
    ref_logprobs, t_ref = _timed(lambda: toy_problem.sequence_logprobs(table, responses), repeats)    # (P, N)
    rewards, t_rew = _timed(lambda: toy_problem.random_rewards(responses, n_prompts, vocab_size, seed=seed + 1,
                                                       scale=reward_scale), repeats)        # (P, N)

    def optimum():
        log_z = rlhf.log_partition(ref_logprobs, rewards, beta)                         # (P,)
        log_star = rlhf.optimal_policy(ref_logprobs, rewards, beta)                     # (P, N)
        objective = rlhf.rlhf_objective(log_star, ref_logprobs, rewards, beta)          # (P,)
        return log_z, log_star, objective

    (log_z, log_star, objective), t_opt = _timed(optimum, repeats)

    stages = {"enumerate": t_enum, "reference": t_ref, "rewards": t_rew, "optimal": t_opt}
    result = {name: {"best": min(t), "median": statistics.median(t)} for name, t in stages.items()}
    result["total_best"] = sum(result[name]["best"] for name in stages)
    result["n_responses"] = int(responses.shape[0])
    gap = backend.to_numpy(objective - beta * log_z)
    result["max_abs_objective_minus_beta_log_z"] = float(np.max(np.abs(gap)))
    result["all_finite"] = bool(np.all(np.isfinite(backend.to_numpy(log_star))))
    result["reward_range"] = (float(rewards.min()), float(rewards.max()))
    result["config"] = {"vocab_size": vocab_size, "length": length, "n_prompts": n_prompts, "beta": beta,
                        "repeats": repeats, "seed": seed, "reward_scale": reward_scale,
                        "backend": backend.backend_name()}
    if verbose:
        print(f"closed form, exact: V={vocab_size} L={length} → {result['n_responses']:,} responses × "
              f"{n_prompts} prompts, β={beta:g}, rewards in [{result['reward_range'][0]:.0f}, "
              f"{result['reward_range'][1]:.0f}] ({backend.backend_name()}, best of {repeats})", file=out)
        for name, label in (("enumerate", "enumerate responses"), ("reference", "log π_ref from table"),
                            ("rewards", "rewards r(x, y)"), ("optimal", "log Z, log π*, J(π*)")):
            print(f"  {label:<22} {result[name]['best'] * 1e3:8.1f} ms  (median "
                  f"{result[name]['median'] * 1e3:.1f} ms)", file=out)
        print(f"  {'total':<22} {result['total_best'] * 1e3:8.1f} ms;  max |J(π*) − β log Z| = "
              f"{result['max_abs_objective_minus_beta_log_z']:.1e}, all finite: {result['all_finite']}",
              file=out)
    return result
