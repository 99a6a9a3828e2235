"""The cat's grid world: value iteration solves it exactly, REINFORCE's estimate is the exact gradient
in expectation, and learning from sampled episodes reaches the optimal return."""

import collections
import importlib.util
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np import autograd as ag
from dpo_np import backend, rl
from dpo_np.experiments import gridworld as gw
from dpo_np.gradcheck import central_difference, relative_error

GAMMA = gw.DEFAULT_GAMMA


def cell_reward(layout, cell):
    return {".": 0.0, "C": 0.0, "B": -1.0, "T": -10.0, "M": 100.0}[layout[cell[0]][cell[1]]]


def neighbours(layout, cell):
    """The four moves from ``cell`` as the notes state them, written out again for the test."""
    H, W = len(layout), len(layout[0])
    for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1)):
        r, c = cell[0] + dr, cell[1] + dc
        yield ((r, c), cell_reward(layout, (r, c))) if 0 <= r < H and 0 <= c < W else (cell, 0.0)


def shortest_moves(layout, avoid):
    """Breadth-first search from C to M that never steps on a cell in ``avoid``."""
    H, W = len(layout), len(layout[0])
    start = next((r, c) for r in range(H) for c in range(W) if layout[r][c] == "C")
    dist, queue = {start: 0}, collections.deque([start])
    while queue:
        cell = queue.popleft()
        if layout[cell[0]][cell[1]] == "M":
            return dist[cell]
        for nxt, _ in neighbours(layout, cell):
            if nxt not in dist and layout[nxt[0]][nxt[1]] not in avoid:
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
    return None


def test_the_layout_is_at_least_5x5_and_its_shortest_way_to_the_meat_passes_the_broom():
    assert len(gw.LAYOUT) >= 5 and len(gw.LAYOUT[0]) >= 5
    assert shortest_moves(gw.LAYOUT, avoid="") == 4              # straight through a bathtub
    assert shortest_moves(gw.LAYOUT, avoid="T") == 8             # the broom's gap
    assert shortest_moves(gw.LAYOUT, avoid="TB") == 12           # the detour round both


def test_the_world_tables_follow_the_notes_rules():
    world = gw.make_world()
    H, W = world.shape
    for s in range(world.n_states):
        cell = divmod(s, W)
        for a, (nxt, r) in enumerate(neighbours(gw.LAYOUT, cell)):
            assert world.next_state[s, a] == nxt[0] * W + nxt[1]
            assert world.reward[s, a] == r
    assert world.ends.sum() == 4 and world.start == 0              # three bathtubs and the meat


def bellman_residual(layout, V, gamma):
    """max over acting states of |max_a [r + γ V(s')] − V(s)|, with V = 0 past an end, from the layout."""
    H, W = len(layout), len(layout[0])
    worst = 0.0
    for r in range(H):
        for c in range(W):
            if layout[r][c] in "TM":
                assert V[r * W + c] == 0.0
                continue
            best = max(rew + gamma * (0.0 if layout[n[0]][n[1]] in "TM" else V[n[0] * W + n[1]])
                       for n, rew in neighbours(layout, (r, c)))
            worst = max(worst, abs(best - V[r * W + c]))
    return worst


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
def test_value_iteration_satisfies_the_bellman_optimality_equation_at_every_state(gamma):
    V, Q, _ = gw.value_iteration(gw.make_world(), gamma)
    assert bellman_residual(gw.LAYOUT, V, gamma) < 1e-10


