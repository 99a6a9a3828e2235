"""The training runs behind the command line, on the toy data or on a JSONL file of one's own.

    python -m dpo_np sft --data sft.jsonl                        run_sft:      a GPT from scratch (byte tokenizer)
    python -m dpo_np dpo --data prefs.jsonl --model runs/sft/final           run_dpo:      π_θ from that model
    python -m dpo_np reward --data prefs.jsonl --model runs/sft/final        run_reward:   r_φ on its body
    python -m dpo_np evaluate --model runs/dpo/final --ref runs/sft/final --data held_out.jsonl

Each returns a dict of what it measured (the numbers it prints, the configuration, the seed), so a
script or ``--json`` can compare runs. Models come from a dpo_np checkpoint or a Hugging Face GPT-2
directory (``pretrained.load_model``). A model trained from scratch on one's own text gets the byte
tokenizer, which encodes any UTF-8 text; the toy corpus keeps its character tokenizer.
"""

import time

from dpo_np import checks
from dpo_np.data import load_preferences
from dpo_np.experiments import toy_preferences
from dpo_np.experiments.evaluation import estimate_kl, implicit_reward_metrics, reward_model_scores
from dpo_np.generate import greedy_answer
from dpo_np.model import GPT, GPTConfig
from dpo_np.pretrained import load_model
from dpo_np.reward_model import RewardConfig, RewardModel, RewardTrainer, load_reward_model
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.tokenizer import ByteTokenizer, CharTokenizer
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.training import frozen_copy, pair_metrics

#: what every run shares (the trainer's names), with its default
RUN_DEFAULTS = dict(output_dir=None, seed=0, save_steps=None, resume=False, overwrite=False, show_progress=True)


