"""The whole pipeline of the notes on the toy data, in a few minutes: SFT → π_ref → DPO, and the
reward model that DPO does without.

    python -m dpo_np demo        # run_demo(): the table below, figures/, runs/demo/

1. Supervised fine-tuning (``sft.py``) of a small GPT on ``toy_preferences.sft_corpus``: both the chosen
   and the rejected answer of every train pair, trained to its last step, so the SFT model writes
   either answer to a trained prompt (the notes' pairs are sampled from π_ref: a reference that
   writes only y_w leaves DPO nothing to change, one that writes neither nothing to choose). Its
   tokenizer is a byte-level BPE learned from the train split, so the same seconds buy a model that
   writes whole answers. Its validation loss, on answers to unseen prompts, is lowest long before the
   last step; stopping there (``sft_patience``) gives a reference that ranks new pairs a little
   better and writes almost nothing whole.
2. π_ref = a frozen copy of the SFT model (the DPO paper, §4: π_ref = π^SFT).
3. DPO (``trainers.DPOTrainer``) from π_θ = π_ref on the train pairs, stopped at its best
   validation loss.
4. The Bradley–Terry reward model r_φ (``reward_model.py``, body initialised from the SFT model)
   on the same pairs: what RLHF would fit first, and DPO skips.

Then what the model *says* is judged, before and after DPO, by the toy data's gold judge
(``toy_preferences.judge``: which rule an answer follows, y_w's, y_l's or neither): answers sampled
at temperature 1 to the first ``judge_train_prompts`` prompts DPO trains on and to every held-out
prompt, and the greedy answer to each held-out prompt. And the held-out (eval) pairs are measured:

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

import numpy as np

from dpo_np.experiments import plots, toy_preferences
from dpo_np.experiments.evaluation import (accuracy_by_family, estimate_kl, implicit_reward_metrics,
                                           judged_answers, reward_model_scores)
from dpo_np.data import format_prompt
from dpo_np.generate import greedy_answer
from dpo_np.model import GPT, GPTConfig
from dpo_np.progress import Stopwatch
from dpo_np.reward_model import RewardConfig, RewardModel, RewardTrainer
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.tokenizer import BPETokenizer, CharTokenizer
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.training import check_output_dir, frozen_copy, read_metrics

#: rows of the printed table, in order (the keys of ``result["before"]`` / ``result["after"]``)
TABLE_ROWS = (
    ("judge_train", "trained prompts, sampled answers: y_w's / y_l's rule / neither"),
    ("judge", "held-out prompts, sampled answers: y_w's / y_l's rule / neither"),
    ("judge_greedy", "held-out prompts, greedy answers: y_w's / y_l's rule / neither"),
    ("implicit_reward_accuracy", "implicit-reward accuracy  r̂(y_w) > r̂(y_l), learnable rules"),
    ("implicit_reward_accuracy_facts", "  the same, pairs that need an unseen fact"),
    ("implicit_reward_ties", "  pairs with r̂(y_w) = r̂(y_l) exactly"),
    ("implicit_reward_margin", "mean implicit reward margin  r̂(y_w) − r̂(y_l)"),
    ("logp_accuracy", "policy accuracy  log π_θ(y_w|x) > log π_θ(y_l|x)"),
    ("dpo_loss", "DPO loss (log 2 = 0.6931 at π_θ = π_ref)"),
    ("kl", "KL(π_θ ‖ π_ref) per response, nats (± s.e.)"),
    ("reward_model_accuracy", "reward model accuracy  r_φ(y_w) > r_φ(y_l), learnable rules"),
    ("reward_model_accuracy_facts", "  the same, pairs that need an unseen fact"),
)

#: the default run and the quick one (seconds; a model too small to answer, for tests). DPO and the
#: reward model evaluate on the validation split every ``eval_every`` steps, keep their best point
#: and stop after ``patience`` evaluations without a better one; SFT does so only when
#: ``sft_patience`` is set (see the module docstring for why it trains to its last step).
DEFAULTS = dict(tokenizer="bpe-512", n_layer=3, n_head=4, n_embd=96, block_size=96,
                sft_steps=1500, sft_lr=3e-3, sft_batch_size=16,
                dpo_steps=120, dpo_lr=1e-4, beta=0.5, dpo_batch_size=16, sft_weight=0.0,
                rm_steps=120, rm_lr=3e-4, rm_batch_size=16,
                kl_samples=4, max_new_tokens=None, eval_every=20, sft_eval_every=100, patience=3, sft_patience=None,
                judge_train_prompts=64)
QUICK = dict(tokenizer="char", n_layer=1, n_head=2, n_embd=16, block_size=160,
             sft_steps=20, sft_lr=1e-2, sft_batch_size=16,
             dpo_steps=6, dpo_lr=1e-3, beta=0.1, dpo_batch_size=8, sft_weight=0.0,
             rm_steps=6, rm_lr=1e-3, rm_batch_size=8,
             kl_samples=1, max_new_tokens=12, eval_every=3, sft_eval_every=10, patience=3, sft_patience=3,
             judge_train_prompts=8)


# ---- the run --------------------------------------------------------------------------------

def run_demo(output_dir="runs/demo", figures_dir=None, quick=False, seed=0, show_progress=True,
             print_fn=print, overwrite=False, **overrides):
    """SFT → π_ref → DPO and the reward model on the toy data (split by ``seed``); prints the table.

    ``quick=True`` starts from ``QUICK`` instead of ``DEFAULTS``; ``overrides`` set any of their
    keys. Runs are written under ``output_dir`` (sft/, dpo/, reward/, each with metrics.jsonl,
    best/ and final/), figures under ``figures_dir`` (default ``output_dir/figures``; "" for none).
    ``overwrite`` replaces an earlier demo's runs there. Returns a dict with every number of the
    table (``before``, ``after``, ``answers``, ``families``, ``table``), the configuration, timings,
    figure paths and the trained models.
    """
    cfg = dict(QUICK if quick else DEFAULTS)
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise TypeError(f"run_demo: unknown argument(s) {unknown}; expected some of {sorted(cfg)}")
    cfg.update(overrides, seed=seed, quick=bool(quick))
    clock = Stopwatch()
    data = toy_preferences.preference_dataset(seed)
    tokenizer = toy_tokenizer(cfg["tokenizer"], seed)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                       n_head=cfg["n_head"], n_embd=cfg["n_embd"])
    common = dict(max_length=cfg["block_size"], max_prompt_length=min(64, cfg["block_size"] - 1), seed=seed,
                  show_progress=show_progress, overwrite_output_dir=overwrite, group_by_length=True,
                  load_best_model_at_end=True, early_stopping_patience=cfg["patience"])
    runs = {stage: os.path.join(output_dir, stage) for stage in ("sft", "dpo", "reward")}
    for path in runs.values():                       # refuse a used directory now, not after SFT
        check_output_dir(path, overwrite)

    model = GPT(config, seed=seed)
    print_fn(f"demo: seed {seed}; {len(data['train'])} train / {len(data['validation'])} validation / "
             f"{len(data['eval'])} held-out pairs; GPT {config.n_layer} layers × {config.n_embd} channels "
             f"({model.num_params():,} parameters)")
    sft = _sft_stage(model, tokenizer, data, cfg, common, runs["sft"], seed)
    clock.lap("sft")
    reference = frozen_copy(model)                   # π_ref = π^SFT, frozen; π_θ starts from it
    answers = {p: {"before": greedy_answer(model, tokenizer, p, cfg["max_new_tokens"])}
               for p in toy_preferences.NOTES_PROMPTS}
    dpo = _dpo_trainer(model, reference, tokenizer, data, cfg, common, runs["dpo"])
    before = _measure(dpo, data["eval"], data["train"], reference, tokenizer, cfg, seed)
    clock.lap("before")
    dpo.train()
    clock.lap("dpo")
    after = _measure(dpo, data["eval"], data["train"], reference, tokenizer, cfg, seed)
    for p in toy_preferences.NOTES_PROMPTS:
        answers[p]["after"] = greedy_answer(model, tokenizer, p, cfg["max_new_tokens"])
        for when in ("before", "after"):
            answers[p][when + "_is"] = notes_verdict(p, answers[p][when])
    clock.lap("after")
    rm = _reward_stage(reference, tokenizer, data, cfg, common, runs["reward"], seed, before, after)
    clock.lap("reward_model")
    families = {"implicit_reward": accuracy_by_family(data["eval"], after["chosen_rewards"] > after["rejected_rewards"]),
                "logp_before": accuracy_by_family(data["eval"], before["chosen_logps"] > before["rejected_logps"]),
                "logp_after": accuracy_by_family(data["eval"], after["chosen_logps"] > after["rejected_logps"]),
                "reward_model": accuracy_by_family(data["eval"], rm["wins"])}
    seconds = clock.seconds()
    table = format_table(before, after, answers, cfg, families)
    print_fn(table)
    figures = _draw_figures(_figures_dir(figures_dir, output_dir), print_fn, {
        "sft": read_metrics(sft.metrics_path), "dpo": [dpo.step0_eval] + read_metrics(dpo.metrics_path),
        "reward": [rm["step0"]] + read_metrics(rm["trainer"].metrics_path)}, cfg)
    print_fn(f"demo: {seconds['total']:.0f} s (SFT {seconds['sft']:.0f} s, DPO {seconds['dpo']:.0f} s, "
             f"reward model {seconds['reward_model']:.0f} s, measuring {seconds['before'] + seconds['after']:.0f} s)"
             f"; best steps: SFT {_best(sft)}, DPO {_best(dpo)}, reward model {_best(rm['trainer'])}; "
             f"runs in {output_dir}")
    return {"before": before, "after": after, "answers": answers, "families": families, "table": table,
            "config": cfg, "seconds": seconds, "figures": figures,
            "best_steps": {"sft": _best(sft), "dpo": _best(dpo), "reward_model": _best(rm["trainer"])},
            "models": {"policy": model, "reference": reference, "reward_model": rm["trainer"].model,
                       "tokenizer": tokenizer}}


def toy_tokenizer(kind, seed=0):
    """The tokenizer of the toy runs: "char" (one token per character of the toy data's alphabet)
    or "bpe-<n>": a byte-level BPE of n tokens learned from the train split's SFT texts alone."""
    if kind == "char":
        return CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    if not kind.startswith("bpe-"):
        raise ValueError(f"tokenizer must be 'char' or 'bpe-<vocabulary size>', got {kind!r}")
    texts = [format_prompt(r["prompt"]) + r["response"] for r in toy_preferences.sft_corpus(seed, "train")]
    return BPETokenizer.train(texts, int(kind[4:]))


def _sft_stage(model, tokenizer, data, cfg, common, output_dir, seed):
    """1. SFT on both answers of every train pair; stopped at its best validation loss when
    ``sft_patience`` is set, else trained to its last step (π_ref should then write the train answers
    out, which DPO then ranks: the validation loss, which scores answers to unseen prompts, is lowest
    long before that)."""
    stop = dict(load_best_model_at_end=cfg["sft_patience"] is not None, early_stopping_patience=cfg["sft_patience"])
    sft = SFTTrainer(model, SFTConfig(output_dir=output_dir, max_steps=cfg["sft_steps"], learning_rate=cfg["sft_lr"],
                                      per_device_train_batch_size=cfg["sft_batch_size"], logging_steps=10,
                                      warmup_steps=min(20, cfg["sft_steps"] // 10),
                                      eval_steps=cfg["sft_eval_every"], **{**common, **stop}),
                     train_dataset=toy_preferences.sft_corpus(seed, "train"),
                     eval_dataset=toy_preferences.sft_corpus(seed, "validation"), tokenizer=tokenizer)
    sft.train()
    return sft


def _dpo_trainer(model, reference, tokenizer, data, cfg, common, output_dir):
    """3. DPO from π_θ = π_ref on the train pairs, stopped at its best validation loss. The held-out
    pairs are measured apart (``_measure``), never used to choose the stopping point."""
    loss = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, cfg["sft_weight"]]) if cfg["sft_weight"] else {}
    dpo = DPOTrainer(model, reference, DPOConfig(
        output_dir=output_dir, max_steps=cfg["dpo_steps"], learning_rate=cfg["dpo_lr"], beta=cfg["beta"],
        per_device_train_batch_size=cfg["dpo_batch_size"], warmup_steps=min(10, cfg["dpo_steps"] // 10),
        precompute_ref_log_probs=True, logging_steps=1, eval_steps=cfg["eval_every"], **loss, **common),
        train_dataset=data["train"], eval_dataset=data["validation"], tokenizer=tokenizer)
    dpo.step0_eval = {"step": 0, "epoch": 0.0, **dpo.evaluate()}
    return dpo


def _measure(dpo, held_out, dpo_train, reference, tokenizer, cfg, seed):
    """The held-out numbers of the table for the policy as it is now, and the judge on the first
    ``judge_train_prompts`` prompts DPO trains on."""
    out = implicit_reward_metrics(dpo, held_out)
    learnable = np.array([r["family"] in toy_preferences.LEARNABLE for r in held_out])
    wins = out["chosen_rewards"] > out["rejected_rewards"]
    out["implicit_reward_accuracy"] = float(wins[learnable].mean())
    out["implicit_reward_accuracy_facts"] = float(wins[~learnable].mean())
    prompts = list(dict.fromkeys(r["prompt"] for r in held_out))
    estimate = estimate_kl(dpo.model, reference, tokenizer, prompts, cfg["kl_samples"], seed, cfg["max_new_tokens"])
    judged = judged_answers(dpo.model, tokenizer, prompts, cfg["kl_samples"], seed, cfg["max_new_tokens"],
                            samples=estimate.pop("samples"))
    trained = list(dict.fromkeys(r["prompt"] for r in dpo_train))[:cfg["judge_train_prompts"]]
    on_train = judged_answers(dpo.model, tokenizer, trained, cfg["kl_samples"], seed, cfg["max_new_tokens"])
    out.update(kl=estimate["kl"], kl_stderr=estimate["stderr"], kl_estimate=estimate, judge=judged["sampled"],
               judge_greedy=judged["greedy"], greedy_answers=judged["greedy_answers"],
               judge_train=on_train["sampled"], judge_train_greedy=on_train["greedy"])
    return out


def _reward_stage(reference, tokenizer, data, cfg, common, output_dir, seed, before, after):
    """4. The Bradley–Terry reward model r_φ from the SFT body, on the same train pairs."""
    rm = RewardTrainer(RewardModel(reference, seed=seed), RewardConfig(
        output_dir=output_dir, max_steps=cfg["rm_steps"], learning_rate=cfg["rm_lr"],
        per_device_train_batch_size=cfg["rm_batch_size"], warmup_steps=min(10, cfg["rm_steps"] // 10),
        logging_steps=1, eval_steps=cfg["eval_every"], metric_for_best_model="eval/loss", **common),
        train_dataset=data["train"], eval_dataset=data["validation"], tokenizer=tokenizer)
    step0 = {"step": 0, "epoch": 0.0, **rm.evaluate()}
    r_w0, r_l0 = reward_model_scores(rm, data["eval"])
    rm.train()
    r_w, r_l = reward_model_scores(rm, data["eval"])
    learnable = np.array([r["family"] in toy_preferences.LEARNABLE for r in data["eval"]])
    for side, (w, l) in ((before, (r_w0, r_l0)), (after, (r_w, r_l))):
        side["reward_model_accuracy"] = float((w > l)[learnable].mean())
        side["reward_model_accuracy_facts"] = float((w > l)[~learnable].mean())
    return {"trainer": rm, "step0": step0, "wins": r_w > r_l}


def notes_verdict(prompt, answer):
    """"chosen" when ``answer`` is the notes' y_w of ``prompt`` (``toy_preferences.notes_answer_is_chosen``),
    otherwise the judge's verdict: "preferred" (y_w's rule, not y_w: "5" for 2+2), "rejected" or "neither"."""
    if toy_preferences.notes_answer_is_chosen(prompt, answer):
        return "chosen"
    return toy_preferences.judge(prompt, answer)


def _best(trainer):
    return trainer.state["counters"].get("best_step")


def _figures_dir(figures_dir, output_dir):
    return os.path.join(output_dir, "figures") if figures_dir is None else (figures_dir or None)


def format_table(before, after, answers, cfg, families=None):
    """The printed before/after table (a string) from ``run_demo``'s measurements."""
    def cell(side, key):
        if key == "implicit_reward_ties":
            return f"{side[key]}/{side['pairs']}"
        if key == "kl":
            return f"{side['kl']:.3f} ± {side['kl_stderr']:.3f}"
        if key == "dpo_loss":
            return f"{side[key]:.4f}"
        if key.startswith("judge"):
            return " / ".join(f"{side[key][j]:.2f}" for j in toy_preferences.JUDGEMENTS)
        return f"{side[key]:.3f}"

    n_learnable = sum(n for f, (_, n) in (families or {}).get("implicit_reward", {}).items()
                      if f in toy_preferences.LEARNABLE)
    width = max(len(label) for _, label in TABLE_ROWS) + 2
    lines = [f"\nheld-out pairs: {before['pairs']} (prompts never seen in training; {n_learnable} follow a "
             f"learnable rule); β = {cfg['beta']:g}",
             f"{'':<{width}}{'before DPO':>20}{'after DPO':>20}",
             f"{'':<{width}}{'(π_θ = π_ref)':>20}{'':>20}"]
    for key, label in TABLE_ROWS:
        lines.append(f"{label:<{width}}{cell(before, key):>20}{cell(after, key):>20}")
    lines.append(f"(answers and KL: responses sampled from π_θ at temperature 1, {cfg['kl_samples']} per held-out "
                 f"prompt, and its greedy answer to each; the rule is the prompt's family's (a number, not an "
                 f"evasion; the city placed, not denied; polite, not rude …); neither: garbled or unfinished. "
                 f"Reward model: untrained head before, trained after)")
    if families:
        lines.append("\nheld-out accuracy by family (wins/pairs); * needs a fact the model may not have seen:")
        cols = (("logp_before", "log π_ref"), ("logp_after", "log π_θ"), ("implicit_reward", "r̂ after DPO"),
                ("reward_model", "r_φ"))
        lines.append(f"  {'family':<18}" + "".join(f"{title:>14}" for _, title in cols))
        for fam in toy_preferences.FAMILIES:
            if fam in families["implicit_reward"]:
                name = fam + ("" if fam in toy_preferences.LEARNABLE else " *")
                lines.append(f"  {name:<18}" + "".join(f"{'%d/%d' % families[key][fam]:>14}" for key, _ in cols))
    lines.append("\nheld-out sampled answers by family, judged: y_w's rule / y_l's rule / neither (of n):")
    lines.append(f"  {'family':<18}{'π_ref':>16}{'π_θ':>16}{'n':>6}")
    counts = lambda c: " / ".join(str(c[j]) for j in toy_preferences.JUDGEMENTS)      # noqa: E731
    for fam in [f for f in toy_preferences.LEARNABLE if f in before["judge"]["by_family"]]:
        ref, pol = before["judge"]["by_family"][fam], after["judge"]["by_family"][fam]
        lines.append(f"  {fam:<18}{counts(ref):>16}{counts(pol):>16}{sum(ref.values()):>6}")
    lines.append("\ngreedy answers to the notes' prompts (π_ref = the SFT model before, π_θ after):")
    for prompt, a in answers.items():
        lines.append(f"  Q: {prompt}")
        lines.append(f"     before: {a['before']!r:<60} [{a['before_is']}]")
        lines.append(f"     after:  {a['after']!r:<60} [{a['after_is']}]")
    if cfg.get("quick"):
        lines.append("(--quick trains a one-layer model with 16 channels for a few steps: too small to answer;"
                     " it shows the pipeline, not the result)")
    return "\n".join(lines)


def _draw_figures(figures_dir, print_fn, rows, cfg):
    if not figures_dir:
        return []
    if importlib.util.find_spec("matplotlib") is None:
        print_fn('demo: matplotlib is not installed, so no figures: pip install "dpo-np[plot]"')
        return []
    paths = [plots.plot_sft_metrics(rows["sft"], os.path.join(figures_dir, "sft_loss.png")),
             plots.plot_dpo_metrics(rows["dpo"], os.path.join(figures_dir, "dpo_metrics.png"),
                                    title=f"DPO on the toy preferences (β = {cfg['beta']:g})"),
             plots.plot_reward_model_metrics(rows["reward"], os.path.join(figures_dir, "reward_model.png"))]
    print_fn("demo: figures written to " + ", ".join(paths))
    return paths