def test_the_optimal_return_is_the_broom_path_and_a_patient_cat_takes_the_detour():
    world = gw.make_world()
    V, Q, _ = gw.value_iteration(world, 0.9)
    assert V[world.start] == pytest.approx(-0.9 ** 3 + 100 * 0.9 ** 7, abs=1e-12)
    path, undiscounted = gw.follow(world, gw.greedy_policy(Q))
    assert len(path) - 1 == 8 and undiscounted == 99.0 and 2 * 5 + 2 in path          # through the broom
    V, Q, _ = gw.value_iteration(world, 0.999)
    assert V[world.start] == pytest.approx(100 * 0.999 ** 11, abs=1e-10)
    path, undiscounted = gw.follow(world, gw.greedy_policy(Q))
    assert len(path) - 1 == 12 and undiscounted == 100.0


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.999])
def test_the_greedy_policy_never_enters_the_bathtub(gamma):
    world = gw.make_world()
    _, Q, _ = gw.value_iteration(world, gamma)
    greedy = gw.greedy_policy(Q)
    bathtubs = {i for i, c in enumerate("".join(gw.LAYOUT)) if c == "T"}
    for s in np.flatnonzero(~world.ends):
        assert world.next_state[s, greedy[s]] not in bathtubs


def test_no_policy_beats_the_optimal_value_and_the_greedy_policy_reaches_it():
    world = gw.make_world()
    V, Q, _ = gw.value_iteration(world, GAMMA)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pi = rng.dirichlet(np.ones(4), size=world.n_states)
        assert np.all(gw.policy_evaluation(world, pi, GAMMA) <= V + 1e-9)
    greedy = np.eye(4)[gw.greedy_policy(Q)]
    np.testing.assert_allclose(gw.policy_evaluation(world, greedy, GAMMA), V, atol=1e-10)


layouts = st.integers(2, 4).flatmap(lambda w: st.lists(
    st.text(alphabet=".BTM", min_size=w, max_size=w), min_size=2, max_size=4))


@settings(max_examples=40, deadline=None)
@given(layouts, st.sampled_from([0.3, 0.8, 0.95]))
def test_bellman_optimality_and_no_bathtub_on_random_layouts(rows, gamma):
    rows = ["C" + row[1:] if i == 0 else row for i, row in enumerate(rows)]
    if "M" not in "".join(rows):
        rows[-1] = rows[-1][:-1] + "M"
    world = gw.make_world(rows)
    V, Q, _ = gw.value_iteration(world, gamma)
    assert bellman_residual(rows, V, gamma) < 1e-10
    greedy = gw.greedy_policy(Q)
    cells = "".join(rows)
    for s in np.flatnonzero(~world.ends):
        # a cell whose every move enters a bathtub (e.g. walled in by four of them) has no other choice
        if any(cells[n] != "T" for n in world.next_state[s]):
            assert cells[world.next_state[s, greedy[s]]] != "T"


# -- the policy gradient, exactly, on a grid small enough to list every episode -------

def random_theta(world, seed):
    return np.random.default_rng(seed).standard_normal((world.n_states, 4))


