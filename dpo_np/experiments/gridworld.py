"""The notes' cat, as code: a grid world solved exactly, then learned from sampled episodes.

The RL set-up of the notes, with their names:

- agent: the cat; state s: the cat's cell; action a: one of the four moves
  (up, right, down, left); a move off the grid leaves the cat where it is;
- reward r(s, a), paid for the cell the move enters: an empty cell 0, the
  broom −1, the bathtub −10 (the cat faints: the episode is over, and the next
  one starts from the cat's start again), the meat +100. A move that leaves
  the cat in place enters no cell: 0;
- policy π(a|s): here a table of logits θ[s, a], π_θ(·|s) = softmax(θ[s]).

One rule is ours, not the notes': the meat ends the episode too (the cat eats).
The notes end an episode only at the bathtub and say of the meat just that it
pays +100; on a grid that went on, a cat could step off the meat and back on to
collect it again and again.

The notes' figure is not in their text, so the layout is ours (``LAYOUT``):

    C . . . .       C  the cat's start          B  the broom (−1)
    . . . . .       T  a bathtub (−10, faints)  M  the meat (+100)
    T T B T .
    . . . . .       A row of bathtubs splits the grid; its only gaps are the
    M . . . .       broom (column 2) and the far end (column 4).

Straight down is 4 moves but ends in a bathtub. The shortest way to the meat,
8 moves, passes the broom; avoiding the broom costs 12. With a discount γ the
broom path is worth −γ³ + 100γ⁷ and the detour 100γ¹¹, so γ decides: at the
default γ = 0.9 the cat takes the broom (47.10 against 31.38); from γ ≈ 0.998
on, the detour wins.

Two ways to a good policy:

- value iteration, exact: V*(s) = max_a [r(s, a) + γ V*(s')] (the Bellman
  optimality equation, with V* = 0 after the episode ends), iterated to a
  fixed point; the greedy policy argmax_a of the bracket is optimal;
- REINFORCE (``rl.reinforce_loss``), which never sees r or the moves, only
  sampled episodes: θ ← θ + α Σ_t γ^t (G_t − b(s_t)) ∇ log π_θ(a_t|s_t), with
  and without a baseline b.

On a tiny grid every episode can be listed, so the expectation of the
REINFORCE estimate and its variance are sums, not samples: the estimate's mean
is the exact ∇J (``enumerate_episodes``, ``expected_gradient``).
"""

import sys
import time
from dataclasses import dataclass

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, rl
from dpo_np.experiments import spread
from dpo_np.experiments.plots import save_figure
from dpo_np.optim import AdamW, cosine_schedule
from dpo_np.progress import progress as progress_bar

LAYOUT = ("C....",
          ".....",
          "TTBT.",
          ".....",
          "M....")
TINY_LAYOUT = ("C.B",          # small enough to list every episode of a few steps
               "T.M")
CELL_REWARDS = {".": 0.0, "C": 0.0, "B": -1.0, "T": -10.0, "M": 100.0}
ENDS_EPISODE = "TM"                                     # fainting in the bathtub, eating the meat
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))              # up, right, down, left: (Δrow, Δcolumn)
ARROWS = "↑→↓←"

DEFAULT_GAMMA = 0.9
DEFAULT_ITERATIONS = 800
DEFAULT_EPISODES = 32
DEFAULT_HORIZON = 40
DEFAULT_LR = 0.05
DEFAULT_VARIANCE_SEEDS = 5          # sampling seeds per variance measurement: its spread, not one draw


@dataclass(frozen=True)
class World:
    """The grid as tables: state s = row · width + column, action a indexes MOVES."""
    layout: tuple
    next_state: np.ndarray      # (S, A) int: where a leads from s (s itself for a move off the grid)
    reward: np.ndarray          # (S, A) float: r(s, a), the reward of the cell entered
    ends: np.ndarray            # (S,) bool: entering this cell ends the episode
    start: int

    @property
    def n_states(self):
        return self.next_state.shape[0]

    @property
    def shape(self):
        return len(self.layout), len(self.layout[0])