def _options(options, output_dir):
    """A run's shared options with their defaults; a name it does not know is an error, not ignored."""
    unknown = sorted(set(options) - set(RUN_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; a run takes {sorted(RUN_DEFAULTS)} besides its own arguments")
    return {**RUN_DEFAULTS, "output_dir": output_dir, **options}


def _training_args(options, **fields):
    """The shared TrainingConfig fields from a run's options."""
    return dict(output_dir=options["output_dir"], seed=options["seed"], save_steps=options["save_steps"],
                overwrite_output_dir=options["overwrite"], show_progress=options["show_progress"], **fields)


def _train(trainer, options):
    trainer.train(resume_from_checkpoint="last" if options["resume"] else None)
    return trainer


def _answers(model, tokenizer, prompts, print_fn):
    answers = {}
    for prompt in prompts:
        answers[prompt] = greedy_answer(model, tokenizer, prompt)
        print_fn(f"  Q: {prompt}\n  A: {answers[prompt]}")
    return answers


def _summary(trainer, seconds):
    rows = trainer.state["log_history"]
    last = lambda key: next((r[key] for r in reversed(rows) if key in r), None)      # noqa: E731
    return {"steps": trainer.state["step"], "seconds": seconds, "final_loss": last("loss"),
            "eval_loss": last("eval/loss"), "best_step": trainer.state["counters"].get("best_step"),
            "checkpoint": trainer.final_checkpoint}


def run_sft(data=None, eval_data=None, model=None, steps=2000, lr=3e-3, batch_size=16, max_length=None,
            max_prompt_length=None, n_layer=3, n_head=4, n_embd=96, prompts=None, print_fn=print, **options):
    """Supervised fine-tuning: the model that becomes π_ref (the command ``sft``).

    ``data``: a JSONL file of ``{"prompt", "response"}`` or ``{"text"}`` lines (None: the toy
    corpus, with its validation split as ``eval_data``). ``model``: a checkpoint to continue from;
    without one, a new GPT (``n_layer``, ``n_head``, ``n_embd``, context ``max_length``) with the
    byte tokenizer (the character tokenizer for the toy corpus). Prints the greedy answers to
    ``prompts`` (the notes' three for the toy corpus) and returns the run's numbers.
    """
    options = _options(options, "runs/sft")
    if data is None:
        train, eval_data = toy_preferences.sft_corpus(options["seed"]), toy_preferences.sft_corpus(options["seed"], "validation")
        tokenizer = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
        prompts = list(toy_preferences.NOTES_PROMPTS) if prompts is None else prompts
    else:
        train, tokenizer = data, ByteTokenizer()
    max_length = checks.integer(160 if max_length is None else max_length, "max_length", low=2)
    if model is None:
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=max_length, n_layer=n_layer,
                           n_head=n_head, n_embd=n_embd)
        model = GPT(config, seed=options["seed"])
    else:
        model, tokenizer = load_model(model)
    max_prompt_length = min(64, max_length // 2) if max_prompt_length is None else max_prompt_length
    trainer = SFTTrainer(model, SFTConfig(**_training_args(
        options, max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch_size, max_length=max_length,
        max_prompt_length=max_prompt_length, eval_steps=max(1, steps // 10) if eval_data else None,
        group_by_length=True)), train_dataset=train, eval_dataset=eval_data, tokenizer=tokenizer)
    print_fn(f"sft: {len(trainer.train_features)} examples, GPT {model.config.n_layer} layers × "
             f"{model.config.n_embd} channels ({model.num_params():,} parameters), {trainer.total_steps} steps")
    start = time.perf_counter()
    _train(trainer, options)
    result = _summary(trainer, time.perf_counter() - start)
    print_fn(f"sft: final training loss {result['final_loss']:.4f} in {result['seconds']:.0f} s; "
             f"checkpoint: {trainer.final_checkpoint}")
    result["answers"] = _answers(model, tokenizer, prompts or [], print_fn)
    return {**result, "model": model, "tokenizer": tokenizer, "trainer": trainer}


def _need_model(model, command):
    if model is None:
        raise ValueError(f"{command} needs a model to start from (--model): a checkpoint or a GPT-2 directory. "
                         f"Train one first, e.g. python -m dpo_np sft --data sft.jsonl, then pass "
                         f"--model runs/sft/final")


def run_dpo(data, model=None, ref=None, eval_data=None, beta=0.1, loss_type="sigmoid", steps=None, epochs=1,
            lr=1e-4, batch_size=8, max_length=None, max_prompt_length=None, prompts=None, print_fn=print, **options):
    """DPO of ``model`` (π_θ's start) against ``ref`` (π_ref; default: the same weights, frozen) on
    the preference file ``data`` (the command ``dpo``). ``steps`` None: ``epochs`` over the data.
    Evaluates on ``eval_data`` when given; prints greedy answers to ``prompts``."""
    _need_model(model, "dpo")
    options = _options(options, "runs/dpo")
    policy, tokenizer = load_model(model)
    reference = frozen_copy(policy) if ref is None else load_model(ref)[0]
    max_length = policy.config.block_size if max_length is None else max_length
    max_prompt_length = min(64, max_length // 2) if max_prompt_length is None else max_prompt_length
    trainer = DPOTrainer(policy, reference, DPOConfig(**_training_args(
        options, beta=beta, loss_type=loss_type, learning_rate=lr, per_device_train_batch_size=batch_size,
        max_steps=-1 if steps is None else steps, num_train_epochs=epochs, max_length=max_length,
        max_prompt_length=max_prompt_length, precompute_ref_log_probs=True, logging_steps=1,
        eval_steps=None, group_by_length=True)), train_dataset=data, eval_dataset=eval_data, tokenizer=tokenizer)
    print_fn(f"dpo: {len(trainer.train_features)} pairs, β = {beta:g}, loss {loss_type}, {trainer.total_steps} steps")
    start = time.perf_counter()
    _train(trainer, options)
    result = _summary(trainer, time.perf_counter() - start)
    if eval_data is not None:
        result["eval"] = {k: v for k, v in trainer.evaluate().items()}
        print_fn("dpo: held-out " + ", ".join(f"{k} {v:.4f}" for k, v in result["eval"].items()))
    print_fn(f"dpo: final training loss {result['final_loss']:.4f} in {result['seconds']:.0f} s; "
             f"checkpoint: {trainer.final_checkpoint}")
    result["answers"] = _answers(policy, tokenizer, prompts or [], print_fn)
    return {**result, "model": policy, "tokenizer": tokenizer, "trainer": trainer}


def run_reward(data, model=None, eval_data=None, steps=None, epochs=1, lr=3e-4, batch_size=8, max_length=None,
               max_prompt_length=None, print_fn=print, **options):
    """A Bradley–Terry reward model r_φ on the preference file ``data``, its body from ``model``
    (the command ``reward``); reports its pair accuracy on ``eval_data`` when given."""
    _need_model(model, "reward")
    options = _options(options, "runs/reward")
    body, tokenizer = load_model(model)
    max_length = body.config.block_size if max_length is None else max_length
    max_prompt_length = min(64, max_length // 2) if max_prompt_length is None else max_prompt_length
    trainer = RewardTrainer(RewardModel(body, seed=options["seed"]), RewardConfig(**_training_args(
        options, learning_rate=lr, per_device_train_batch_size=batch_size, max_steps=-1 if steps is None else steps,
        num_train_epochs=epochs, max_length=max_length, max_prompt_length=max_prompt_length, logging_steps=1,
        group_by_length=True)), train_dataset=data, eval_dataset=eval_data, tokenizer=tokenizer)
    print_fn(f"reward: {len(trainer.train_features)} pairs, {trainer.total_steps} steps")
    start = time.perf_counter()
    _train(trainer, options)
    result = _summary(trainer, time.perf_counter() - start)
    if eval_data is not None:
        result["eval"] = trainer.evaluate()
        print_fn(f"reward: held-out accuracy {result['eval']['eval/accuracy']:.3f}, "
                 f"margin {result['eval']['eval/margin']:.3f}")
    print_fn(f"reward: final training loss {result['final_loss']:.4f}; checkpoint: {trainer.final_checkpoint}")
    return {**result, "model": trainer.model, "tokenizer": tokenizer, "trainer": trainer}


def run_evaluate(model, ref, data, prompts=(), beta=0.1, kl_samples=4, reward_model=None, seed=0,
                 max_length=None, print_fn=print):
    """How ``model`` (π_θ) compares with ``ref`` (π_ref) on the preference file ``data`` (the command
    ``evaluate``): implicit-reward accuracy and margin, the policy's own accuracy, the DPO loss at
    ``beta``, KL(π_θ ‖ π_ref) sampled (``kl_samples`` per prompt), a reward model's accuracy
    (``reward_model``, optional) and greedy answers to ``prompts``."""
    _need_model(model, "evaluate")
    if ref is None:
        raise ValueError("evaluate needs the reference model too (--ref): the model DPO started from")
    policy, tokenizer = load_model(model)
    reference, _ = load_model(ref)
    records = load_preferences(data)
    max_length = policy.config.block_size if max_length is None else max_length
    trainer = DPOTrainer(policy, reference, DPOConfig(output_dir="unused", beta=beta, max_length=max_length,
                                                      max_prompt_length=min(64, max_length // 2), show_progress=False),
                         tokenizer=tokenizer)
    m = implicit_reward_metrics(trainer, records)
    result = {k: m[k] for k in ("pairs", "implicit_reward_accuracy", "implicit_reward_ties", "implicit_reward_margin",
                                "logp_accuracy", "dpo_loss")}
    prompts_of_data = list(dict.fromkeys(r["prompt"] for r in records))
    kl = estimate_kl(policy, reference, tokenizer, prompts_of_data, kl_samples, seed)
    result.update(kl=kl["kl"], kl_stderr=kl["stderr"], beta=beta, seed=seed, kl_samples=kl_samples)
    if reward_model is not None:
        rm = RewardTrainer(load_reward_model(reward_model)["model"], RewardConfig(
            output_dir="unused", max_length=max_length, max_prompt_length=min(64, max_length // 2)), tokenizer=tokenizer)
        result["reward_model_accuracy"] = pair_metrics(*reward_model_scores(rm, records))["accuracy"]
    for key, value in result.items():
        print_fn(f"  {key:<26} {value:.4f}" if isinstance(value, float) else f"  {key:<26} {value}")
    result["answers"] = _answers(policy, tokenizer, prompts, print_fn)
    return result

