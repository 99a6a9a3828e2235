"""The command line: ``python -m dpo_np <command>``, a thin layer over public functions.

Every option is checked when it is read, and an error names the option (``--seed: must be a
non-negative integer``), never an internal field. Paths a command will write are checked before
it starts. A command that measures something writes its numbers with ``--json PATH``. Ctrl-C
during training saves a checkpoint and prints how to resume.
"""

import argparse
import importlib.util
import json
import os
import re
import sys

from dpo_np.bench.closed_form import bench_closed_form
from dpo_np.bench import machine
from dpo_np.bench.dpo import bench_dpo
from dpo_np.bench.generate import bench_generate
from dpo_np.bench.model import bench_model
from dpo_np.bench.report import run_all
from dpo_np.bench.table import load_report, performance_table
from dpo_np.bench.torch_peer import bench_torch
from dpo_np.checkpoint import STATE
from dpo_np.experiments import runs
from dpo_np.experiments.closed_form import plot_closed_form, run_closed_form
from dpo_np.experiments.demo import run_demo
from dpo_np.experiments.figures import FIGURES, make_figures
from dpo_np.experiments.gridworld import plot_gridworld, print_report, run_gridworld
from dpo_np.experiments.ppo_gpt import run_ppo_gpt
from dpo_np.experiments.rlhf_toy import QUICK as RLHF_QUICK
from dpo_np.experiments.rlhf_toy import plot_rlhf, print_rlhf_report, run_rlhf
from dpo_np.files import write_json_atomic
from dpo_np.generate import beam_search, generate
from dpo_np.data import format_prompt
from dpo_np.losses import LOSS_TYPES
from dpo_np.pretrained import load_model, save_pretrained
from dpo_np.training import TrainingInterrupted, check_output_dir, last_checkpoint


class CommandError(ValueError):
    """A bad option or path: printed as one line naming it, exit status 2."""


# ---- option types: each names what it wants ---------------------------------------------------

def _number(kind, low=None, low_open=False, high=None, high_open=False):
    """An argparse type: a finite int or float within bounds; argparse prefixes the option's name."""
    want = {(int, 0, False): "a non-negative integer", (int, 1, False): "a positive integer",
            (float, 0, True): "a number > 0"}.get((kind, low, low_open)) if high is None else None

    def parse(text):
        try:
            value = kind(text)
            ok = value == value and abs(value) != float("inf")
        except ValueError:
            ok = False
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            bounds = want or (f"{'an integer' if kind is int else 'a number'}"
                              + (f" {'>' if low_open else '>='} {low}" if low is not None else "")
                              + (f" and {'<' if high_open else '<='} {high}" if high is not None else ""))
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}")
        return value
    return parse


positive_int, non_negative_int, positive_float = _number(int, 1), _number(int, 0), _number(float, 0, low_open=True)


def _writable_dir(option, path):
    """``path`` can be (or is) a directory: not a file, under a parent that can be created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a file, not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise CommandError(f"{option} {path}: cannot be created under {parent}")


def _writable_file(option, path):
    if path and os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a directory, not a file")
    if path:
        _writable_dir(option, os.path.dirname(os.path.abspath(path)))


def _check_run_dir(args):
    """The output directory of a training command: writable, and fresh unless --overwrite/--resume."""
    _writable_dir("--output-dir", args.output_dir)
    if args.resume:
        if last_checkpoint(args.output_dir) is None:
            raise CommandError(f"--resume: {args.output_dir} holds no checkpoint-<step> to resume from "
                               f"(save some with --save-steps N)")
        return
    try:
        check_output_dir(args.output_dir, args.overwrite)
    except ValueError:
        raise CommandError(f"--output-dir {args.output_dir} already holds an earlier run; choose a new "
                           f"--output-dir, pass --overwrite to replace that run's files, or --resume to "
                           f"continue it") from None


def _json(args, result):
    if getattr(args, "json", None):
        write_json_atomic(args.json, _plain({"command": args.command, "options": _options(args), **result}))
        print(f"numbers written to {args.json}")


def _options(args):
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def _plain(obj):
    """``obj`` with only what JSON holds: models and trainers dropped, arrays as lists."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items() if k not in ("model", "tokenizer", "trainer", "models")}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)