def make_world(layout=LAYOUT):
    """Parse a layout (rows of ``.CBTM``, exactly one C, at least one M) into a ``World``."""
    if isinstance(layout, str) or not layout or not all(isinstance(row, str) for row in layout):
        raise ValueError(f"layout must be a non-empty sequence of strings (the rows), got {layout!r}")
    layout = tuple(layout)
    H, W = len(layout), len(layout[0])
    if W == 0 or any(len(row) != W for row in layout):
        raise ValueError(f"layout must be a rectangle: row lengths {[len(row) for row in layout]}")
    cells = "".join(layout)
    unknown = sorted(set(cells) - set(CELL_REWARDS))
    if unknown:
        raise ValueError(f"layout has unknown cells {unknown}: use . (empty), C (the cat), B (broom), "
                         f"T (bathtub), M (meat)")
    if cells.count("C") != 1 or "M" not in cells:
        raise ValueError(f"layout needs exactly one C (the cat's start) and at least one M (the meat), got "
                         f"{cells.count('C')} C and {cells.count('M')} M")
    S = H * W
    next_state = np.empty((S, len(MOVES)), dtype=np.int64)
    reward = np.zeros((S, len(MOVES)))
    for s in range(S):
        row, col = divmod(s, W)
        for a, (dr, dc) in enumerate(MOVES):
            r2, c2 = row + dr, col + dc
            inside = 0 <= r2 < H and 0 <= c2 < W
            next_state[s, a] = r2 * W + c2 if inside else s
            reward[s, a] = CELL_REWARDS[layout[r2][c2]] if inside else 0.0
    ends = np.array([c in ENDS_EPISODE for c in cells])
    return World(layout, next_state, reward, ends, cells.index("C"))


def step(world, states, actions):
    """One move for a batch of cats: (next states, rewards, episode over), each shaped like ``states``."""
    nxt = world.next_state[states, actions]
    return nxt, world.reward[states, actions], world.ends[nxt]


def _action_values(world, V, gamma):
    """Q(s, a) = r(s, a) + γ V(s'), with nothing after an episode's end."""
    nxt = world.next_state
    return world.reward + gamma * np.where(world.ends[nxt], 0.0, V[nxt])


def value_iteration(world, gamma=DEFAULT_GAMMA, tol=1e-12, max_iterations=100_000):
    """V*(s) = max_a [r(s, a) + γ V*(s')], iterated from V = 0 until no value moves by more than ``tol``.

    Returns (V (S,), Q (S, A), iterations). The Bellman optimality operator is a
    γ-contraction, so for γ < 1 the iterates converge to its one fixed point.
    States that end the episode are never acted in: their V is 0.
    """
    gamma = checks.number(gamma, "gamma", low=0.0, high=1.0, high_open=True)
    V = np.zeros(world.n_states)
    for it in range(1, max_iterations + 1):
        Q = _action_values(world, V, gamma)
        V_new = np.where(world.ends, 0.0, Q.max(axis=1))
        if np.max(np.abs(V_new - V)) <= tol:
            return V_new, _action_values(world, V_new, gamma), it
        V = V_new
    raise RuntimeError(f"value iteration did not converge in {max_iterations} iterations (gamma={gamma})")


def greedy_policy(Q):
    """a*(s) = argmax_a Q(s, a) (the first of tied actions), (S,) int."""
    return np.argmax(Q, axis=1)


def policy_evaluation(world, pi, gamma=DEFAULT_GAMMA):
    """V^π solving V = r_π + γ P_π V exactly (a linear system): the value of a stochastic policy π (S, A)."""
    gamma = checks.number(gamma, "gamma", low=0.0, high=1.0, high_open=True)
    S = world.n_states
    P = np.zeros((S, S))
    for a in range(len(MOVES)):
        np.add.at(P, (np.arange(S), world.next_state[:, a]), pi[:, a])
    P[:, world.ends] = 0.0                      # nothing follows an end ...
    r_pi = (pi * world.reward).sum(axis=1)
    P[world.ends] = 0.0                         # ... and no one acts in an end cell: V = 0 there
    r_pi[world.ends] = 0.0
    return np.linalg.solve(np.eye(S) - gamma * P, r_pi)


def follow(world, actions_by_state, gamma=1.0, max_steps=100):
    """The path of a deterministic policy from the start: (cells visited, Σ_t γ^t r_t along it)."""
    s, path, total = world.start, [world.start], 0.0
    for t in range(max_steps):
        s, r, over = step(world, s, actions_by_state[s])
        path.append(int(s))
        total += gamma ** t * float(r)
        if over:
            break
    return path, total


# -- episodes, sampled and enumerated ---------------------------------------------

def policy(theta):
    """π_θ(a|s) = softmax(θ_s)_a as a host array (S, A): the grid, its episodes and every table
    computed from them live on the host; θ and its gradients may live on the device."""
    return np.exp(backend.to_numpy(ag.log_softmax(theta, axis=-1).data))


