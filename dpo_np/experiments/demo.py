"""The whole pipeline of the notes on the toy data, in a few minutes: SFT → π_ref → DPO, and the
reward model that DPO does without.

    python -m dpo_np demo        # run_demo(): the table below, figures/, runs/demo/

1. Supervised fine-tuning (``sft.py``) of a small GPT on ``toy_preferences.sft_corpus``: both the chosen
   and the rejected answer of every train pair, so the SFT model can say either.
2. π_ref = a frozen copy of the SFT model (the DPO paper, §4: π_ref = π^SFT).
3. DPO (``trainers.DPOTrainer``) from π_θ = π_ref on the train pairs.
4. The Bradley–Terry reward model r_φ (``reward_model.py``, body initialised from the SFT model)
   on the same pairs: what RLHF would fit first, and DPO skips.

Then everything is measured on the held-out (eval) pairs, before and after DPO:

- the implicit reward r̂(x, y) = β log π_θ(y|x)/π_ref(y|x) (DPO paper eq. 5): its pair accuracy
  r̂(x, y_w) > r̂(x, y_l) and its mean margin. Before DPO π_θ = π_ref, so every r̂ is exactly 0 and
  every pair is a tie (a tie is not a win: accuracy 0, as in the standard ``rewards/accuracies``);
- the policy's own comparison log π_θ(y_w|x) > log π_θ(y_l|x), which is meaningful at both ends;
- KL(π_θ ‖ π_ref) over whole responses, sampled from π_θ (``estimate_kl``): the price the RLHF
  objective charges for moving away from π_ref (the notes: "the KL divergence term");
- the reward model's pair accuracy r_φ(x, y_w) > r_φ(x, y_l);
- the greedy answers to the notes' three prompts, and whether each is y_w, a y_l or neither;
- the pair accuracies split by family of prompts (toy_preferences's rules): a family whose y_w differs
  from y_l by style (manners, explain) asks whether the preference generalizes to new prompts, one
  that needs an unseen fact (the country of an unseen city) can only be guessed.

Every number is computed by the run; nothing is fixed in advance.
"""

import importlib.util
import os
import time

from dpo_np.experiments import plots, toy_preferences
from dpo_np.experiments.evaluation import (accuracy_by_family, classify_answer, estimate_kl,
                                           implicit_reward_metrics, reward_model_scores)
from dpo_np.generate import greedy_answer
from dpo_np.model import GPT, GPTConfig
from dpo_np.reward_model import RewardConfig, RewardModel, RewardTrainer
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.tokenizer import CharTokenizer
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.training import frozen_copy, read_metrics

#: rows of the printed table, in order (the keys of ``result["before"]`` / ``result["after"]``)
TABLE_ROWS = (
    ("implicit_reward_accuracy", "implicit-reward accuracy  r̂(y_w) > r̂(y_l)"),
    ("implicit_reward_ties", "  pairs with r̂(y_w) = r̂(y_l) exactly"),
    ("implicit_reward_margin", "mean implicit reward margin  r̂(y_w) − r̂(y_l)"),
    ("logp_accuracy", "policy accuracy  log π_θ(y_w|x) > log π_θ(y_l|x)"),
    ("dpo_loss", "DPO loss (log 2 = 0.6931 at π_θ = π_ref)"),
    ("kl", "KL(π_θ ‖ π_ref) per response, nats (± s.e.)"),
    ("reward_model_accuracy", "reward model accuracy  r_φ(y_w) > r_φ(y_l)"),
)

#: the default run (about 4 minutes on 2 cores) and the quick one (seconds; for tests)
DEFAULTS = dict(n_layer=3, n_head=4, n_embd=96, block_size=160,
                sft_steps=1500, sft_lr=3e-3, sft_batch_size=16,
                dpo_steps=80, dpo_lr=1e-4, beta=0.5, dpo_batch_size=16,
                rm_steps=150, rm_lr=3e-4, rm_batch_size=16,
                kl_samples=4, max_new_tokens=None, eval_every=10)
QUICK = dict(n_layer=1, n_head=2, n_embd=16, block_size=160,
             sft_steps=20, sft_lr=1e-2, sft_batch_size=16,
             dpo_steps=6, dpo_lr=1e-3, beta=0.1, dpo_batch_size=8,
             rm_steps=6, rm_lr=1e-3, rm_batch_size=8,
             kl_samples=1, max_new_tokens=12, eval_every=3)


# ---- the run --------------------------------------------------------------------------------