def _run_options(args):
    return dict(output_dir=args.output_dir, seed=args.seed, save_steps=args.save_steps, resume=args.resume,
                overwrite=args.overwrite, show_progress=not args.quiet)


def _lengths(args):
    """--max-length and --max-prompt-length, checked against each other by their option names."""
    if args.max_length is not None and args.max_prompt_length is not None and args.max_prompt_length >= args.max_length:
        raise CommandError(f"--max-prompt-length ({args.max_prompt_length}) must be smaller than --max-length "
                           f"({args.max_length}), so every response keeps a token")
    return dict(max_length=args.max_length, max_prompt_length=args.max_prompt_length)


# ---- the commands ------------------------------------------------------------------------------

def _demo(args):
    if args.seeds:
        return _demo_seeds(args)
    _check_run_dir_for_demo(args, args.output_dir)
    overrides = {k: v for k, v in (("sft_steps", args.sft_steps), ("dpo_steps", args.dpo_steps),
                                   ("beta", args.beta)) if v is not None}
    result = run_demo(output_dir=args.output_dir, figures_dir=args.figures_dir, quick=args.quick, seed=args.seed,
                      show_progress=not args.quiet, overwrite=args.overwrite, **overrides)
    _json(args, {k: result[k] for k in ("before", "after", "answers", "families", "config", "seconds", "best_steps")})
    return 0


def _check_run_dir_for_demo(args, output_dir):
    _writable_dir("--output-dir", output_dir)
    for stage in ("sft", "dpo", "reward"):
        try:
            check_output_dir(os.path.join(output_dir, stage), args.overwrite)
        except ValueError:
            raise CommandError(f"--output-dir {output_dir} already holds an earlier demo; choose a new "
                               f"--output-dir or pass --overwrite to replace it") from None


def _demo_seeds(args):
    from dpo_np.experiments.seeds import run_seeds
    seeds = _seed_list(args.seeds)
    for seed in seeds:
        _check_run_dir_for_demo(args, os.path.join(args.output_dir, f"seed-{seed}"))
    result = run_seeds(seeds, output_dir=args.output_dir, quick=args.quick, overwrite=args.overwrite,
                       show_progress=not args.quiet)
    _json(args, result)
    return 0