def rollout(world, theta, n_episodes, horizon, gen):
    """Sample ``n_episodes`` episodes of at most ``horizon`` moves from π_θ, all at once.

    Returns a dict of (B, horizon) host arrays: ``states`` s_t, ``actions`` a_t,
    ``rewards`` r_t (0 after the end) and ``mask`` (True while the episode runs).
    An episode still running at the horizon is cut there.
    """
    pi = policy(theta)                                                      # (S, A)
    cdf = np.cumsum(pi, axis=1)
    B = n_episodes
    s = np.full(B, world.start)
    running = np.ones(B, dtype=bool)
    out = {"states": np.zeros((B, horizon), np.int64), "actions": np.zeros((B, horizon), np.int64),
           "rewards": np.zeros((B, horizon)), "mask": np.zeros((B, horizon), bool)}
    for t in range(horizon):
        # inverse-CDF sampling; the clip guards against a last cumsum entry a rounding below 1
        a = np.minimum((gen.random(B)[:, None] > cdf[s]).sum(axis=1), len(MOVES) - 1)
        nxt, r, over = step(world, s, a)
        out["states"][:, t], out["actions"][:, t], out["mask"][:, t] = s, a, running
        out["rewards"][:, t] = np.where(running, r, 0.0)
        running = running & ~over
        s = np.where(running, nxt, s)
    return out


