"""The training runs behind the command line, on the toy data or on a JSONL file of one's own.

    python -m dpo_np sft --data sft.jsonl                        run_sft:      a GPT from scratch (byte tokenizer)
    python -m dpo_np dpo --data prefs.jsonl --model runs/sft/final           run_dpo:      π_θ from that model
    python -m dpo_np reward --data prefs.jsonl --model runs/sft/final        run_reward:   r_φ on its body
    python -m dpo_np evaluate --model runs/dpo/final --ref runs/sft/final --data held_out.jsonl

Each returns a dict of what it measured (the numbers it prints, the configuration, the seed), so a
script or ``--json`` can compare runs.

How long a run trains, unless ``steps`` fixes it: ``epochs`` passes over the data, but at least and
at most the command's ``STEP_BOUNDS``, so 16 pairs still train for a useful number of steps and a
file of a million stays bounded. With ``eval_data`` the run evaluates ``EVALUATIONS`` times along
the way, keeps its best point (``best/``, and ``final/`` is that model) and stops after
``PATIENCE`` evaluations without a better eval loss, as the demo's stages do.

Models come from a dpo_np checkpoint or a Hugging Face GPT-2 directory (``pretrained.load_model``).
A model trained from scratch on one's own text gets the byte tokenizer, which encodes any UTF-8
text; the toy corpus keeps its character tokenizer. Every prompt is written in the model's prompt
template (its tokenizer's ``prompt_template``), which ``prompt_template`` may replace for a run.
"""

import math
import time

from dpo_np import checks, cost
from dpo_np.data import (describe_truncation, format_prompt, load_located, load_preferences, load_sft,
                         prompt_template_of)
from dpo_np.experiments import toy_preferences
from dpo_np.experiments.evaluation import estimate_kl, implicit_reward_metrics, judged_answers, reward_model_scores
from dpo_np.generate import greedy_answer
from dpo_np.model import GPT, GPTConfig, training_bytes
from dpo_np.pretrained import load_model
from dpo_np.progress import plural
from dpo_np.reward_model import RewardConfig, RewardModel, RewardTrainer, load_reward_model
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.tokenizer import ByteTokenizer, CharTokenizer
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.training import frozen_copy, pair_metrics

#: what every run shares (the trainer's names), with its default
RUN_DEFAULTS = dict(output_dir=None, seed=0, save_steps=None, resume=False, overwrite=False, show_progress=True,
                    skip_invalid=False, allow_large=False)

#: without ``steps``: ``epochs`` passes over the data, but at least and at most these many steps
STEP_BOUNDS = {"sft": (300, 2000), "dpo": (50, 1000), "reward": (100, 1000)}
DEFAULT_EPOCHS = 3
#: with eval data: evaluations along a run, and how many without a better eval loss stop it
EVALUATIONS, PATIENCE = 10, 3
#: a new model's context, and the part of it a prompt may take (its end is kept)
NEW_MODEL_LENGTH, PROMPT_LENGTH = 160, 64


