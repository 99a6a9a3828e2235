"""Parity with TRL's own code: SimPO (CPOTrainer.cpo_loss), ORPO (ORPOTrainer.odds_ratio_loss), KTO
(KTOTrainer._compute_loss), GRPO and Dr. GRPO (GRPOTrainer._compute_loss) and RLOO (RLOOTrainer._compute_loss),
each called with a minimal stand-in for the trainer ``self`` (and, where the method runs a model, a stand-in
model that returns the log-probabilities under test), in float64: values and gradients against ours.

Runs only where torch and TRL are installed (the oracle environment); elsewhere it skips.
"""

import types
import warnings
from collections import defaultdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

from dpo_np import autograd as ag  # noqa: E402
from dpo_np import rl, successors  # noqa: E402
from dpo_np.autograd import Tensor  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl import GRPOTrainer, KTOTrainer, RLOOTrainer  # noqa: E402
    from trl.experimental.cpo import CPOTrainer  # noqa: E402
    from trl.experimental.orpo import ORPOTrainer  # noqa: E402
    from trl.experimental.orpo.orpo_trainer import log1mexp as trl_log1mexp  # noqa: E402
    from trl.trainer.utils import nanstd  # noqa: E402

TIGHT = dict(rtol=1e-12, atol=1e-13)