def run_demo(output_dir="runs/demo", figures_dir="figures", quick=False, seed=0, data_seed=0,
             show_progress=True, print_fn=print, **overrides):
    """SFT → π_ref → DPO and the reward model on the toy data; prints the before/after table.

    ``quick=True`` starts from ``QUICK`` (a one-layer model, a few steps: seconds) instead of
    ``DEFAULTS``; ``overrides`` set any of their keys (n_layer, n_head, n_embd, block_size,
    sft_steps, sft_lr, sft_batch_size, dpo_steps, dpo_lr, beta, dpo_batch_size, rm_steps, rm_lr,
    rm_batch_size, kl_samples, max_new_tokens, eval_every). Runs are written under ``output_dir``
    (sft/, dpo/, reward/, each with metrics.jsonl and final/), figures under ``figures_dir``
    (None: no figures). Returns a dict with every number of the table (``before``, ``after``,
    ``answers``, ``table``), the configuration, timings, figure paths and the trained models.
    """
    cfg = dict(QUICK if quick else DEFAULTS)
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise TypeError(f"run_demo: unknown argument(s) {unknown}; expected some of {sorted(cfg)}")
    cfg.update(overrides)
    cfg.update(seed=seed, data_seed=data_seed, quick=bool(quick))
    seconds = {}
    clock = time.perf_counter()
    start = clock

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    tokenizer = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    data = toy_preferences.preference_dataset(data_seed)
    train, held_out = data["train"], data["eval"]
    corpus = toy_preferences.sft_corpus(data_seed)
    held_out_sft = list({(r["prompt"], y): {"prompt": r["prompt"], "response": y}
                         for r in held_out for y in (r["chosen"], r["rejected"])}.values())
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                       n_head=cfg["n_head"], n_embd=cfg["n_embd"])
    L, P = cfg["block_size"], min(64, cfg["block_size"] - 1)
    common = dict(max_length=L, max_prompt_length=P, seed=seed, show_progress=show_progress,
                  eval_steps=cfg["eval_every"])

    # 1. SFT: the model that becomes π_ref
    model = GPT(config, seed=seed)
    print_fn(f"demo: {len(corpus)} SFT examples, {len(train)} train / {len(held_out)} held-out pairs; "
             f"GPT {config.n_layer} layers × {config.n_embd} channels ({model.num_params():,} parameters)")
    sft = SFTTrainer(model, SFTConfig(output_dir=os.path.join(output_dir, "sft"), max_steps=cfg["sft_steps"],
                                      learning_rate=cfg["sft_lr"], per_device_train_batch_size=cfg["sft_batch_size"],
                                      warmup_steps=min(20, cfg["sft_steps"] // 10), logging_steps=10,
                                      **{**common, "eval_steps": 10 * cfg["eval_every"]}),
                     train_dataset=corpus, eval_dataset=held_out_sft, tokenizer=tokenizer)
    sft_result = sft.train()
    lap("sft")

    # 2. π_ref, frozen; π_θ starts from the same parameters
    reference = frozen_copy(model)
    answers = {p: {"before": greedy_answer(model, tokenizer, p, cfg["max_new_tokens"])}
               for p in toy_preferences.NOTES_PROMPTS}

    # 3. DPO
    dpo = DPOTrainer(model, reference, DPOConfig(
        output_dir=os.path.join(output_dir, "dpo"), max_steps=cfg["dpo_steps"], learning_rate=cfg["dpo_lr"],
        beta=cfg["beta"], per_device_train_batch_size=cfg["dpo_batch_size"], warmup_steps=min(10, cfg["dpo_steps"] // 10),
        precompute_ref_log_probs=True, logging_steps=1, **common),
        train_dataset=train, eval_dataset=held_out, tokenizer=tokenizer)
    dpo.precompute_reference_logps("eval")
    before = implicit_reward_metrics(dpo)
    step0_eval = {"step": 0, "epoch": 0.0, **dpo.evaluate()}
    eval_prompts = list(dict.fromkeys(r["prompt"] for r in held_out))
    lap("before")
    before["kl_estimate"] = estimate_kl(model, reference, tokenizer, eval_prompts, cfg["kl_samples"], seed,
                                        cfg["max_new_tokens"])
    lap("kl_before")
    dpo_result = dpo.train()
    lap("dpo")
    after = implicit_reward_metrics(dpo)
    after["kl_estimate"] = estimate_kl(model, reference, tokenizer, eval_prompts, cfg["kl_samples"], seed,
                                       cfg["max_new_tokens"])
    for p in toy_preferences.NOTES_PROMPTS:
        answers[p]["after"] = greedy_answer(model, tokenizer, p, cfg["max_new_tokens"])
        for when in ("before", "after"):
            answers[p][when + "_is"] = classify_answer(answers[p][when], p, train)
    lap("after")

    # 4. the reward model r_φ, from the SFT body (π_ref's parameters)
    rm = RewardModel(reference, seed=seed)
    rm_trainer = RewardTrainer(rm, RewardConfig(
        output_dir=os.path.join(output_dir, "reward"), max_steps=cfg["rm_steps"], learning_rate=cfg["rm_lr"],
        per_device_train_batch_size=cfg["rm_batch_size"], warmup_steps=min(10, cfg["rm_steps"] // 10),
        logging_steps=1, **common), train_dataset=train, eval_dataset=held_out, tokenizer=tokenizer)
    rm_step0 = {"step": 0, "epoch": 0.0, **rm_trainer.evaluate()}
    rm_trainer.train()
    rm_final = rm_trainer.evaluate()
    before["reward_model_accuracy"] = rm_step0["eval/accuracy"]
    after["reward_model_accuracy"] = rm_final["eval/accuracy"]
    r_w, r_l = reward_model_scores(rm_trainer)
    lap("reward_model")
    families = {"implicit_reward": accuracy_by_family(held_out, after["chosen_rewards"] > after["rejected_rewards"]),
                "logp_before": accuracy_by_family(held_out, before["chosen_logps"] > before["rejected_logps"]),
                "logp_after": accuracy_by_family(held_out, after["chosen_logps"] > after["rejected_logps"]),
                "reward_model": accuracy_by_family(held_out, r_w > r_l)}

    for side in (before, after):
        side["kl"] = side["kl_estimate"]["kl"]
        side["kl_stderr"] = side["kl_estimate"]["stderr"]
    seconds["total"] = time.perf_counter() - start
    table = format_table(before, after, answers, cfg, families)
    print_fn(table)

    figures = []
    if figures_dir is not None:
        figures = _draw_figures(figures_dir, print_fn, {
            "sft": read_metrics(sft.metrics_path),
            "dpo": [step0_eval] + read_metrics(dpo.metrics_path),
            "reward": [rm_step0] + read_metrics(rm_trainer.metrics_path)}, cfg)
    print_fn(f"demo: {seconds['total']:.0f} s (SFT {seconds['sft']:.0f} s, DPO {seconds['dpo']:.0f} s, "
             f"reward model {seconds['reward_model']:.0f} s, KL and answers "
             f"{seconds['kl_before'] + seconds['after']:.0f} s); runs in {output_dir}")
    return {"before": before, "after": after, "answers": answers, "families": families, "table": table,
            "config": cfg,
            "seconds": seconds, "figures": figures,
            "sft": {"final_loss": sft_result["metrics"].get("loss"), "eval_loss": _last(sft, "eval/loss")},
            "dpo": {"final_loss": dpo_result["metrics"].get("loss"), "steps": dpo_result["global_step"]},
            "reward_model": {"before": rm_step0, "after": rm_final},
            "models": {"policy": model, "reference": reference, "reward_model": rm, "tokenizer": tokenizer}}


def _last(trainer, key):
    rows = [r[key] for r in trainer.state["log_history"] if key in r]
    return rows[-1] if rows else None


def format_table(before, after, answers, cfg, families=None):
    """The printed before/after table (a string) from ``run_demo``'s measurements."""
    def cell(side, key):
        if key == "implicit_reward_ties":
            return f"{side[key]}/{side['pairs']}"
        if key == "kl":
            return f"{side['kl']:.3f} ± {side['kl_stderr']:.3f}"
        if key == "dpo_loss":
            return f"{side[key]:.4f}"
        return f"{side[key]:.3f}"

    width = max(len(label) for _, label in TABLE_ROWS) + 2
    lines = [f"\nheld-out pairs: {before['pairs']} (prompts never seen in training); β = {cfg['beta']:g}",
             f"{'':<{width}}{'before DPO':>16}{'after DPO':>16}",
             f"{'':<{width}}{'(π_θ = π_ref)':>16}{'':>16}"]
    for key, label in TABLE_ROWS:
        lines.append(f"{label:<{width}}{cell(before, key):>16}{cell(after, key):>16}")
    lines.append(f"(KL: responses sampled from π_θ, {cfg['kl_samples']} per held-out prompt; "
                 f"reward model: untrained head before, trained after)")
    if families:
        lines.append("\nheld-out accuracy by family (wins/pairs):")
        cols = (("logp_before", "log π_ref"), ("logp_after", "log π_θ"), ("implicit_reward", "r̂ after DPO"),
                ("reward_model", "r_φ"))
        lines.append(f"  {'family':<12}" + "".join(f"{title:>14}" for _, title in cols))
        for fam in families["implicit_reward"]:
            cells = "".join(f"{'%d/%d' % families[key][fam]:>14}" for key, _ in cols)
            lines.append(f"  {fam:<12}" + cells)
    lines.append("\ngreedy answers to the notes' prompts (π_ref = the SFT model before, π_θ after):")
    for prompt, a in answers.items():
        lines.append(f"  Q: {prompt}")
        lines.append(f"     before: {a['before']!r:<60} [{a['before_is']}]")
        lines.append(f"     after:  {a['after']!r:<60} [{a['after_is']}]")
    return "\n".join(lines)


def _draw_figures(figures_dir, print_fn, rows, cfg):
    if importlib.util.find_spec("matplotlib") is None:
        print_fn('demo: matplotlib is not installed, so no figures: pip install "dpo-np[plot]"')
        return []
    paths = [plots.plot_sft_metrics(rows["sft"], os.path.join(figures_dir, "sft_loss.png")),
             plots.plot_dpo_metrics(rows["dpo"], os.path.join(figures_dir, "dpo_metrics.png"),
                                    title=f"DPO on the toy preferences (β = {cfg['beta']:g})"),
             plots.plot_reward_model_metrics(rows["reward"], os.path.join(figures_dir, "reward_model.png"))]
    print_fn("demo: figures written to " + ", ".join(paths))
    return paths
