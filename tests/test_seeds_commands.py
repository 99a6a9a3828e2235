"""`closed-form`, `gridworld` and `rlhf` with --seeds: one row per seed, each the number a single-seed run
gives, the spread computed from those rows, rlhf's `final_kl` the worst seed, and bad seed lists refused."""

import importlib.util
import json

import numpy as np
import pytest

from dpo_np.cli import main
from dpo_np.experiments import gridworld as gw
from dpo_np.experiments import rlhf_toy
from dpo_np.experiments.closed_form import run_closed_form


def _written(path):
    return json.loads(path.read_text())


def _check_spread(numbers, key):
    values = [row[key] for row in numbers["per_seed"]]
    s = numbers["spread"][key]
    assert s["n"] == len(values) and s["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert s["min"] == min(values) and s["max"] == max(values)
    assert s["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)


def test_closed_form_seeds_hold_each_seeds_run_and_the_suboptimality_identity(tmp_path, capsys):
    path = tmp_path / "cf.json"
    small = ["--pairs", "20000", "--steps", "60"]
    figure = tmp_path / "cf.png"
    assert main(["closed-form", "--seeds", "0-1", *small, "--figure", str(figure), "--json", str(path)]) == 0
    numbers, out = _written(path), capsys.readouterr().out
    assert numbers["seeds"] == [0, 1] and [r["seed"] for r in numbers["per_seed"]] == [0, 1]
    one = run_closed_form(seed=1, pairs=20000, steps=60, progress=False)
    row = numbers["per_seed"][1]
    assert row["final_kl"] == pytest.approx(one["kl"][-1], rel=1e-12)
    # J(π*) − J(π_θ), from the two objectives, is β·KL(π_θ ‖ π*), computed here from the policies
    kl_reverse = np.sum(one["policy"] * (np.log(one["policy"]) - np.log(one["optimal_policy"])), axis=1).mean()
    assert row["objective_gap"] == pytest.approx(0.5 * kl_reverse, rel=1e-6)
    assert row["suboptimality"] == pytest.approx(row["objective_gap"], rel=1e-6)
    assert {"train_beta_4x_kl", "reference_free_kl"} <= set(row)
    for key in ("final_kl", "suboptimality", "reference_free_kl"):
        _check_spread(numbers, key)
    assert "| 1 |" in out and "min – max" in out
    assert numbers["runs"][0]["kl"][-1] == numbers["per_seed"][0]["final_kl"]
    assert figure.exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_closed_form_single_seed_reports_the_suboptimality_beside_the_kl(tmp_path, capsys):
    path = tmp_path / "cf.json"
    assert main(["closed-form", "--pairs", "20000", "--steps", "60", "--figure", "", "--quiet",
                 "--json", str(path)]) == 0
    numbers = _written(path)
    assert numbers["suboptimality"] == pytest.approx(numbers["objective_gap"], rel=1e-6)
    assert f"β·KL(π_θ‖π*) = {numbers['suboptimality']:.3e}" in capsys.readouterr().out
    assert all(c["suboptimality"] > 0 for c in numbers["compare"].values())


def test_gridworld_seeds_hold_each_seeds_returns_and_variance_cuts(tmp_path, capsys):
    path = tmp_path / "gw.json"
    settings = dict(iterations=20, variance_episodes=20, variance_seeds=2)
    assert main(["gridworld", "--seeds", "0,2", "--iterations", "20", "--variance-episodes", "20",
                 "--variance-seeds", "2", "--quiet", "--json", str(path), "--output-dir", str(tmp_path / "figs")]) == 0
    numbers = _written(path)
    assert numbers["seeds"] == [0, 2] and len(numbers["runs"]) == 2
    one = gw.run_gridworld(seed=2, progress=False, **settings)
    row = numbers["per_seed"][1]
    assert row["seed"] == 2 and row["policy_return_baseline"] == pytest.approx(
        one["reinforce_baseline"]["policy_return"], rel=1e-12)
    ratios = one["variance"]["ratio"]["learned"]
    assert len(ratios) == 2 and row["learned_ratio"] == pytest.approx(np.mean(ratios), rel=1e-12)
    assert (row["learned_ratio_min"], row["learned_ratio_max"]) == (min(ratios), max(ratios))
    pooled = [x for run in numbers["runs"] for x in run["variance"]["ratio"]["learned"]]
    assert numbers["variance_ratio"]["learned"]["n"] == 4
    assert numbers["variance_ratio"]["learned"]["max"] == pytest.approx(max(pooled), rel=1e-12)
    for key in ("policy_return", "uniform_ratio", "learned_ratio"):
        _check_spread(numbers, key)
    assert "V*(start) = 47.1007 on every seed" in capsys.readouterr().out
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "figs" / "gridworld.png").exists()                # the first seed's figure


def test_each_variance_estimate_of_a_run_is_its_own_sampling_seed():
    r = gw.run_gridworld(iterations=5, variance_episodes=10, variance_seeds=3, progress=False)
    learned = r["variance"]["ratio"]["learned"]
    assert len(set(learned)) == 3                                          # three draws, not one repeated
    assert r["variance"]["learned_no_baseline"] / r["variance"]["learned_baseline"] != pytest.approx(learned[0])


def test_rlhf_seeds_report_each_methods_worst_seed_in_final_kl_and_every_seed_beside_it(tmp_path, capsys):
    path = tmp_path / "rlhf.json"
    assert main(["rlhf", "--quick", "--seeds", "0-1", "--quiet", "--output-dir", "", "--json", str(path)]) == 0
    numbers = _written(path)
    assert set(numbers["final_kl"]) == {"reinforce", "ppo", "dpo"}
    one = rlhf_toy.run_rlhf(seed=1, progress=False, **rlhf_toy.QUICK)
    for method, worst in numbers["final_kl"].items():
        per_seed = numbers["final_kl_per_seed"][method]
        assert len(per_seed) == 2 and worst == max(per_seed)
        assert per_seed[1] == pytest.approx(one["final_kl"][method], rel=1e-12)
    row = numbers["per_seed"][1]
    assert row["kl_ppo_reward_model"] == pytest.approx(one["final_kl_all"]["ppo_reward_model"], rel=1e-12)
    assert row["suboptimality_dpo"] == pytest.approx(one["final_suboptimality"]["dpo"], rel=1e-12)
    for key in ("kl_reinforce", "kl_dpo", "reinforce_ahead_fraction"):
        _check_spread(numbers, key)
    assert "final_kl (worst seed): reinforce" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["rlhf", "--quick", "--seeds", "3-1"], "--seeds: the range 3-1 runs backwards; write 1-3"),
    (["gridworld", "--seeds", ""], "--seeds: is empty"),
    (["closed-form", "--seeds", "0,x"], "--seeds: must be a range like 0-4 or a list like 0,1,2"),
    (["closed-form", "--seed", "1", "--seeds", "0-1"], "--seeds runs every seed it names, so --seed would change nothing"),
])
def test_a_bad_seed_list_is_refused_before_anything_runs(args, message, capsys):
    assert main([*args, "--quiet", "--output-dir", ""] if args[0] != "closed-form" else [*args, "--figure", ""]) == 2
    assert message in capsys.readouterr().err