def stand_in(**attributes):
    """The ``self`` a trainer's loss method reads: its settings, a one-process accelerator, metric buffers."""
    accelerator = types.SimpleNamespace(device="cpu", num_processes=1, sync_gradients=True,
                                        gather_for_metrics=lambda x: x, gather=lambda x: x,
                                        reduce=lambda x, reduction="sum": x)
    defaults = dict(accelerator=accelerator, model=types.SimpleNamespace(training=True), aux_loss_enabled=False,
                    _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    return types.SimpleNamespace(**{**defaults, **attributes})


def leaf(a):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def ours_with_grad(fn, *arrays):
    """Our loss (summed) and its gradient with respect to each input, in float64."""
    tensors = [Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.sum().backward() if out.ndim else out.backward()
    return out.data, [t.grad for t in tensors]


def averaged_logps(seed, B=6):
    rng = np.random.default_rng(seed)
    return -np.abs(rng.standard_normal((2, B))) * 1.5 - 0.05


# -- SimPO and ORPO ---------------------------------------------------------------------------------

@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_simpo_matches_cpo_trainers_simpo_loss(label_smoothing):
    pw, pl = averaged_logps(0)
    me = stand_in(alpha=0.0, loss_type="simpo", simpo_gamma=0.7, beta=2.3, label_smoothing=label_smoothing)
    tw, tl = leaf(pw), leaf(pl)
    losses, chosen_rewards, _ = CPOTrainer.cpo_loss(me, tw, tl)
    losses.sum().backward()
    ours, (gw, gl) = ours_with_grad(lambda a, b: successors.simpo_loss(a, b, 2.3, 0.7, label_smoothing), pw, pl)
    np.testing.assert_allclose(ours, losses.detach().numpy(), **TIGHT)
    np.testing.assert_allclose(gw, tw.grad.numpy(), **TIGHT)
    np.testing.assert_allclose(gl, tl.grad.numpy(), **TIGHT)
    np.testing.assert_allclose(chosen_rewards.numpy(), 2.3 * pw, **TIGHT)        # the logged reward β·ū


def test_orpos_odds_ratio_term_matches_orpo_trainers():
    """TRL casts the log-probabilities to float32 inside ``odds_ratio_loss``, so this one agrees to float32."""
    pw, pl = averaged_logps(1)
    me = stand_in(beta=0.25)
    tw, tl = leaf(pw), leaf(pl)
    losses, _, _, _, _ = ORPOTrainer.odds_ratio_loss(me, tw, tl)             # λ·log σ(log odds ratio)
    (-losses).sum().backward()
    ours, (gw, gl) = ours_with_grad(lambda a, b: successors.orpo_loss(a, b, 0.25) + a, pw, pl)   # minus the NLL
    np.testing.assert_allclose(ours, -losses.detach().double().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gl, tl.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_log1mexp_matches_trls_in_float64():
    x = np.array([-1e-12, -1e-5, -0.3, -0.6931471805599453, -0.7, -5.0, -700.0])
    t = leaf(x)
    trl_log1mexp(t).sum().backward()
    ours, (grad,) = ours_with_grad(ag.log1mexp, x)
    np.testing.assert_allclose(ours, trl_log1mexp(torch.tensor(x)).numpy(), rtol=1e-15)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12)


# -- KTO --------------------------------------------------------------------------------------------

class LogProbModel:
    """A stand-in model: returns, for each row, the sequence log-probability it was given, as the one
    position the loss sums (KTO's batches here are two tokens wide: one prompt token, one completion)."""

    def __init__(self, by_input):
        self.by_input = by_input
        self.training = True

    def __call__(self, input_ids, **_):
        logps = self.by_input[id(input_ids)]
        zeros = torch.zeros_like(logps)[:, None]
        return types.SimpleNamespace(log_probs=logps[:, None], entropy=zeros, mean_logits=zeros)


@pytest.mark.parametrize("z_positive", [True, False])
def test_kto_matches_kto_trainers_loss_with_its_reference_point(z_positive):
    rng = np.random.default_rng(2 if z_positive else 3)
    B = 6
    policy, ref = -np.abs(rng.standard_normal(B)) * 3, -np.abs(rng.standard_normal(B)) * 3
    kl_policy, kl_ref = -np.abs(rng.standard_normal(B)) * 3, -np.abs(rng.standard_normal(B)) * 3
    kl_policy = kl_ref + (0.4 if z_positive else -0.4) + 0.1 * rng.standard_normal(B)   # z > 0, or clipped to 0
    good = np.array([True, False, True, True, False, False])
    ids, kl_ids = torch.zeros((B, 2), dtype=torch.long), torch.ones((B, 2), dtype=torch.long)
    tp = leaf(policy)
    model = LogProbModel({id(ids): tp, id(kl_ids): torch.tensor(kl_policy)})
    me = stand_in(calculate_KL=True, precompute_ref_logps=True, loss_type="kto", beta=0.3, desirable_weight=1.4,
                  undesirable_weight=0.9, _total_train_tokens=0, _tp_size=1, model=model)
    me._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, me)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.ones_like(ids),
              "KL_input_ids": kl_ids, "KL_attention_mask": torch.ones_like(kl_ids),
              "KL_completion_mask": torch.ones_like(kl_ids), "label": torch.tensor(good),
              "ref_logps": torch.tensor(ref), "ref_KL_logps": torch.tensor(kl_ref)}
    loss = KTOTrainer._compute_loss(me, model, inputs, return_outputs=False)
    loss.backward()
    z = successors.kto_reference_point(kl_policy, kl_ref)
    assert (z > 0) == z_positive and me._metrics["train"]["kl"][-1] == pytest.approx(z, rel=1e-12)
    ours, (grad,) = ours_with_grad(lambda p: successors.kto_loss(p, ref, good, z, 0.3, 1.4, 0.9).mean(), policy)
    np.testing.assert_allclose(ours, loss.item(), **TIGHT)
    np.testing.assert_allclose(grad, tp.grad.numpy(), **TIGHT)


# -- GRPO, Dr. GRPO, RLOO ---------------------------------------------------------------------------------