def _seed_list(text):
    m = re.fullmatch(r"(\d+)-(\d+)", text)
    try:
        seeds = list(range(int(m[1]), int(m[2]) + 1)) if m else [int(s) for s in text.split(",")]
    except ValueError:
        raise CommandError(f"--seeds: must be a range like 0-4 or a list like 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise CommandError(f"--seeds: must name non-negative seeds, got {text!r}")
    return seeds


def _sft(args):
    _check_run_dir(args)
    result = runs.run_sft(data=args.data, eval_data=args.eval_data, model=args.model, steps=args.steps, lr=args.lr,
                          batch_size=args.batch_size, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                          prompts=args.prompt, **_lengths(args), **_run_options(args))
    _json(args, result)
    return 0


def _dpo(args):
    _check_run_dir(args)
    result = runs.run_dpo(data=args.data, model=args.model, ref=args.ref, eval_data=args.eval_data, beta=args.beta,
                          loss_type=args.loss_type, steps=args.steps, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, prompts=args.prompt, **_lengths(args), **_run_options(args))
    _json(args, result)
    return 0


def _reward(args):
    _check_run_dir(args)
    result = runs.run_reward(data=args.data, model=args.model, eval_data=args.eval_data, steps=args.steps,
                             epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, **_lengths(args),
                             **_run_options(args))
    _json(args, result)
    return 0


def _evaluate(args):
    result = runs.run_evaluate(model=args.model, ref=args.ref, data=args.data, prompts=args.prompt or [],
                               beta=args.beta, kl_samples=args.kl_samples, reward_model=args.reward_model,
                               seed=args.seed)
    _json(args, result)
    return 0


def _closed_form(args):
    result = run_closed_form(vocab_size=args.vocab_size, length=args.length, n_prompts=args.prompts,
                             beta=args.beta, pairs=args.pairs, steps=args.steps, lr=args.lr, seed=args.seed,
                             progress=not args.quiet)
    print(f"final KL(π*‖π_θ) = {result['kl'][-1]:.3e}, J(π*) − J(π_θ) = "
          f"{result['optimal_objective'] - result['objective'][-1]:.3e}  ({result['n_pairs']:,} pairs, "
          f"{result['config']['steps']} steps; data {result['seconds']['data']:.2f} s, "
          f"training {result['seconds']['train']:.2f} s)")
    compare = {}
    if args.compare:
        for label, kwargs in (("β_train = 4β", dict(train_beta=4 * args.beta)),
                              ("reference-free", dict(reference_free=True))):
            compare[label] = run_closed_form(vocab_size=args.vocab_size, length=args.length, n_prompts=args.prompts,
                                             beta=args.beta, pairs=args.pairs, steps=args.steps, lr=args.lr,
                                             seed=args.seed, progress=False, **kwargs)
        print("\nwhat breaks it (same data and steps):")
        print(f"  {'variant':<16} {'KL(π*‖π_θ)':>12} {'J(π_θ)':>10} {'J(π*)':>10}")
        for label, res in [("DPO at β", result)] + list(compare.items()):
            print(f"  {label:<16} {res['kl'][-1]:>12.3e} {res['objective'][-1]:>10.4f} {res['optimal_objective']:>10.4f}")
    _figure(plot_closed_form, result, args.figure)
    _json(args, {"config": result["config"], "final_kl": result["kl"][-1],
                 "objective_gap": result["optimal_objective"] - result["objective"][-1],
                 "curve": {k: result[k] for k in ("step", "loss", "kl", "objective")},
                 "compare": {label: {"final_kl": r["kl"][-1], "objective": r["objective"][-1]}
                             for label, r in compare.items()}, "seconds": result["seconds"]})
    return 0


def _figure(plot, result, path):
    """Draw with ``plot`` when a path is asked for and matplotlib is installed; say what happened."""
    if not path:
        return
    if importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figure: pip install "dpo-np[plot]"')
        return
    print(f"figure written to {plot(result, path)}")


def _gridworld(args):
    _writable_dir("--output-dir", args.output_dir or ".")
    result = run_gridworld(gamma=args.gamma, iterations=args.iterations, episodes=args.episodes,
                           horizon=args.horizon, lr=args.lr, seed=args.seed,
                           variance_episodes=args.variance_episodes, progress=not args.quiet)
    print_report(result)
    print(f"({result['seconds']:.1f} s)")
    _json(args, result)
    _figure(plot_gridworld, result, args.output_dir and os.path.join(args.output_dir, "gridworld.png"))
    return 0


def _rlhf(args):
    _writable_dir("--output-dir", args.output_dir or ".")
    settings = dict(RLHF_QUICK) if args.quick else {}
    settings.update({k: v for k, v in (("beta", args.beta), ("steps", args.steps), ("samples", args.samples),
                                       ("pairs", args.pairs)) if v is not None})
    result = run_rlhf(seed=args.seed, progress=not args.quiet, **settings)
    print_rlhf_report(result)
    print("final_kl: " + ", ".join(f"{k} {v:.6e}" for k, v in result["final_kl"].items())
          + f"  ({result['seconds']['total']:.1f} s)")
    _json(args, result)
    if args.output_dir and importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figures: pip install "dpo-np[plot]"')
    elif args.output_dir:
        for path in plot_rlhf(result, args.output_dir):
            print(f"figure written to {path}")
    return 0


def _figures(args):
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError('figures needs matplotlib: pip install "dpo-np[plot]"')
    _writable_dir("--output-dir", args.output_dir)
    paths = make_figures(args.output_dir, only=args.only, quick=args.quick)
    print(f"figures: {len(paths)} written to {args.output_dir}")
    return 0


def _ppo_gpt(args):
    _writable_dir("--output-dir", args.output_dir)
    for stage in ("sft", "reward", "ppo", "dpo"):
        try:
            check_output_dir(os.path.join(args.output_dir, stage), args.overwrite)
        except ValueError:
            raise CommandError(f"--output-dir {args.output_dir} already holds an earlier ppo-gpt run; choose a new "
                               f"--output-dir or pass --overwrite to replace it") from None
    if args.draw_figure and importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figure: pip install "dpo-np[plot]"')
    overrides = {k: v for k, v in (("beta", args.beta), ("ppo_steps", args.ppo_steps), ("dpo_steps", args.dpo_steps))
                 if v is not None}
    result = run_ppo_gpt(seed=args.seed, quick=args.quick, output_dir=args.output_dir,
                         sft_checkpoint=args.sft_checkpoint, figure=args.draw_figure, show_progress=not args.quiet,
                         overwrite=args.overwrite, **overrides)
    _json(args, {k: v for k, v in result.items() if k != "models"})
    return 0


def _generate(args):
    try:
        model, tokenizer = load_model(args.model)
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(_model_hint(args.model, err)) from None
    for prompt in args.prompts:
        ids = tokenizer.encode(format_prompt(prompt))
        room = model.config.block_size - len(ids)
        if room <= 0:
            raise CommandError(f"prompt {prompt!r} is {len(ids)} tokens, the model reads at most "
                               f"{model.config.block_size}")
        n = min(args.max_new_tokens, room)
        if args.num_beams > 1:
            out = beam_search(model, ids, n, num_beams=args.num_beams, eos_token_id=tokenizer.eos_token_id)
        else:
            out = generate(model, ids, n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           do_sample=args.temperature > 0, eos_token_id=tokenizer.eos_token_id, seed=args.seed)
        print(f"Q: {prompt}\nA: {tokenizer.decode(out[len(ids):])}")
    return 0


def _model_hint(path, err):
    """A load error, with the likely fix: a run directory holds its checkpoints, a reward model is not a policy."""
    if os.path.isdir(path):
        inside = [os.path.join(path, d) for d in ("final", "best")] + [last_checkpoint(path) or ""]
        found = [d for d in inside if d and os.path.isfile(os.path.join(d, STATE))]
        if found:
            return f"{path} is a run directory, not a checkpoint; try {found[0]}"
        try:
            with open(os.path.join(path, STATE), encoding="utf-8") as f:
                if ((json.load(f).get("extra") or {}).get("model")) == "RewardModel":
                    return f"{path} is a reward-model checkpoint (r_φ scores answers, it does not write them); pass a policy"
        except (OSError, ValueError, AttributeError):
            pass
    return str(err)


def _export(args):
    model, tokenizer = load_model(args.checkpoint, require_tokenizer=False)
    path = save_pretrained(model, args.output_dir, tokenizer=None if args.without_tokenizer else tokenizer)
    print(f"wrote a GPT-2 directory to {path} ({model.num_params():,} parameters, "
          f"{'without' if args.without_tokenizer or tokenizer is None else 'with'} tokenizer): load it with "
          f"transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained")
    return 0


def _bench(args):
    if (args.what == "table") != (args.report is not None):
        raise ValueError("bench: a REPORT path goes with `bench table REPORT` only (the JSON `bench all --json` wrote)")
    if args.what == "table":
        if args.json:
            raise ValueError("bench table: --json does not apply (the table is printed)")
        print(performance_table(load_report(args.report)), end="")
        return 0
    run = {"closed-form": bench_closed_form, "model": bench_model, "dpo": bench_dpo, "generate": bench_generate,
           "torch": bench_torch, "all": run_all}[args.what]
    _json(args, {"machine": machine.describe(), "result": run()})
    return 0


# ---- the parser ----------------------------------------------------------------------------------

def _run_args(p, default_dir):
    p.add_argument("--output-dir", default=default_dir, help=f"where the run writes (default {default_dir})")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--save-steps", type=positive_int, default=None, help="save a checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --output-dir")
    p.add_argument("--json", metavar="PATH", help="write the run's numbers (and its options) to PATH")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")


def _size_args(p, steps, lr, batch_size):
    p.add_argument("--steps", type=positive_int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--lr", type=positive_float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"examples per step (default {batch_size})")
    p.add_argument("--max-length", type=_number(int, 2), default=None, help="tokens per sequence (default: the model's context)")
    p.add_argument("--max-prompt-length", type=positive_int, default=None, help="tokens kept of a prompt (its end)")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m dpo_np",
                                     description="Direct Preference Optimization from first principles, in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("demo", help="the whole pipeline on toy data: SFT → π_ref → DPO, and a reward model",
                       description="Supervised fine-tuning of the NumPy GPT on the embedded toy corpus, a frozen "
                                   "reference snapshot, DPO on the toy preference pairs and a Bradley–Terry "
                                   "reward model, each stopped at its best validation point; then a before/after "
                                   "table on held-out pairs and figures of the metric curves.")
    p.add_argument("--output-dir", default="runs/demo", help="runs, metrics, checkpoints (default runs/demo)")
    p.add_argument("--figures-dir", default=None, help="where figures go (default OUTPUT_DIR/figures; '' for none)")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps: seconds, not minutes")
    p.add_argument("--sft-steps", type=positive_int, default=None, help="at most this many SFT steps")
    p.add_argument("--dpo-steps", type=positive_int, default=None, help="at most this many DPO steps")
    p.add_argument("--beta", type=positive_float, default=None, help="β of the DPO loss")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed: data split and model (default 0)")
    p.add_argument("--seeds", default=None, help="run every seed of a range (0-4) or list (0,2) and print the table "
                                                 "of their results")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output-dir")
    p.add_argument("--json", metavar="PATH", help="write every number of the table to PATH")
    p.add_argument("--quiet", action="store_true", help="no progress indicators")
    p.set_defaults(func=_demo)

    p = sub.add_parser("sft", help="supervised fine-tuning: the toy corpus, or --data FILE.jsonl",
                       description="Train the NumPy GPT by maximum likelihood on the response tokens of "
                                   "{\"prompt\", \"response\"} (or {\"text\"}) JSONL lines; without --data, the toy "
                                   "corpus. A new model gets the byte tokenizer (any UTF-8 text).")
    p.add_argument("--data", help="JSONL file of {\"prompt\", \"response\"} or {\"text\"} lines")
    p.add_argument("--eval-data", help="held-out JSONL file, evaluated every tenth of the run")
    p.add_argument("--model", help="continue from this checkpoint or GPT-2 directory instead of a new model")
    _size_args(p, 2000, 3e-3, 16)
    p.add_argument("--n-layer", type=positive_int, default=3, help="transformer blocks of a new model (default 3)")
    p.add_argument("--n-head", type=positive_int, default=4, help="attention heads (default 4)")
    p.add_argument("--n-embd", type=positive_int, default=96, help="channels (default 96)")
    p.add_argument("--prompt", action="append", help="a question to answer greedily at the end (repeatable)")
    _run_args(p, "runs/sft")
    p.set_defaults(func=_sft)

    p = sub.add_parser("dpo", help="DPO on a preference file: --data FILE.jsonl --model CKPT",
                       description="Direct Preference Optimization of --model against --ref (default: a frozen "
                                   "copy of --model) on {\"prompt\", \"chosen\", \"rejected\"} JSONL lines.")
    p.add_argument("--data", required=True, help="JSONL file of {\"prompt\", \"chosen\", \"rejected\"} lines")
    p.add_argument("--model", help="the starting policy: a checkpoint (e.g. runs/sft/final) or GPT-2 directory")
    p.add_argument("--ref", help="π_ref (default: the same weights as --model, frozen)")
    p.add_argument("--eval-data", help="held-out preference file, measured at the end")
    p.add_argument("--beta", type=positive_float, default=0.1, help="β of the DPO loss (default 0.1)")
    p.add_argument("--loss-type", choices=LOSS_TYPES, default="sigmoid", help="the loss (default sigmoid: the notes' DPO)")
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the data when --steps is not given")
    _size_args(p, None, 1e-4, 8)
    p.add_argument("--prompt", action="append", help="a question to answer greedily at the end (repeatable)")
    _run_args(p, "runs/dpo")
    p.set_defaults(func=_dpo)

    p = sub.add_parser("reward", help="a Bradley–Terry reward model on a preference file",
                       description="Fit r_φ (the --model's body with a scalar head) to preference pairs by "
                                   "maximum likelihood: the reward model RLHF trains first and DPO skips.")
    p.add_argument("--data", required=True, help="JSONL file of {\"prompt\", \"chosen\", \"rejected\"} lines")
    p.add_argument("--model", help="the body to start from (e.g. runs/sft/final)")
    p.add_argument("--eval-data", help="held-out preference file, measured at the end")
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the data when --steps is not given")
    _size_args(p, None, 3e-4, 8)
    _run_args(p, "runs/reward")
    p.set_defaults(func=_reward)

    p = sub.add_parser("evaluate", help="a policy against its reference on a preference file",
                       description="Implicit-reward accuracy and margin, the policy's own accuracy, the DPO loss, "
                                   "KL(π_θ ‖ π_ref) sampled, a reward model's accuracy, greedy answers.")
    p.add_argument("--model", required=True, help="π_θ: a checkpoint or GPT-2 directory")
    p.add_argument("--ref", required=True, help="π_ref: the model DPO started from")
    p.add_argument("--data", required=True, help="preference JSONL file to measure on")
    p.add_argument("--reward-model", help="a reward-model checkpoint to score the same pairs")
    p.add_argument("--beta", type=positive_float, default=0.1, help="β of the implicit reward (default 0.1)")
    p.add_argument("--kl-samples", type=positive_int, default=4, help="responses sampled per prompt for the KL")
    p.add_argument("--prompt", action="append", help="a question to answer greedily (repeatable)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the sampling (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the numbers to PATH")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("closed-form", help="DPO on sampled preferences recovers the exact RLHF optimum π*",
                       description="Enumerate every response of a toy vocabulary, sample Bradley–Terry preference "
                                   "pairs under a known reward, train a tabular policy with the DPO loss and "
                                   "watch KL(π*‖π_θ) fall to zero.")
    p.add_argument("--vocab-size", type=positive_int, default=3, help="tokens in the toy vocabulary (default 3)")
    p.add_argument("--length", type=positive_int, default=3, help="tokens per response (default 3)")
    p.add_argument("--prompts", type=positive_int, default=4, help="number of prompts x (default 4)")
    p.add_argument("--beta", type=positive_float, default=0.5, help="β of the KL penalty (default 0.5)")
    p.add_argument("--pairs", type=positive_int, default=None, help="preference pairs sampled (default 2,000,000)")
    p.add_argument("--steps", type=positive_int, default=None, help="gradient steps (default 1000)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default 0.05)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="also train with a wrong β and without the reference, to show they miss π*")
    p.add_argument("--figure", default="runs/closed_form/closed_form.png",
                   help="where to write the figure ('' for none; needs matplotlib)")
    p.add_argument("--json", metavar="PATH", help="write the numbers to PATH")
    p.add_argument("--quiet", action="store_true", help="print only the summary, not the table as it trains")
    p.set_defaults(func=_closed_form)

    p = sub.add_parser("gridworld", help="the notes' cat: value iteration and REINFORCE on a grid",
                       description="The notes' RL set-up as a 5×5 grid (broom −1, bathtub −10 and the episode ends, "
                                   "meat +100): value iteration gives V* and the optimal policy; REINFORCE, with "
                                   "and without a baseline, learns a softmax policy from sampled episodes; the "
                                   "variance of its gradient estimate is measured with and without the baseline.")
    p.add_argument("--gamma", type=_number(float, 0, high=1, high_open=True), default=0.9, help="discount γ in [0, 1) (default 0.9)")
    p.add_argument("--iterations", type=positive_int, default=800, help="REINFORCE steps (default 800)")
    p.add_argument("--episodes", type=positive_int, default=32, help="episodes sampled per step (default 32)")
    p.add_argument("--horizon", type=positive_int, default=40, help="moves before an episode is cut (default 40)")
    p.add_argument("--lr", type=positive_float, default=0.05, help="Adam's peak learning rate (default 0.05)")
    p.add_argument("--variance-episodes", type=positive_int, default=2000,
                   help="episodes sampled to measure the gradient variance (default 2000)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH")
    p.add_argument("--output-dir", default="runs/gridworld", help="where the figure goes ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    p.set_defaults(func=_gridworld)

    p = sub.add_parser("rlhf", help="RLHF by REINFORCE and PPO beside DPO, against the exact optimum and frontier",
                       description="On the closed-form toy problem: REINFORCE and PPO maximize the KL-penalized "
                                   "reward by sampling, DPO learns from preference pairs, a Bradley–Terry reward "
                                   "model feeds PPO; each is measured by KL(π*‖π_θ) against its reward queries or "
                                   "comparisons. Also the reward–KL frontier for several β, the direction of β, "
                                   "DPO vs IPO under deterministic preferences and conservative DPO under flipped "
                                   "labels. About a minute on 2 cores.")
    p.add_argument("--beta", type=positive_float, default=None, help="β of the KL penalty (default 0.5)")
    p.add_argument("--steps", type=positive_int, default=None, help="RL steps, each a batch of samples (default 1000)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="responses sampled per prompt per RL step (default 64)")
    p.add_argument("--pairs", type=positive_int, default=None,
                   help="preference pairs for DPO and the reward model (default 2,000,000)")
    p.add_argument("--quick", action="store_true", help="everything on little data and few steps: seconds")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH")
    p.add_argument("--output-dir", default="runs/rlhf", help="where the figures go ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    p.set_defaults(func=_rlhf)

    p = sub.add_parser("figures", help="draw every figure the README shows into figures/, from seeds",
                       description="Run each command that makes a figure (closed-form, gridworld, rlhf, demo, "
                                   "ppo-gpt) with its defaults and seed 0, and draw its figures into --output-dir. "
                                   "The only command that writes into figures/. A few minutes on 2 cores.")
    p.add_argument("--output-dir", default="figures", help="where the figures go (default figures)")
    p.add_argument("--only", nargs="+", choices=[name for name, _ in FIGURES], help="draw only these groups")
    p.add_argument("--quick", action="store_true", help="small runs: seconds, for checking, not the README's figures")
    p.set_defaults(func=_figures)

    p = sub.add_parser("ppo-gpt", help="RLHF by PPO on the tiny GPT with a learned reward model, beside DPO",
                       description="SFT of the GPT on the toy data (π_ref), a Bradley–Terry reward model r_φ, then "
                                   "PPO (K samples per prompt, a per-token KL penalty to π_ref, a leave-one-out "
                                   "baseline, the clipped surrogate) and DPO from the same π_ref with the same β. "
                                   "Prints E[r_φ] and KL(π_θ‖π_ref) of sampled responses along both runs, held-out "
                                   "accuracies and greedy answers; draws the curves. A few minutes on 2 cores.")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps: seconds, not minutes")
    p.add_argument("--sft-checkpoint", default=None, help="start from this SFT checkpoint instead of training one "
                                                          "(e.g. runs/demo/sft/best)")
    p.add_argument("--beta", type=positive_float, default=None, help="β of PPO's KL penalty and of DPO (default 0.1)")
    p.add_argument("--ppo-steps", type=positive_int, default=None,
                   help="PPO iterations, each a batch of samples (default 40)")
    p.add_argument("--dpo-steps", type=positive_int, default=None,
                   help="DPO steps, each a batch of pairs (default 120)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed: data split, models, samples (default 0)")
    p.add_argument("--output-dir", default="runs/ppo_gpt",
                   help="runs, checkpoints and the figure (default runs/ppo_gpt)")
    p.add_argument("--figure", dest="draw_figure", action=argparse.BooleanOptionalAction, default=True,
                   help="draw reward and KL against step into OUTPUT_DIR/figures (needs matplotlib)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier ppo-gpt run in --output-dir")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH")
    p.add_argument("--quiet", action="store_true", help="no progress indicators")
    p.set_defaults(func=_ppo_gpt)

    p = sub.add_parser("generate", help="answers from a checkpoint: greedy, sampled or beam search",
                       description="Load a checkpoint (or GPT-2 directory) with its tokenizer and answer each "
                                   "prompt, stopping at the end token.")
    p.add_argument("model", help="a checkpoint directory, e.g. runs/sft/final")
    p.add_argument("prompts", nargs="+", help="questions, e.g. 'What is 2+2?'")
    p.add_argument("--max-new-tokens", type=positive_int, default=200, help="at most this many tokens (default 200)")
    p.add_argument("--temperature", type=_number(float, 0), default=0.0, help="0 (default): greedy; >0: sample")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=_number(float, 0, low_open=True, high=1), default=None,
                   help="sample among the most likely tokens holding this much probability")
    p.add_argument("--num-beams", type=positive_int, default=1, help="beam search with this many beams")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the sampling (default 0)")
    p.set_defaults(func=_generate)

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face GPT-2 directory",
                       description="Write a dpo_np checkpoint (or a GPT-2 directory) as config.json and "
                                   "model.safetensors, with its tokenizer as vocab.json and merges.txt, so that "
                                   "transformers' GPT2LMHeadModel and AutoTokenizer load it and give the same "
                                   "logits and ids. A character tokenizer has no such form: train with the byte "
                                   "tokenizer, or pass --without-tokenizer.")
    p.add_argument("checkpoint", help="a dpo_np checkpoint directory, e.g. runs/sft/final")
    p.add_argument("output_dir", help="the directory to write (new, empty, or an earlier export)")
    p.add_argument("--without-tokenizer", action="store_true", help="write the model's files only")
    p.set_defaults(func=_export)

    p = sub.add_parser("bench", help="benchmarks (timings, not tests)",
                       description="Time the heavy paths on this machine and print a report.")
    p.add_argument("what", choices=["closed-form", "model", "dpo", "generate", "torch", "all", "table"],
                   help="closed-form: exact π*, log Z, J for V=8, L=6; model: the GPT's training step against "
                        "NumPy's own matmul on the same shapes, and where its time goes; dpo: a DPO step against "
                        "an SFT step; generate: tokens/s with and without the key/value cache; torch: the toy "
                        "step and a DPO step against PyTorch eager and torch.compile (needs torch and "
                        "transformers); all: every one, and GPT-2 small's step; table: the README's performance "
                        "table from the JSON of `bench all --json`")
    p.add_argument("report", nargs="?", help="table only: the JSON file `bench all --json` wrote")
    p.add_argument("--json", metavar="PATH", help="write the report (and the machine it ran on) to PATH")
    p.set_defaults(func=_bench)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for option in ("json", "figure"):
            _writable_file(f"--{option}", getattr(args, option, None))
        if getattr(args, "figures_dir", None):
            _writable_dir("--figures-dir", args.figures_dir)
        return args.func(args)
    except TrainingInterrupted as stop:
        again = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume")
        print(f"\ninterrupted: {stop}. Continue with: python -m dpo_np {again} --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        if os.environ.get("DPO_NP_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