def test_listed_episodes_have_probabilities_that_sum_to_one_and_give_the_dynamic_programming_value():
    tiny = gw.make_world(gw.TINY_LAYOUT)
    theta = random_theta(tiny, 1)
    episodes = gw.enumerate_episodes(tiny, 4)
    logpi = ag.log_softmax(theta, axis=-1).data
    p = np.exp(gw.episode_logprobs(logpi, episodes))
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    J, _ = gw.exact_gradient(tiny, theta, GAMMA, 4)
    V0 = gw.finite_horizon_values(tiny, np.exp(logpi), GAMMA, 4)[0]
    assert J == pytest.approx(V0.data[tiny.start], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_reinforce_estimate_averages_to_the_exact_policy_gradient(seed):
    tiny = gw.make_world(gw.TINY_LAYOUT)
    theta = random_theta(tiny, seed)
    H = 4
    _, exact = gw.exact_gradient(tiny, theta, GAMMA, H)
    # ∇J itself, against central differences of J computed by listing episodes
    numeric = central_difference(lambda a: gw.exact_gradient(tiny, a[0], GAMMA, H)[0], [theta.copy()], 0)
    assert relative_error(exact, numeric) < 1e-8
    mean, var_plain, _ = gw.expected_gradient(tiny, theta, GAMMA, H)
    np.testing.assert_allclose(mean, exact, rtol=1e-10, atol=1e-12)
    # any baseline b_t(s) leaves the mean where it is: here an arbitrary one ...
    arbitrary = np.random.default_rng(seed + 10).standard_normal((H, tiny.n_states)) * 50
    mean_b, var_arbitrary, _ = gw.expected_gradient(tiny, theta, GAMMA, H, baseline=arbitrary)
    np.testing.assert_allclose(mean_b, exact, rtol=1e-10, atol=1e-12)
    # ... and the value function, which also lowers the variance
    pi = np.exp(ag.log_softmax(theta, axis=-1).data)
    values = np.stack([v.data for v in gw.finite_horizon_values(tiny, pi, GAMMA, H)])
    mean_v, var_value, _ = gw.expected_gradient(tiny, theta, GAMMA, H, baseline=values)
    np.testing.assert_allclose(mean_v, exact, rtol=1e-10, atol=1e-12)
    assert var_value < var_plain


def test_dropping_the_discount_factor_from_the_estimate_biases_it():
    tiny = gw.make_world(gw.TINY_LAYOUT)
    theta = random_theta(tiny, 0)
    episodes = gw.enumerate_episodes(tiny, 4)
    p = np.exp(gw.episode_logprobs(ag.log_softmax(theta, axis=-1).data, episodes))
    _, exact = gw.exact_gradient(tiny, theta, GAMMA, 4)
    th = ag.Tensor(theta, requires_grad=True)
    G = rl.discounted_returns(episodes["rewards"], GAMMA)                 # no γ^t in front
    logp = ag.log_softmax(th, axis=-1)[episodes["states"], episodes["actions"]]
    rl.reinforce_loss(logp, G * p[:, None] * len(p), mask=episodes["mask"]).backward()
    assert relative_error(-th.grad, exact) > 1e-2


def test_the_one_episode_loss_value_is_minus_the_weighted_sum_of_log_probabilities():
    world = gw.make_world()
    theta = random_theta(world, 3)
    episodes = gw.rollout(world, theta, 5, 12, backend.rng(0))
    logpi = theta - np.logaddexp.reduce(theta, axis=1, keepdims=True)
    expected = 0.0
    for i in range(5):
        for t in range(12):
            if episodes["mask"][i, t]:
                G = sum(GAMMA ** (k - t) * episodes["rewards"][i, k] for k in range(t, 12))
                expected -= GAMMA ** t * G * logpi[episodes["states"][i, t], episodes["actions"][i, t]]
    loss = gw.reinforce_episode_loss(theta, episodes, GAMMA)
    assert loss.item() == pytest.approx(expected / 5, rel=1e-12)


def test_rollouts_follow_the_rules_and_stop_at_an_end():
    world = gw.make_world()
    episodes = gw.rollout(world, np.zeros((world.n_states, 4)), 200, 30, backend.rng(0))
    s, a, r, m = (episodes[k] for k in ("states", "actions", "rewards", "mask"))
    assert np.all(s[:, 0] == world.start) and np.all(m[:, 0])
    for i in range(200):
        for t in range(29):
            if not m[i, t]:
                assert not m[i, t + 1] and r[i, t] == 0.0
                continue
            nxt, reward, over = gw.step(world, s[i, t], a[i, t])
            assert r[i, t] == reward
            assert m[i, t + 1] == (not over)
            if not over:
                assert s[i, t + 1] == nxt
    assert np.any(r == -10.0) and np.any(r == -1.0)        # a uniform cat faints, and meets the broom


# -- learning ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run():
    return gw.run_gridworld(iterations=300, variance_episodes=200, progress=False)


@pytest.mark.parametrize("baseline", [False, True])
def test_reinforce_learns_the_optimal_path(baseline):
    world = gw.make_world()
    V, _, _ = gw.value_iteration(world, GAMMA)
    theta, returns = gw.train_reinforce(world, baseline=baseline, seed=0)
    path, greedy_return = gw.follow(world, gw.greedy_policy(theta), GAMMA)
    assert greedy_return == pytest.approx(V[world.start], abs=1e-12)
    pi = np.exp(ag.log_softmax(theta, axis=-1).data)
    assert gw.policy_evaluation(world, pi, GAMMA)[world.start] > 0.98 * V[world.start]
    assert np.mean(returns[:20]) < 0.2 * V[world.start] < 0.9 * V[world.start] < np.mean(returns[-80:])


def test_run_reports_the_measured_numbers_and_is_json_ready(small_run):
    r = json.loads(json.dumps(small_run))
    assert r["optimal_return"] == pytest.approx(-0.9 ** 3 + 100 * 0.9 ** 7)
    assert r["bellman_residual"] < 1e-10
    for name in ("reinforce", "reinforce_baseline"):
        assert len(r[name]["returns"]) == 300
        assert r[name]["greedy_return"] <= r["optimal_return"] + 1e-12
    v = r["variance"]
    assert v["tiny_baseline"] < v["tiny_no_baseline"] and v["tiny_episodes"] > 100
    assert v["learned_baseline"] < v["learned_no_baseline"]


def test_same_seed_gives_the_same_numbers():
    kwargs = dict(iterations=20, variance_episodes=20, progress=False)
    a, b, c = gw.run_gridworld(seed=5, **kwargs), gw.run_gridworld(seed=5, **kwargs), gw.run_gridworld(seed=6, **kwargs)
    for key in ("reinforce", "reinforce_baseline", "variance"):
        assert a[key] == b[key]
    assert a["reinforce"]["returns"] != c["reinforce"]["returns"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="layout"):
        gw.make_world(("C..", ".."))
    with pytest.raises(ValueError, match="layout"):
        gw.make_world(("C.X", "..M"))
    with pytest.raises(ValueError, match="layout"):
        gw.make_world(("...", "..M"))
    with pytest.raises(ValueError, match="gamma"):
        gw.run_gridworld(gamma=1.0, progress=False)
    with pytest.raises(ValueError, match="iterations"):
        gw.run_gridworld(iterations=0, progress=False)
    with pytest.raises(TypeError, match="episodes"):
        gw.run_gridworld(episodes=2.5, progress=False)


def test_the_printout_and_the_figure(small_run, tmp_path, capsys):
    gw.print_report(small_run)
    out = capsys.readouterr().out
    assert "learned policy" in out and "× less" in out and "optimal policy" in out
    assert gw.render_grid(gw.make_world()).splitlines()[2] == "T T B T ."
    pytest.importorskip("matplotlib")
    path = gw.plot_gridworld(small_run, tmp_path / "figs" / "gridworld.png")
    assert (tmp_path / "figs" / "gridworld.png").stat().st_size > 10_000 and path.endswith("gridworld.png")


def test_the_command_prints_and_writes_the_same_numbers(tmp_path, capsys):
    from dpo_np.cli import main

    path = tmp_path / "gridworld.json"
    assert main(["gridworld", "--iterations", "30", "--variance-episodes", "20", "--quiet", "--json", str(path),
                 "--output-dir", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    numbers = json.loads(path.read_text())
    for key in ("layout", "config", "optimal_return", "bellman_residual", "reinforce", "reinforce_baseline",
                "variance"):
        assert key in numbers
    assert f"V*(start) = {numbers['optimal_return']:.4f}" in out
    assert f"{numbers['variance']['tiny_no_baseline']:.4g}" in out
    for line, name in (("no baseline:", "reinforce"), ("baseline   :", "reinforce_baseline")):
        printed = out.split(line)[1].split("π_θ exact ")[1].split(",")[0]
        assert float(printed) == pytest.approx(numbers[name]["policy_return"], abs=1e-3)
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "figs" / "gridworld.png").exists()
    with pytest.raises(SystemExit) as stop:
        main(["gridworld", "--gamma", "1.0", "--quiet", "--output-dir", ""])
    assert stop.value.code == 2 and "--gamma: must be a number >= 0 and < 1, got '1.0'" in capsys.readouterr().err