def group_batch(seed, G=8, T=5):
    rng = np.random.default_rng(seed)
    old = -np.abs(rng.standard_normal((G, T)))
    logps = old + 0.3 * rng.standard_normal((G, T))                          # some ratios beyond the clip
    ref = -np.abs(rng.standard_normal((G, T)))
    mask = np.arange(T)[None, :] < rng.integers(1, T + 1, size=G)[:, None]
    rewards = rng.standard_normal((2, G // 2))                               # 2 prompts × 4 samples
    return logps, old, ref, mask, rewards


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_grpo_losses_match_grpo_trainers_per_token_loss(loss_type):
    logps, old, ref, mask, rewards = group_batch(4)
    advantages = rl.grpo_advantages(rewards, scale_rewards=loss_type != "dr_grpo").ravel()
    G, T = logps.shape
    tp = leaf(logps)
    me = stand_in(top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
                  beta=0.04, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.2, use_vllm=False,
                  current_gradient_accumulation_steps=1, max_completion_length=7, _entropy_bonus_enabled=False,
                  args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None))
    me._get_per_token_logps_and_entropies = lambda *a, **k: (tp, torch.zeros_like(tp), None)
    inputs = {"prompt_ids": torch.zeros((G, 1), dtype=torch.long), "prompt_mask": torch.ones((G, 1)),
              "completion_ids": torch.zeros((G, T), dtype=torch.long), "completion_mask": torch.tensor(mask * 1.0),
              "advantages": torch.tensor(advantages), "old_per_token_logps": torch.tensor(old),
              "ref_per_token_logps": torch.tensor(ref)}
    loss = GRPOTrainer._compute_loss(me, None, inputs)
    loss.backward()
    ours, (grad,) = ours_with_grad(lambda p: rl.grpo_loss(p, old, ref, advantages, mask=mask, beta=0.04,
                                                          clip_eps=0.2, loss_type=loss_type, max_completion_length=7),
                                   logps)
    np.testing.assert_allclose(ours, loss.item(), **TIGHT)
    np.testing.assert_allclose(grad, tp.grad.numpy(), **TIGHT)


def test_grpo_advantages_use_trls_group_standard_deviation():
    """TRL's Bessel factor count/(count − 1) is an integer division, which torch computes in float32:
    (6/5 rounds to 1.2000000477), so the two agree to float32's rounding of that one factor."""
    rewards = np.random.default_rng(5).standard_normal((3, 6))
    t = torch.tensor(rewards)
    want = (t - t.mean(dim=1, keepdim=True)) / (nanstd(t, dim=1).unsqueeze(1) + 1e-4)
    np.testing.assert_allclose(rl.grpo_advantages(rewards), want.numpy(), rtol=1e-7)
    exact = torch.sqrt(((t - t.mean(dim=1, keepdim=True)) ** 2).sum(1, keepdim=True) / 5)
    np.testing.assert_allclose(rl.grpo_advantages(rewards), ((t - t.mean(1, keepdim=True)) / (exact + 1e-4)).numpy(),
                               **TIGHT)


def test_rloo_matches_rloo_trainers_sequence_loss():
    logps, old, _, mask, rewards = group_batch(6)
    seq, old_seq = (logps * mask).sum(1), (old * mask).sum(1)
    advantages = rl.rloo_advantages(rewards).ravel()
    G, T = logps.shape
    tp = leaf(logps)
    me = stand_in(epsilon_low=0.2, epsilon_high=0.2)
    me._get_per_token_logps_and_entropies = lambda *a, **k: (tp, torch.zeros_like(tp), None)
    inputs = {"prompt_ids": torch.zeros((G, 1), dtype=torch.long), "prompt_mask": torch.ones((G, 1)),
              "completion_ids": torch.zeros((G, T), dtype=torch.long), "completion_mask": torch.tensor(mask * 1.0),
              "advantages": torch.tensor(advantages), "old_logps": torch.tensor(old_seq)}
    loss = RLOOTrainer._compute_loss(me, None, inputs)
    loss.backward()
    ours, (grad,) = ours_with_grad(lambda p: rl.ppo_clip_loss(p, old_seq, advantages, 0.2), seq)
    np.testing.assert_allclose(ours, loss.item(), **TIGHT)
    np.testing.assert_allclose(grad[:, None] * mask, tp.grad.numpy(), **TIGHT)    # d/dlog π per token = d/dΣ