def enumerate_episodes(world, horizon):
    """Every distinct episode of at most ``horizon`` moves, in the format of ``rollout``.

    All A^horizon action sequences are played; sequences that differ only after
    their episode ended are the same episode, so only those with action 0 after
    the end are kept. Then Σ_τ p(τ) = 1 with p(τ) = Π_{t < end} π(a_t|s_t).
    """
    horizon = checks.integer(horizon, "horizon", low=1, high=8)     # 4^8 = 65,536 sequences at most
    A = len(MOVES)
    actions = (np.arange(A ** horizon)[:, None] // A ** np.arange(horizon - 1, -1, -1)) % A
    B = actions.shape[0]
    s = np.full(B, world.start)
    running = np.ones(B, dtype=bool)
    out = {"states": np.zeros((B, horizon), np.int64), "actions": actions,
           "rewards": np.zeros((B, horizon)), "mask": np.zeros((B, horizon), bool)}
    for t in range(horizon):
        nxt, r, over = step(world, s, actions[:, t])
        out["states"][:, t], out["mask"][:, t] = s, running
        out["rewards"][:, t] = np.where(running, r, 0.0)
        running = running & ~over
        s = np.where(running, nxt, s)
    keep = ~np.any(~out["mask"] & (actions != 0), axis=1)
    return {k: v[keep] for k, v in out.items()}


def episode_logprobs(logpi, episodes):
    """log p_θ(τ) = Σ_{t < end} log π_θ(a_t|s_t) per episode, (B,); ``logpi`` (S, A) array or Tensor."""
    step_logprobs = ag.tensor(logpi)[episodes["states"], episodes["actions"]]            # (B, T)
    out = ag.where(episodes["mask"], step_logprobs, 0.0).sum(axis=1)
    return out if isinstance(logpi, ag.Tensor) else out.data


def finite_horizon_values(world, pi, gamma, horizon):
    """V_t(s) = Σ_a π(a|s) [r(s, a) + γ V_{t+1}(s')], V_horizon = 0: the value with t moves made, (horizon, S).

    ``pi`` is a (S, A) array or Tensor (then so is the result's V_0, and J = V_0(start) can be
    differentiated); the recursion runs backwards in time, once per step.
    """
    values, V = [], ag.tensor(np.zeros(world.n_states))
    nxt = world.next_state
    for _ in range(horizon):
        after = ag.where(world.ends[nxt], 0.0, V[nxt])                         # (S, A)
        V = ag.where(world.ends, 0.0, (pi * (after * gamma + world.reward)).sum(axis=1))
        values.append(V)
    return values[::-1]


def reinforce_episode_loss(theta, episodes, gamma, baseline=None):
    """The REINFORCE surrogate of a batch of episodes: −(1/B) Σ_i Σ_t γ^t (G_t − b_t) log π_θ(a_t|s_t).

    ``theta`` (S, A) array or Tensor; ``baseline`` b_t per step, (B, T), or None. The γ^t
    makes its gradient an unbiased estimate of ∇J for J = E[Σ_t γ^t r_t].
    """
    G = rl.discounted_returns(episodes["rewards"], gamma)                     # (B, T)
    discount = backend.asarray(gamma ** np.arange(G.shape[1]), G.dtype)
    logp = ag.log_softmax(theta, axis=-1)[episodes["states"], episodes["actions"]]
    return rl.reinforce_loss(logp, G * discount, None if baseline is None else backend.asarray(baseline) * discount,
                             mask=episodes["mask"])


def expected_gradient(world, theta, gamma, horizon, baseline=None):
    """E_τ[ĝ] and E‖ĝ − E ĝ‖² of the one-episode REINFORCE estimate ĝ, exactly, by listing every episode.

    ``baseline``: None, or a (horizon, S) table b_t(s). Returns (mean (S, A), variance, n_episodes).
    """
    episodes = enumerate_episodes(world, horizon)
    p = np.exp(backend.to_numpy(episode_logprobs(ag.log_softmax(theta, axis=-1).data, episodes)))
    grads = np.empty((len(p),) + theta.shape)
    for i in range(len(p)):
        one = {k: v[i:i + 1] for k, v in episodes.items()}
        b = None if baseline is None else baseline[np.arange(horizon), one["states"][0]][None]
        th = ag.Tensor(theta, requires_grad=True)
        reinforce_episode_loss(th, one, gamma, b).backward()
        grads[i] = -backend.to_numpy(th.grad)                   # ĝ: the surrogate is −(estimate)·log π
    mean = np.tensordot(p, grads, axes=1)
    variance = float(np.tensordot(p, ((grads - mean) ** 2).sum(axis=(1, 2)), axes=1))
    return mean, variance, len(p)


def exact_gradient(world, theta, gamma, horizon):
    """(J, ∇J) for J(θ) = Σ_τ p_θ(τ) Σ_t γ^t r_t over every episode of at most ``horizon`` moves.

    J is the sum over the listed episodes, built in the autograd, so ∇J is the
    derivative of the expectation itself, with no estimator in between.
    """
    episodes = enumerate_episodes(world, horizon)
    discounted = (episodes["rewards"] * gamma ** np.arange(horizon)).sum(axis=1)  # Σ_t γ^t r_t, (B,)
    th = ag.Tensor(backend.asarray(theta, np.float64), requires_grad=True)
    J = (ag.exp(episode_logprobs(ag.log_softmax(th, axis=-1), episodes)) * backend.asarray(discounted)).sum()
    J.backward()
    return J.item(), backend.to_numpy(th.grad)


def gradient_variance(world, theta, gamma, horizon, n_episodes, gen, baseline=None):
    """E‖ĝ − E ĝ‖² of the one-episode REINFORCE estimate, from ``n_episodes`` sampled episodes.

    ``baseline``: None or a (S,) table b(s). Each episode's ĝ is its own backward pass.
    """
    episodes = rollout(world, theta, n_episodes, horizon, gen)
    grads = np.empty((n_episodes,) + theta.shape)
    for i in range(n_episodes):
        one = {k: v[i:i + 1] for k, v in episodes.items()}
        th = ag.Tensor(theta, requires_grad=True)
        reinforce_episode_loss(th, one, gamma, None if baseline is None else baseline[one["states"]]).backward()
        grads[i] = -backend.to_numpy(th.grad)
    return float(((grads - grads.mean(axis=0)) ** 2).sum(axis=(1, 2)).mean())


# -- training ---------------------------------------------------------------------

def variance_ratio(no_baseline, baseline):
    """How many times less variance the baseline leaves: ``no_baseline / baseline``, or None where the
    baseline's is 0: a policy that always samples the same episode (a deterministic one, learned with a
    huge learning rate or with γ = 0, where only the first move counts) has no variance to cut, 0/0."""
    return no_baseline / baseline if baseline > 0 else None


def _times(ratio, fmt):
    return "n/a" if ratio is None else f"{ratio:{fmt}}×"


def train_reinforce(world, gamma=DEFAULT_GAMMA, iterations=DEFAULT_ITERATIONS, episodes=DEFAULT_EPISODES,
                    horizon=DEFAULT_HORIZON, lr=DEFAULT_LR, baseline=True, seed=0, baseline_rate=0.2,
                    progress=False):
    """REINFORCE on a tabular softmax policy, θ = 0 (uniform) at the start, Adam with a cosine decay.

    Each iteration samples ``episodes`` episodes from π_θ and takes one step on
    ``reinforce_episode_loss``. With ``baseline``, b(s) is a table moved a
    fraction ``baseline_rate`` towards the mean return observed from s after
    each iteration (a Monte Carlo value estimate; it is updated after the
    gradient is taken, so b never depends on the episode it weighs).
    Returns (θ (S, A), returns per iteration: the batch's mean G_0). ``progress``
    shows an indicator on stderr.
    """
    gen = backend.rng(seed)
    theta = backend.xp().zeros((world.n_states, len(MOVES)))          # on the device, with Adam's moments
    adam = AdamW({"theta": theta}, lr=lr, weight_decay=0.0)
    b = np.zeros(world.n_states)
    returns = []
    bar = progress_bar(range(iterations), desc="reinforce" + (" + baseline" if baseline else ""),
                       file=sys.stderr) if progress else None
    for it in (bar if bar is not None else range(iterations)):
        batch = rollout(world, theta, episodes, horizon, gen)
        th = ag.Tensor(theta, requires_grad=True)
        reinforce_episode_loss(th, batch, gamma, b[batch["states"]] if baseline else None).backward()
        adam.step({"theta": th.grad}, lr=cosine_schedule(it, lr, 0, iterations))
        G = backend.to_numpy(rl.discounted_returns(batch["rewards"], gamma))
        if baseline:
            seen = batch["states"][batch["mask"]]
            count = np.bincount(seen, minlength=world.n_states)
            total = np.bincount(seen, weights=G[batch["mask"]], minlength=world.n_states)
            visited = count > 0
            b[visited] += baseline_rate * (total[visited] / count[visited] - b[visited])
        returns.append(float(G[:, 0].mean()))
        if bar is not None:
            bar.set_postfix(G=returns[-1])
    return backend.to_numpy(theta), returns


def run_gridworld(layout=LAYOUT, gamma=DEFAULT_GAMMA, iterations=DEFAULT_ITERATIONS, episodes=DEFAULT_EPISODES,
                  horizon=DEFAULT_HORIZON, lr=DEFAULT_LR, seed=0, variance_episodes=2000, tiny_horizon=4,
                  progress=True, variance_seeds=DEFAULT_VARIANCE_SEEDS):
    """Solve the grid by value iteration, learn it with REINFORCE (with and without a baseline), measure.

    Returns a dict of plain numbers and lists (JSON-ready):
      layout, config; optimal_return V*(start); optimal_path (cells) and its undiscounted return;
      bellman_residual max_s |max_a Q − V*|; value V* (S,) and optimal_actions (S,);
      reinforce / reinforce_baseline: {returns (per iteration), final_return (mean of the last
          10% of iterations), policy_return (exact V^{π_θ}(start)), greedy_return, greedy_path,
          theta (S, A), learned_value V^{π_θ} (S,)};
      variance: E‖ĝ − E ĝ‖² of the one-episode gradient estimate, without and with b = V^π (exact):
          {uniform,learned}_{no_baseline,baseline} on this grid at the uniform policy and at the
          learned one, each the mean of ``variance_seeds`` estimates from ``variance_episodes``
          sampled episodes (estimate k samples with the generator seeded by [seed, k], the same
          episodes with and without b); ratio {uniform, learned}: no-baseline / baseline variance
          of each estimate, one per sampling seed (a ratio of sampled variances is heavy-tailed:
          read its range, not one draw); and tiny_{no_baseline,baseline} on ``TINY_LAYOUT`` at
          the uniform policy, exactly (every episode of ``tiny_horizon`` moves listed, b_t = V_t^π);
      seconds.
    """
    gamma = checks.number(gamma, "gamma", low=0.0, high=1.0, high_open=True)
    iterations = checks.integer(iterations, "iterations", low=1)
    episodes = checks.integer(episodes, "episodes", low=2)
    horizon = checks.integer(horizon, "horizon", low=1)
    lr = checks.positive(lr, "lr")
    seed = checks.integer(seed, "seed")
    variance_episodes = checks.integer(variance_episodes, "variance_episodes", low=2)
    variance_seeds = checks.integer(variance_seeds, "variance_seeds", low=1)
    tiny_horizon = checks.integer(tiny_horizon, "tiny_horizon", low=1, high=8)
    checks.flag(progress, "progress")
    world = make_world(layout)
    t0 = time.perf_counter()

    V, Q, sweeps = value_iteration(world, gamma)
    optimal = greedy_policy(Q)
    residual = float(np.max(np.abs(np.where(world.ends, 0.0, Q.max(axis=1)) - V)))
    path, undiscounted = follow(world, optimal)

    runs = {}
    for name, use_baseline in (("reinforce", False), ("reinforce_baseline", True)):
        theta, returns = train_reinforce(world, gamma, iterations, episodes, horizon, lr, use_baseline, seed,
                                         progress=progress)
        learned_value = policy_evaluation(world, policy(theta), gamma)
        greedy_path, greedy_return = follow(world, greedy_policy(theta), gamma)
        runs[name] = {"returns": returns,
                      "final_return": float(np.mean(returns[-max(1, iterations // 10):])),
                      "policy_return": float(learned_value[world.start]),
                      "greedy_return": greedy_return, "greedy_path": greedy_path,
                      "theta": theta.tolist(), "learned_value": learned_value.tolist()}

    # the variance of ĝ with and without b = V^π, at the uniform policy (where training starts) and at
    # the policy REINFORCE with a baseline ended with (where every return is near V* and, without a
    # baseline, each one pushes up whatever moves were taken)
    variance = {"ratio": {}, "sampling_seeds": variance_seeds}
    for where, theta in (("uniform", np.zeros((world.n_states, len(MOVES)))),
                         ("learned", np.asarray(runs["reinforce_baseline"]["theta"]))):
        v_pi = policy_evaluation(world, policy(theta), gamma)
        sampling = range(variance_seeds)          # each a backward pass per episode: show them going by
        bar = progress_bar(sampling, desc=f"variance at the {where} policy", file=sys.stderr) if progress else sampling
        pairs = np.array([[gradient_variance(world, theta, gamma, horizon, variance_episodes, backend.rng([seed, k]),
                                             baseline=b) for b in (None, v_pi)] for k in bar])
        variance[f"{where}_no_baseline"], variance[f"{where}_baseline"] = pairs.mean(axis=0).tolist()
        variance["ratio"][where] = [variance_ratio(a, b) for a, b in pairs.tolist()]
    tiny = make_world(TINY_LAYOUT)
    tiny_theta = np.zeros((tiny.n_states, len(MOVES)))
    uniform = np.full(tiny_theta.shape, 1.0 / len(MOVES))
    values = np.stack([backend.to_numpy(v.data)                                           # (horizon, S): b_t(s)
                       for v in finite_horizon_values(tiny, uniform, gamma, tiny_horizon)])
    _, var_none, n_listed = expected_gradient(tiny, tiny_theta, gamma, tiny_horizon)
    _, var_base, _ = expected_gradient(tiny, tiny_theta, gamma, tiny_horizon, baseline=values)
    variance.update({"tiny_no_baseline": var_none, "tiny_baseline": var_base, "tiny_episodes": n_listed})
    seconds = time.perf_counter() - t0

    result = {
        "layout": list(world.layout),
        "config": {"gamma": gamma, "iterations": iterations, "episodes": episodes, "horizon": horizon, "lr": lr,
                   "seed": seed, "variance_episodes": variance_episodes, "variance_seeds": variance_seeds,
                   "tiny_horizon": tiny_horizon},
        "optimal_return": float(V[world.start]),
        "optimal_path": [int(c) for c in path],
        "optimal_path_undiscounted_return": undiscounted,
        "bellman_residual": residual,
        "value_iteration_sweeps": sweeps,
        "value": V.tolist(),
        "optimal_actions": optimal.tolist(),
        **runs,
        "variance": variance,
        "seconds": seconds,
    }
    return result


#: the per-seed table of ``gridworld_seeds``: (row key, title, format)
SEED_COLUMNS = (("policy_return", "V^π_θ(start), no baseline", ".3f"),
                ("policy_return_baseline", "V^π_θ(start), baseline", ".3f"),
                ("uniform_ratio", "variance cut at uniform π", ".2f"),
                ("learned_ratio", "variance cut at learned π", ".1f"),
                ("learned_ratio_min", "(lowest sampling seed)", ".1f"),
                ("learned_ratio_max", "(highest sampling seed)", ".1f"))


def gridworld_seeds(seeds, print_fn=None, **settings):
    """``run_gridworld`` once per training seed; returns {seeds, per_seed, spread, variance_ratio, table, runs}.

    A row holds the exact returns V^{π_θ}(start) of both REINFORCE runs and the baseline's
    variance cut at the uniform and the learned policy (the mean over the run's sampling seeds,
    and at the learned policy their lowest and highest). ``variance_ratio`` {uniform, learned}
    is the spread of every estimate, over training and sampling seeds together; ``runs`` the
    per-seed results. V*(start) is the same on every seed: value iteration draws nothing.
    """
    def row(r):
        uniform, learned = ([x for x in r["variance"]["ratio"][where] if x is not None]
                            for where in ("uniform", "learned"))
        return {"policy_return": r["reinforce"]["policy_return"],
                "policy_return_baseline": r["reinforce_baseline"]["policy_return"],
                "uniform_ratio": float(np.mean(uniform)) if uniform else None,
                "learned_ratio": float(np.mean(learned)) if learned else None,
                "learned_ratio_min": min(learned, default=None), "learned_ratio_max": max(learned, default=None)}

    rows, results = spread.over_seeds(seeds, lambda seed: run_gridworld(seed=seed, progress=False, **settings),
                                      row, print_fn)
    pooled = {where: [x for r in results for x in r["variance"]["ratio"][where] if x is not None]
              for where in ("uniform", "learned")}
    pooled = {where: spread.spread(v) if v else None for where, v in pooled.items()}
    table = f"V*(start) = {results[0]['optimal_return']:.4f} on every seed (value iteration draws nothing)\n" + \
        spread.seed_table(rows, SEED_COLUMNS) + "".join(
        f"\nvariance cut at the {where} policy, every estimate ({pooled[where]['n']} = training × sampling "
        f"seeds): {pooled[where]['min']:.2f}–{pooled[where]['max']:.2f}×, mean {pooled[where]['mean']:.2f}×"
        if pooled[where] else f"\nvariance cut at the {where} policy: none to cut (no estimate had variance)"
        for where in ("uniform", "learned"))
    return {"seeds": list(seeds), "optimal_return": results[0]["optimal_return"], "per_seed": rows,
            "spread": spread.spreads(rows, [k for k in rows[0] if k != "seed"]), "variance_ratio": pooled,
            "table": table, "config": {k: v for k, v in results[0]["config"].items() if k != "seed"},
            "runs": results}


# -- printing and plotting --------------------------------------------------------

def render_grid(world):
    """The layout as text, one cell per character pair, with a legend."""
    rows = [" ".join(row) for row in world.layout]
    legend = "C the cat (start)   B broom −1   T bathtub −10, faints   M meat +100   . empty 0"
    return "\n".join(rows + [legend])


def render_policy(world, actions_by_state, title):
    """Arrows of a deterministic policy over the grid; cells that end an episode keep their letter."""
    H, W = world.shape
    lines = [title]
    for row in range(H):
        cells = []
        for col in range(W):
            s = row * W + col
            cells.append(world.layout[row][col] if world.ends[s] else ARROWS[actions_by_state[s]])
        lines.append(" ".join(cells))
    return "\n".join(lines)


def print_report(result, file=None):
    """The grid, the optimal and learned policies as arrows, the return curve as a table, the numbers."""
    out = sys.stdout if file is None else file
    world = make_world(result["layout"])
    print(render_grid(world), file=out)
    print(f"\nvalue iteration (γ = {result['config']['gamma']:g}): {result['value_iteration_sweeps']} sweeps, "
          f"V*(start) = {result['optimal_return']:.4f}, Bellman residual {result['bellman_residual']:.1e}; "
          f"the optimal path takes {len(result['optimal_path']) - 1} moves (undiscounted return "
          f"{result['optimal_path_undiscounted_return']:g})", file=out)
    print(render_policy(world, result["optimal_actions"], "optimal policy (value iteration)"), file=out)
    print(render_policy(world, greedy_policy(np.asarray(result["reinforce_baseline"]["theta"])),
                        "\nlearned policy (REINFORCE with a baseline, most likely move per cell)"), file=out)
    cfg = result["config"]
    n = cfg["iterations"]
    print(f"\nmean return G_0 of each batch of {cfg['episodes']} episodes (V*(start) = "
          f"{result['optimal_return']:.3f})", file=out)
    print(f"{'episodes':>9} {'no baseline':>12} {'baseline':>9}", file=out)
    for i in sorted(set(np.linspace(0, n - 1, 11).astype(int))):
        print(f"{(i + 1) * cfg['episodes']:>9} {result['reinforce']['returns'][i]:>12.3f} "
              f"{result['reinforce_baseline']['returns'][i]:>9.3f}", file=out)
    for name, label in (("reinforce", "no baseline"), ("reinforce_baseline", "baseline")):
        r = result[name]
        print(f"REINFORCE, {label:<11}: last 10% of batches {r['final_return']:.3f}, π_θ exact "
              f"{r['policy_return']:.3f}, greedy path {r['greedy_return']:.3f} "
              f"(optimal {result['optimal_return']:.3f})", file=out)
    v = result["variance"]
    print("variance E‖ĝ − E ĝ‖² of the one-episode gradient estimate, without / with the baseline b = V^π:",
          file=out)
    for where, label in (("uniform", "uniform policy (start)"), ("learned", "learned policy (end)")):
        a, b, ratio = v[f"{where}_no_baseline"], v[f"{where}_baseline"], v["ratio"][where]
        defined = [x for x in ratio if x is not None]
        cut = (f"{min(defined):.1f}–{max(defined):.1f}× less over {len(defined)} sampling seed"
               f"{'s' if len(defined) > 1 else ''}, mean {np.mean(defined):.1f}×" if defined else
               "no variance to cut: every sampled episode is the same")
        skipped = len(ratio) - len(defined)
        print(f"  {label:<24} {a:>10.4g} / {b:<10.4g} ({cut}"
              + (f"; {skipped} seed{'s' if skipped > 1 else ''} without variance left out" if defined and skipped
                 else "") + "), sampled", file=out)
    a, b = v["tiny_no_baseline"], v["tiny_baseline"]
    print(f"  {'tiny grid, uniform':<24} {a:>10.4g} / {b:<10.4g} ({_times(variance_ratio(a, b), '.2f')} less), "
          f"exact over all {v['tiny_episodes']} episodes", file=out)


def plot_gridworld(result, path="runs/gridworld/gridworld.png"):
    """V* as a heat map with the optimal arrows, V^{π_θ} with the learned arrows, and return vs episodes."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise RuntimeError('plotting needs matplotlib: pip install "dpo-np[plot]"') from err
    world = make_world(result["layout"])
    H, W = world.shape
    fig = Figure(figsize=(14, 4.4))
    FigureCanvasAgg(fig)
    ax_star, ax_learned, ax_curve = fig.subplots(1, 3)
    learned = result["reinforce_baseline"]
    panels = ((ax_star, np.asarray(result["value"]), np.asarray(result["optimal_actions"]),
               f"V*(s), optimal moves (γ = {result['config']['gamma']:g})"),
              (ax_learned, np.asarray(learned["learned_value"]), greedy_policy(np.asarray(learned["theta"])),
               "V^π(s) of π_θ, its likeliest moves"))
    acting = ~world.ends
    vmin = min(p[1][acting].min() for p in panels)
    vmax = max(p[1][acting].max() for p in panels)
    for ax, values, actions, title in panels:
        # cells that end the episode have no value of their own: grey, labelled by what they are
        shown = np.ma.masked_array(values, mask=world.ends).reshape(H, W)
        cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
        image = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax)
        for s in range(world.n_states):
            row, col = divmod(s, W)
            cell = world.layout[row][col]
            text = cell if world.ends[s] else (cell if cell in "CB" else "") + ARROWS[actions[s]]
            ax.text(col, row, text, ha="center", va="center", fontsize=12,
                    color="black" if world.ends[s] else "white")
        ax.set_xticks(range(W))
        ax.set_yticks(range(H))
        ax.set_xlabel("column (cell)")
        ax.set_ylabel("row (cell)")
        ax.set_title(title, fontsize="medium")
        fig.colorbar(image, ax=ax, label="expected discounted return (reward units)")
    cfg = result["config"]
    for name, label in (("reinforce", "REINFORCE"), ("reinforce_baseline", "REINFORCE with baseline")):
        returns = np.asarray(result[name]["returns"])
        ax_curve.plot((np.arange(len(returns)) + 1) * cfg["episodes"], returns, linewidth=1, label=label)
    ax_curve.axhline(result["optimal_return"], color="black", linestyle="--", linewidth=1,
                     label=f"V*(start) = {result['optimal_return']:.2f}")
    ax_curve.set_xlabel("episodes sampled")
    ax_curve.set_ylabel("mean return Σ γ^t r_t of a batch (reward units)")
    ax_curve.set_title("REINFORCE: return vs episodes", fontsize="medium")
    ax_curve.legend(fontsize="small")
    fig.suptitle("The cat's grid world: C start, B broom (−1), T bathtub (−10, episode over), M meat (+100)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