def _options(options, output_dir):
    """A run's shared options with their defaults; a name it does not know is an error, not ignored."""
    unknown = sorted(set(options) - set(RUN_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; a run takes {sorted(RUN_DEFAULTS)} besides its own arguments")
    return {**RUN_DEFAULTS, "output_dir": output_dir, **options}


def run_length(command, data, kind, batch_size, steps=None, epochs=DEFAULT_EPOCHS):
    """``(steps, how)``: ``steps`` when given; else ``epochs`` passes over the records of ``data`` in
    batches of ``batch_size``, raised to the command's minimum or cut to its maximum
    (``STEP_BOUNDS``); ``how`` says which, in words."""
    if steps is not None:
        return checks.integer(steps, "steps", low=1), "as asked"
    n = len(data) if isinstance(data, (list, tuple)) else len(load_located(data, kind)[0])
    per_epoch = math.ceil(n / checks.integer(batch_size, "batch_size", low=1))
    low, high = STEP_BOUNDS[command]
    wanted = checks.integer(epochs, "epochs", low=1) * per_epoch
    steps = min(max(wanted, low), high)
    what = f"{plural(epochs, 'epoch')} of {plural(per_epoch, 'step')}"
    how = (what if steps == wanted else
           f"{what} raised to the minimum of {low}" if steps > wanted else f"{what} cut to the maximum of {high}")
    return steps, how


def _training_args(options, steps, eval_data, **fields):
    """The shared TrainingConfig fields from a run's options; with ``eval_data``, evaluations along
    the run that keep the best point and stop when it stops improving. A ``save_steps`` the run
    would never reach is an error, not a run that saves nothing."""
    if options["save_steps"] is not None and options["save_steps"] > steps:
        raise ValueError(f"save_steps ({options['save_steps']}) is more than the run's {plural(steps, 'step')}, so "
                         f"no checkpoint would be saved; give at most {steps}")
    evaluation = dict(eval_steps=max(1, steps // EVALUATIONS), load_best_model_at_end=True,
                      early_stopping_patience=PATIENCE) if eval_data is not None else dict(eval_steps=None)
    return dict(output_dir=options["output_dir"], seed=options["seed"], save_steps=options["save_steps"],
                overwrite_output_dir=options["overwrite"], show_progress=options["show_progress"], max_steps=steps,
                group_by_length=True, **evaluation, **fields)


def _use_template(tokenizer, prompt_template, source):
    """Set the run's prompt template on ``tokenizer`` (it is saved with every checkpoint); returns
    where it came from, in words."""
    if prompt_template is None:
        return source
    tokenizer.prompt_template = prompt_template
    return "--prompt-template"


def _header(name, trainer, what, how, template_source, eval_data, print_fn):
    """The lines a run starts with: what it trains on, for how long, in which format, what was cut."""
    a = trainer.args
    print_fn(f"{name}: {what}, {plural(trainer.total_steps, 'step')} ({how}); prompt template "
             f"{prompt_template_of(trainer.tokenizer)!r} ({template_source})")
    for split, report in trainer.truncation.items():
        print_fn(f"{name}: {split} data at max_length {a.max_length}, max_prompt_length {a.max_prompt_length}: cut "
                 f"{describe_truncation(report)}")
    if eval_data is not None:
        every = "every step" if a.eval_steps == 1 else f"every {a.eval_steps} steps"
        on = eval_data if isinstance(eval_data, str) else "the eval records"
        print_fn(f"{name}: evaluated {every} on {on}; final/ is the best evaluation, and the run stops after "
                 f"{a.early_stopping_patience} without a better one")


def _read(data, kind, options, print_fn):
    """``data`` (a path, a list or None) as the trainers take it; with ``skip_invalid`` its invalid
    records are left out, and how many and why is said (where each kept record was read travels
    with the list, ``data.Records``)."""
    if data is None or not options["skip_invalid"]:
        return data
    records, report = {"preference": load_preferences, "sft": load_sft}[kind](data, skip_invalid=True)
    if report["problems"]:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(report["skipped"].items()))
        print_fn(f"{report['source']}: skipped {report['read'] - report['kept']} of {plural(report['read'], 'record')} "
                 f"({why}); first: {report['problems'][0]['message']}")
    if not records:
        raise ValueError(f"{report['source']}: no valid record left to train on")
    return records


def check_prompts(prompts, model, tokenizer):
    """Each prompt written in the model's template leaves room for an answer in its context: checked
    before a run trains, so a prompt answered at the end cannot fail after the work."""
    template = prompt_template_of(tokenizer)
    for prompt in prompts or ():
        n = len(tokenizer.encode(format_prompt(prompt, template)))
        if n >= model.config.block_size:
            raise ValueError(f"prompt {prompt!r} is {n} tokens in the prompt template, and the model reads at most "
                             f"{model.config.block_size}: no room is left for an answer; shorten it")


def _train(trainer, options):
    trainer.train(resume_from_checkpoint="last" if options["resume"] else None)
    return trainer


def _answers(model, tokenizer, prompts, print_fn):
    answers = {}
    for prompt in prompts:
        answers[prompt] = greedy_answer(model, tokenizer, prompt)
        print_fn(f"  Q: {prompt}\n  A: {answers[prompt]}")
    return answers


def _summary(name, trainer, seconds, print_fn):
    """The run's numbers: the last logged training loss (labelled with the steps it averages, which
    the progress bar's last-step loss need not equal), and, with eval data, the evaluation of the
    model the run ends with (its best point) under ``eval``; printed and returned."""
    rows = [r for r in trainer.state["log_history"] if "loss" in r]
    last = rows[-1] if rows else None
    first = rows[-2]["step"] + 1 if len(rows) > 1 else 1
    result = {"steps": trainer.state["step"], "seconds": seconds, "final_loss": last and last["loss"],
              "final_loss_steps": last and [first, last["step"]], "eval": None,
              "best_step": trainer.state["counters"].get("best_step"), "checkpoint": trainer.final_checkpoint,
              "truncation": trainer.truncation}
    if last is not None:
        over = f"step {last['step']}" if first == last["step"] else f"mean of steps {first}–{last['step']}"
        print_fn(f"{name}: {plural(result['steps'], 'step')} in {seconds:.0f} s; last logged training loss "
                 f"{last['loss']:.4f} ({over})")
    if trainer.eval_features:
        result["eval"] = trainer.evaluate()
        best = result["best_step"]
        print_fn(f"{name}: eval data, the model it ends with" + (f" (best at step {best})" if best else "") + ": "
                 + ", ".join(f"{k} {v:.4f}" for k, v in result["eval"].items() if isinstance(v, float)))
    print_fn(f"{name}: checkpoint {trainer.final_checkpoint}")
    return result


def run_sft(data=None, eval_data=None, model=None, steps=None, epochs=DEFAULT_EPOCHS, lr=3e-3, batch_size=16,
            max_length=None, max_prompt_length=None, n_layer=3, n_head=4, n_embd=96, prompts=None,
            prompt_template=None, print_fn=print, **options):
    """Supervised fine-tuning: the model that becomes π_ref (the command ``sft``).

    ``data``: a JSONL file of ``{"prompt", "response"}`` or ``{"text"}`` lines (None: the toy
    corpus, with its validation split as ``eval_data``). ``model``: a checkpoint to continue from;
    without one, a new GPT (``n_layer``, ``n_head``, ``n_embd``, context ``max_length``, default
    ``NEW_MODEL_LENGTH``) with the byte tokenizer (the character tokenizer for the toy corpus).
    ``steps``/``epochs``: see ``run_length``. ``prompt_template``: how a prompt is written before
    its response (default: the model's, ``tokenizer.PROMPT_TEMPLATE`` for a new one); it is saved
    with the checkpoints. Prints the greedy answers to ``prompts`` (the notes' three for the toy
    corpus) and returns the run's numbers.
    """
    options = _options(options, "runs/sft")
    if data is None:
        if eval_data is not None:
            raise ValueError("eval_data needs data: the toy corpus brings its own validation split")
        train, eval_data = toy_preferences.sft_corpus(options["seed"]), toy_preferences.sft_corpus(options["seed"], "validation")
        tokenizer = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
        prompts = list(toy_preferences.NOTES_PROMPTS) if prompts is None else prompts
    else:
        train, eval_data = _read(data, "sft", options, print_fn), _read(eval_data, "sft", options, print_fn)
        tokenizer = ByteTokenizer()
    if model is None:
        max_length = checks.integer(NEW_MODEL_LENGTH if max_length is None else max_length, "max_length", low=2)
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=max_length, n_layer=n_layer,
                           n_head=n_head, n_embd=n_embd)
        cost.check(f"n_layer={n_layer}, n_embd={n_embd}, max_length={max_length}, batch_size={batch_size}",
                   memory=training_bytes(config, batch_size), allow_large=options["allow_large"])
        model, source = GPT(config, seed=options["seed"]), "the default"
    else:
        model, tokenizer = load_model(model)
        max_length, source = model.config.block_size if max_length is None else max_length, "the model's"
    source = _use_template(tokenizer, prompt_template, source)
    check_prompts(prompts, model, tokenizer)
    max_prompt_length = min(PROMPT_LENGTH, max_length // 2) if max_prompt_length is None else max_prompt_length
    steps, how = run_length("sft", train, "sft", batch_size, steps, epochs)
    trainer = SFTTrainer(model, SFTConfig(**_training_args(
        options, steps, eval_data, learning_rate=lr, per_device_train_batch_size=batch_size, max_length=max_length,
        max_prompt_length=max_prompt_length)), train_dataset=train, eval_dataset=eval_data, tokenizer=tokenizer)
    _header("sft", trainer, f"{plural(len(trainer.train_features), 'example')}, GPT {plural(model.config.n_layer, 'layer')} × "
            f"{model.config.n_embd} channels ({model.num_params():,} parameters)", how, source, eval_data, print_fn)
    start = time.perf_counter()
    _train(trainer, options)
    result = _summary("sft", trainer, time.perf_counter() - start, print_fn)
    result["answers"] = _answers(model, tokenizer, prompts or [], print_fn)
    return {**result, "model": model, "tokenizer": tokenizer, "trainer": trainer}


def _check_training_memory(model, rows, options):
    """Training ``model`` on batches of ``rows`` sequences fits this machine's memory (``cost.check``)."""
    cost.check(f"batch_size={rows // 2} with a model of {model.num_params():,} parameters",
               memory=training_bytes(model.config, rows, model.dtype), allow_large=options["allow_large"])


def _check_kl_cost(policy, n_prompts, kl_samples, allow_large):
    """``kl_samples`` responses per prompt, each up to the context, sampled in one batch per prompt
    length and scored by both models: refused when its memory (the batch's keys, values and logits)
    or its time would be out of reach (``cost.check``)."""
    c = policy.config
    rows = n_prompts * kl_samples
    memory = rows * c.block_size * (2 * c.n_layer * c.n_embd * 4 + 2 * c.vocab_size * 8)
    seconds = 3 * rows * c.block_size * policy.num_params() / SAMPLING_RATE
    cost.check(f"kl_samples={kl_samples} ({plural(rows, 'response')} of up to {c.block_size} tokens)", memory=memory,
               seconds=seconds, allow_large=allow_large)


def _need_model(model, command):
    if model is None:
        raise ValueError(f"{command} needs a model to start from (--model): a checkpoint or a GPT-2 directory. "
                         f"Train one first, e.g. python -m dpo_np sft --data sft.jsonl, then pass "
                         f"--model runs/sft/final")


def _lengths(model, max_length, max_prompt_length):
    max_length = model.config.block_size if max_length is None else max_length
    return max_length, min(PROMPT_LENGTH, max_length // 2) if max_prompt_length is None else max_prompt_length


def run_dpo(data, model=None, ref=None, eval_data=None, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
            steps=None, epochs=DEFAULT_EPOCHS, lr=5e-5, batch_size=8, max_length=None, max_prompt_length=None,
            prompts=None, prompt_template=None, print_fn=print, **options):
    """DPO of ``model`` (π_θ's start) against ``ref`` (π_ref; default: the same weights, frozen) on
    the preference file ``data`` (the command ``dpo``), with ``label_smoothing`` ε (conservative
    DPO). ``steps``/``epochs``: see ``run_length``; with ``eval_data``, evaluated along the way and
    ended at the best point. ``prompt_template``: default the model's. Prints greedy answers to ``prompts``."""
    _need_model(model, "dpo")
    options = _options(options, "runs/dpo")
    data, eval_data = _read(data, "preference", options, print_fn), _read(eval_data, "preference", options, print_fn)
    policy, tokenizer = load_model(model)
    source = _use_template(tokenizer, prompt_template, "the model's")
    check_prompts(prompts, policy, tokenizer)
    max_length, max_prompt_length = _lengths(policy, max_length, max_prompt_length)
    _check_training_memory(policy, 2 * batch_size, options)          # a batch holds each pair's two responses
    reference = frozen_copy(policy) if ref is None else load_model(ref)[0]
    steps, how = run_length("dpo", data, "preference", batch_size, steps, epochs)
    trainer = DPOTrainer(policy, reference, DPOConfig(**_training_args(
        options, steps, eval_data, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
        learning_rate=lr, per_device_train_batch_size=batch_size, max_length=max_length,
        max_prompt_length=max_prompt_length, precompute_ref_log_probs=True, logging_steps=1)),
        train_dataset=data, eval_dataset=eval_data, tokenizer=tokenizer)
    smoothing = f", label smoothing {label_smoothing:g}" if label_smoothing else ""
    _header("dpo", trainer, f"{plural(len(trainer.train_features), 'pair')}, β = {beta:g}, loss {loss_type}{smoothing}",
            how, source, eval_data, print_fn)
    start = time.perf_counter()
    _train(trainer, options)
    result = _summary("dpo", trainer, time.perf_counter() - start, print_fn)
    result["answers"] = _answers(policy, tokenizer, prompts or [], print_fn)
    return {**result, "model": policy, "tokenizer": tokenizer, "trainer": trainer}


def run_reward(data, model=None, eval_data=None, steps=None, epochs=DEFAULT_EPOCHS, lr=3e-4, batch_size=8,
               max_length=None, max_prompt_length=None, prompt_template=None, print_fn=print, **options):
    """A Bradley–Terry reward model r_φ on the preference file ``data``, its body from ``model``
    (the command ``reward``); ``steps``/``epochs`` as in ``run_length``; with ``eval_data`` it
    reports the pair accuracy there and ends at the best evaluation."""
    _need_model(model, "reward")
    options = _options(options, "runs/reward")
    data, eval_data = _read(data, "preference", options, print_fn), _read(eval_data, "preference", options, print_fn)
    body, tokenizer = load_model(model)
    source = _use_template(tokenizer, prompt_template, "the model's")
    max_length, max_prompt_length = _lengths(body, max_length, max_prompt_length)
    _check_training_memory(body, 2 * batch_size, options)
    steps, how = run_length("reward", data, "preference", batch_size, steps, epochs)
    trainer = RewardTrainer(RewardModel(body, seed=options["seed"]), RewardConfig(**_training_args(
        options, steps, eval_data, learning_rate=lr, per_device_train_batch_size=batch_size, max_length=max_length,
        max_prompt_length=max_prompt_length, logging_steps=1)), train_dataset=data, eval_dataset=eval_data,
        tokenizer=tokenizer)
    _header("reward", trainer, plural(len(trainer.train_features), "pair"), how, source, eval_data, print_fn)
    start = time.perf_counter()
    _train(trainer, options)
    result = _summary("reward", trainer, time.perf_counter() - start, print_fn)
    return {**result, "model": trainer.model, "tokenizer": tokenizer, "trainer": trainer}


#: multiply-adds per second a sampling estimate assumes: a conservative figure for NumPy at toy sizes
SAMPLING_RATE = 1e8


def run_evaluate(model, ref, data, prompts=(), beta=0.1, kl_samples=4, reward_model=None, seed=0,
                 max_length=None, print_fn=print, skip_invalid=False, allow_large=False):
    """How ``model`` (π_θ) compares with ``ref`` (π_ref) on the preference file ``data`` (the command
    ``evaluate``): implicit-reward accuracy and margin, the policy's own accuracy, the DPO loss at
    ``beta``, KL(π_θ ‖ π_ref) sampled (``kl_samples`` per prompt), a reward model's accuracy
    (``reward_model``, optional) and greedy answers to ``prompts``, each prompt written in the
    model's own prompt template. On the toy data (records that carry their ``family``), also the
    gold judge's shares of the policy's and the reference's sampled and greedy answers
    (``toy_preferences.judge``): which rule they follow, y_w's or y_l's. Everything is loaded and
    checked before the first measurement, and a KL sample too large for this machine is refused
    (``cost.check``) unless ``allow_large``."""
    _need_model(model, "evaluate")
    if ref is None:
        raise ValueError("evaluate needs the reference model too (--ref): the model DPO started from")
    kl_samples = checks.integer(kl_samples, "kl_samples", low=1)
    policy, tokenizer = load_model(model)
    reference, _ = load_model(ref)
    scorer = None if reward_model is None else load_reward_model(reward_model)["model"]
    records = _read(data, "preference", {"skip_invalid": skip_invalid}, print_fn) if skip_invalid \
        else load_preferences(data)
    check_prompts(prompts, policy, tokenizer)
    _check_kl_cost(policy, len(set(r["prompt"] for r in records)), kl_samples, allow_large)
    max_length, max_prompt_length = _lengths(policy, max_length, None)
    trainer = DPOTrainer(policy, reference, DPOConfig(output_dir="unused", beta=beta, max_length=max_length,
                                                      max_prompt_length=max_prompt_length, show_progress=False),
                         tokenizer=tokenizer)
    m = implicit_reward_metrics(trainer, records)
    result = {k: m[k] for k in ("pairs", "implicit_reward_accuracy", "implicit_reward_ties", "implicit_reward_margin",
                                "logp_accuracy", "dpo_loss")}
    prompts_of_data = list(dict.fromkeys(r["prompt"] for r in records))
    kl = estimate_kl(policy, reference, tokenizer, prompts_of_data, kl_samples, seed)
    result.update(kl=kl["kl"], kl_stderr=kl["stderr"], beta=beta, seed=seed, kl_samples=kl_samples)
    if all(r.get("family") in toy_preferences.FAMILIES for r in records):
        # the toy data's own rules can judge its answers; a file of one's own has no rule to judge by
        for name, model, samples in (("policy", policy, kl["samples"]), ("reference", reference, None)):
            judged = judged_answers(model, tokenizer, prompts_of_data, kl_samples, seed, samples=samples)
            result[f"judge_{name}"] = {k: judged["sampled"][k] for k in toy_preferences.JUDGEMENTS}
            result[f"judge_greedy_{name}"] = {k: judged["greedy"][k] for k in toy_preferences.JUDGEMENTS}
    if scorer is not None:
        rm = RewardTrainer(scorer, RewardConfig(
            output_dir="unused", max_length=max_length, max_prompt_length=max_prompt_length), tokenizer=tokenizer)
        result["reward_model_accuracy"] = pair_metrics(*reward_model_scores(rm, records))["accuracy"]
    for key, value in result.items():
        if isinstance(value, dict):          # the judge's shares: y_w's rule / y_l's rule / neither
            value = " / ".join(f"{value[k]:.3f}" for k in toy_preferences.JUDGEMENTS) + "  (y_w's / y_l's rule / neither)"
        print_fn(f"  {key:<26} {value:.4f}" if isinstance(value, float) else f"  {key:<26} {value}")
    result["answers"] = _answers(policy, tokenizer, prompts, print_fn)
    return result
