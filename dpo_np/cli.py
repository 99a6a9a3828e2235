"""The command line: ``python -m dpo_np <command>``, a thin layer over public functions.

Every option is checked when it is read, and an error names the option as it was typed (``--seed:
must be a non-negative integer``), never an internal field (``FIELD_OPTIONS`` turns the package's
names into the command's options in one place); an unknown option close to a known one gets a "did
you mean", and TRL's spellings of the same options are accepted (``TRL_ALIASES``).

Before a command starts, everything it was given is checked (``check_before_start``): the options
that cannot apply together or to this input are refused by name with what to do instead
(``INAPPLICABLE``), every input must exist, every output must be writable and lie apart from every
input and from the other outputs (``OUTPUT_ENTRIES`` says what a command writes in a folder), and a
run whose estimated time or memory is out of reach is refused unless ``--allow-large`` asks for it.
A command that measures something writes its numbers with ``--json PATH``. Ctrl-C during training
saves a checkpoint and prints what is true: how to resume where a command can, which stages of a
pipeline finished and where they are where it cannot.

Every command runs NumPy's BLAS on ``--threads`` threads (``DEFAULT_THREADS`` unless the user set
OPENBLAS_NUM_THREADS or OMP_NUM_THREADS) and says so first, on stderr.
"""

import argparse
import contextlib
import difflib
import importlib.util
import json
import os
import re
import sys
import time

from dpo_np import cost
from dpo_np.bench.closed_form import bench_closed_form
from dpo_np.bench import machine
from dpo_np.bench.dpo import bench_dpo
from dpo_np.bench.generate import bench_generate
from dpo_np.bench.model import bench_model
from dpo_np.bench.report import run_all
from dpo_np.bench.table import load_report, performance_table
from dpo_np.bench.peer import bench_torch
from dpo_np.checkpoint import STATE
from dpo_np.experiments import runs
from dpo_np.experiments.closed_form import COMPARE as CLOSED_FORM_COMPARE
from dpo_np.experiments.closed_form import closed_form_seeds, plot_closed_form, run_closed_form
from dpo_np.experiments.demo import DEFAULTS as DEMO_DEFAULTS
from dpo_np.experiments.demo import QUICK as DEMO_QUICK
from dpo_np.experiments.demo import run_demo
from dpo_np.experiments.figures import FIGURES, OVER_SEEDS, make_figures
from dpo_np.experiments.gridworld import gridworld_seeds, plot_gridworld, print_report, run_gridworld
from dpo_np.experiments.plots import plot_diagnosis
from dpo_np.experiments.ppo_gpt import DEFAULTS as PPO_DEFAULTS
from dpo_np.experiments.ppo_gpt import run_ppo_gpt, run_ppo_gpt_seeds
from dpo_np.experiments.rlhf_toy import QUICK as RLHF_QUICK
from dpo_np.experiments.rlhf_toy import plot_rlhf, print_rlhf_report, rlhf_seeds, run_rlhf
from dpo_np.experiments.spread import parse_seeds
from dpo_np.experiments.successors import plot_successors, print_successors_report, run_successors
from dpo_np.experiments.successors_gpt import plot_successors_gpt, print_successors_gpt_report, run_successors_gpt
from dpo_np.files import describe_path, overlaps, write_json_atomic
from dpo_np.generate import beam_search, generate
from dpo_np.data import format_prompt, prompt_template_of
from dpo_np.diagnose import diagnose, format_report, read_log
from dpo_np.losses import LOSS_TYPES, REFERENCE_FREE_LOSS_TYPES
from dpo_np.pretrained import load_model, save_pretrained
from dpo_np.progress import plural
from dpo_np.tokenizer import PROMPT_TEMPLATE, check_prompt_template
from dpo_np.trainers import DPOConfig
from dpo_np.training import (FINAL_DIR, TrainingInterrupted, check_output_dir, in_use_message, is_run_entry,
                             last_checkpoint, lock_holder)

#: TRL's (and transformers' TrainingArguments') names for options that mean the same here
TRL_ALIASES = {"--learning_rate": "--lr", "--per_device_train_batch_size": "--batch-size",
               "--num_train_epochs": "--epochs", "--max_steps": "--steps", "--max_length": "--max-length",
               "--max_prompt_length": "--max-prompt-length", "--output_dir": "--output-dir",
               "--loss_type": "--loss-type", "--label_smoothing": "--label-smoothing", "--save_steps": "--save-steps",
               "--overwrite_output_dir": "--overwrite", "--model_name_or_path": "--model"}

#: BLAS threads when neither --threads nor OPENBLAS_NUM_THREADS/OMP_NUM_THREADS says otherwise. Measured
#: on 2-core machines: the demo takes the same time on one thread as on two when the cores are idle
#: (README), and its model trained several times faster on one than on two when other work shared
#: the cores (two threads then wait on each other). A larger model on idle cores may gain from two.
DEFAULT_THREADS = 1
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


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


# ---- names: the option as it was typed, never an internal field -------------------------------------

#: the package's name for what an option sets (a config field, a function's argument) where it is not
#: the option's own (``--max-length`` is ``max_length`` everywhere else); see ``in_users_words``
FIELD_OPTIONS = {"block_size": "max_length", "per_device_train_batch_size": "batch_size", "learning_rate": "lr",
                 "max_steps": "steps", "num_train_epochs": "epochs", "n_prompts": "prompts",
                 "overwrite_output_dir": "overwrite", "resume_from_checkpoint": "resume"}
#: phrases naming a model's own limit, said with the option that gave the model
MODEL_PHRASES = {"ref_model.config.block_size": ("ref", "the context of {} ({{}} tokens)"),
                 "model.config.block_size": ("model", "the context of {} ({{}} tokens)")}
#: English words that are also option names: replaced only where a message uses them as a name
_IDENTIFIER = re.compile(r"(?<![\w./\-])([a-z][a-z0-9]*(?:_[a-z0-9]+)*)(=True\b)?(?![\w\-])")
_AS_A_NAME = re.compile(r"\s+must\b|\s*\(\d|\s*=|\s+exceeds\b|:")


def option_names(parser, command, typed=None):
    """{dest: the option as the user would type it} for ``command``: its long option (``--max-length``),
    TRL's spelling where the user typed that one (``typed``: {ours: as typed}), the metavar of a
    positional argument."""
    names = {}
    for action in _subparsers(parser)[command]._actions:
        if action.dest in (argparse.SUPPRESS, "help"):
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        name = longs[0] if longs else (action.metavar or action.dest.upper())
        names[action.dest] = (typed or {}).get(name, name)
    return names


def in_users_words(message, names):
    """``message`` with the package's names of settings (``block_size``, ``per_device_train_batch_size``,
    ``GPTConfig.n_embd``, ``variance_episodes``, ``skip_invalid=True``) written as the options that set
    them (``names``: ``option_names``); a name no option of this command sets is left as it is."""
    for phrase, (dest, words) in MODEL_PHRASES.items():
        if dest in names:
            message = re.sub(re.escape(phrase) + r" \((\d+)\)", lambda m: words.format(names[dest]).format(m[1]),
                             message)
            message = message.replace(phrase, words.format(names[dest]).split(" (")[0])
    message = re.sub(r"\bGPTConfig\.(?=[a-z])", "", message)

    def option(m):
        name, flag = m[1], m[2]
        dest = FIELD_OPTIONS.get(name, name)
        if dest not in names or not ("_" in name or flag or _AS_A_NAME.match(message, m.end())):
            return m[0]
        return names[dest]          # a flag's "=True" goes: --skip-invalid, not --skip-invalid=True
    return _IDENTIFIER.sub(option, message)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors name options as typed (``typed``: {ours: TRL's spelling})."""
    typed = {}

    def error(self, message):
        for ours, theirs in self.typed.items():
            message = re.sub(re.escape(ours) + r"(?![\w\-])", theirs, message)
        super().error(message)


# ---- what a command reads and writes, checked before it starts ---------------------------------------

#: options naming a file a command reads (every other input is a directory its loader checks first)
FILE_INPUTS = ("data", "eval_data")
#: options naming what a command reads: a file (``FILE_INPUTS``), a checkpoint, a logged run
INPUTS = FILE_INPUTS + ("model", "ref", "reward_model", "sft_checkpoint", "checkpoint", "path")
#: options naming a file a command writes
FILE_OUTPUTS = ("json", "figure")


def _figure_file(args, name):
    return name.endswith(".png")


def _demo_entry(args, name):
    if args.seeds is not None:
        return re.fullmatch(r"seed-\d+", name) is not None
    return name in ("sft", "dpo", "reward") or (name == "figures" and args.figures_dir is None)


def _ppo_gpt_entry(args, name):
    return (name in ("reward", "ppo", "dpo") or (name == "sft" and args.sft_checkpoint is None)
            or (name == "figures" and args.draw_figure))


#: what a command writes inside its --output-dir, as a test of an entry's name (a command not named
#: here owns the whole directory: ``export``)
OUTPUT_ENTRIES = {"sft": lambda args, name: is_run_entry(name), "dpo": lambda args, name: is_run_entry(name),
                  "reward": lambda args, name: is_run_entry(name), "demo": _demo_entry, "ppo-gpt": _ppo_gpt_entry,
                  "gridworld": _figure_file, "rlhf": _figure_file, "exact-gpt": _figure_file,
                  "successors": _figure_file, "figures": _figure_file}


def _outputs(args):
    """[(dest, path, entries)]: each place the command writes; ``entries`` tests the names it writes
    inside a folder, None for a file (or a folder it owns whole)."""
    out = [(dest, getattr(args, dest), None) for dest in FILE_OUTPUTS if getattr(args, dest, None)]
    if getattr(args, "output_dir", None):
        entries = OUTPUT_ENTRIES.get(args.command)
        out.append(("output_dir", args.output_dir, entries and (lambda name: entries(args, name))))
    if getattr(args, "figures_dir", None):
        out.append(("figures_dir", args.figures_dir, lambda name: _figure_file(args, name)))
    return out


def _writes_at(output, path):
    """The entry of ``output`` that writing it would replace at ``path`` (the whole path, or the first
    entry of its folder on the way), or None when ``path`` lies apart from what it writes."""
    _, where, entries = output
    if not overlaps(path, where):
        return None
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(where))
    first = rel.split(os.sep)[0]
    if entries is None or rel == "." or entries(first):
        return os.path.join(where, first) if rel != "." else where
    return None


def check_paths_apart(args):
    """Refuse, before anything runs, an output that would land on an input (``--json`` the same file as
    ``--data``; ``--output-dir`` holding ``--model`` in what a run writes there; a file written into a
    checkpoint read) or on another output; links and hard links are resolved (``files.overlaps``)."""
    names = args.option_names
    inputs = [(dest, getattr(args, dest)) for dest in INPUTS if getattr(args, dest, None)]
    outputs = _outputs(args)
    for dest, path in inputs:
        for out in outputs:
            hit = _writes_at(out, path)
            if hit is not None and os.path.realpath(hit) == os.path.realpath(path):
                raise CommandError(f"{names[out[0]]} {out[1]} is {names[dest]} {path}: writing it would replace what "
                                   f"this command reads; choose another {names[out[0]]}")
            if hit is not None:
                raise CommandError(f"{names[out[0]]} {out[1]} would write {hit}, where {names[dest]} {path} lies: the "
                                   f"command would replace what it reads; choose another {names[out[0]]}")
            if overlaps(out[1], path) and os.path.isdir(path):
                raise CommandError(f"{names[out[0]]} {out[1]} lies inside {names[dest]} {path}, which this command "
                                   f"reads; choose a {names[out[0]]} outside it")
    for i, a in enumerate(outputs):
        for b in outputs[i + 1:]:
            if _writes_at(a, b[1]) is not None or _writes_at(b, a[1]) is not None:
                raise CommandError(f"{names[a[0]]} {a[1]} and {names[b[0]]} {b[1]}: one would write over the "
                                   f"other; give them paths apart")


def _writable_dir(option, path):
    """``path`` can be (or is) a directory that can be written: not a file, under a parent that can
    be created and written."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CommandError(f"{option} {path}: is {describe_path(path)}, not a directory")
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise CommandError(f"{option} {path}: cannot be created, {existing} is {describe_path(existing)}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "cannot be written" if existing == os.path.abspath(path) else f"cannot be created in {existing}"
        raise CommandError(f"{option} {path}: {what} (no write permission)")


def _writable_file(option, path):
    """``path`` can be written whole (``files.atomic_write``: a new file beside it, then a rename)."""
    if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
        raise CommandError(f"{option} {path}: is {describe_path(path)}, not a file this command may replace; "
                           f"give the path of a file")
    _writable_dir(option, os.path.dirname(os.path.abspath(path)))


def _figure_format(option, path):
    """A --figure path in a format matplotlib writes, checked before the run (without matplotlib
    installed no figure is drawn, and nothing needs checking)."""
    if importlib.util.find_spec("matplotlib") is None:
        return
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in formats:
        raise CommandError(f"{option} {path}: " + (f"the format {ext!r} is not one matplotlib writes" if ext else
                                                   "has no extension to say its format")
                           + f"; end it with one of {', '.join('.' + f for f in sorted(formats))}")


def check_inputs(args):
    """Every file input exists and is a regular file (a checkpoint's folder is its loader's to check, first)."""
    names = args.option_names
    for dest in FILE_INPUTS:
        path = getattr(args, dest, None)
        if path and not (os.path.isfile(path)):
            why = "no such file" if not os.path.lexists(path) else f"is {describe_path(path)}, not a file"
            raise CommandError(f"{names[dest]} {path}: {why}")
    if getattr(args, "path", None) and not os.path.exists(args.path):
        raise CommandError(f"{names['path']} {args.path}: no such file or directory"
                           + (f" ({describe_path(args.path)})" if os.path.lexists(args.path) else ""))


def check_outputs(args):
    """Every output can be written: a folder created, a file replaced whole, a figure in a format
    matplotlib writes."""
    names = args.option_names
    for dest, path, entries in _outputs(args):
        if dest in FILE_OUTPUTS:
            _writable_file(names[dest], path)
        else:
            _writable_dir(names[dest], path)
        if dest == "figure":
            _figure_format(names[dest], path)


def _refuse_live_run(option, path):
    """A run training in ``path`` right now is named first: neither --overwrite nor --resume can enter."""
    owner = lock_holder(path)
    if owner is not None:
        raise CommandError(in_use_message(path, owner, option))


def _check_run_dir(args):
    """The output directory of a training command: no run live in it, and fresh unless
    --overwrite/--resume (an overwrite checked whole before anything is deleted)."""
    n = args.option_names
    _refuse_live_run(n["output_dir"], args.output_dir)
    if args.resume:
        if last_checkpoint(args.output_dir) is None:
            raise CommandError(f"{n['resume']}: {args.output_dir} holds no checkpoint-<step> to resume from "
                               f"(save some with {n['save_steps']} N)")
        return
    _fresh_or_replaceable(args, [args.output_dir], args.output_dir, "an earlier run",
                          f"{n['overwrite']} to replace that run's files, or {n['resume']} to continue it")


def _fresh_or_replaceable(args, paths, output_dir, earlier, choices):
    """``training.check_output_dir`` for each of ``paths``: fresh, or --overwrite with everything it would
    delete checked first; returns those that hold files. A refusal names the options as typed."""
    n = args.option_names
    try:
        return [path for path in paths if check_output_dir(path, args.overwrite)]
    except (PermissionError, ValueError) as err:
        if args.overwrite:
            raise CommandError(f"{n['overwrite']}: {err}") from None
        raise CommandError(f"{n['output_dir']} {output_dir} already holds {earlier}; choose a new {n['output_dir']}, "
                           f"pass {choices}") from None


def _json(args, result):
    if getattr(args, "json", None):
        write_json_atomic(args.json, _plain({"command": args.command, "options": _options(args),
                                             "threads": getattr(args, "blas_threads", None), **result}))
        print(f"numbers written to {args.json}")


def _options(args):
    return {k: v for k, v in vars(args).items() if k not in ("func", "command", "blas_threads", "option_names",
                                                              "given")}


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
                overwrite=args.overwrite, show_progress=not args.quiet, skip_invalid=args.skip_invalid,
                allow_large=args.allow_large)


def _lengths(args):
    """--max-length and --max-prompt-length, checked against each other by their option names."""
    if args.max_length is not None and args.max_prompt_length is not None and args.max_prompt_length >= args.max_length:
        raise CommandError(f"--max-prompt-length ({args.max_prompt_length}) must be smaller than --max-length "
                           f"({args.max_length}), so every response keeps a token")
    return dict(max_length=args.max_length, max_prompt_length=args.max_prompt_length)


def _prompt_template(text):
    """An argparse type: a prompt template with ``\\n``, ``\\t`` and ``\\\\`` read as in Python (a shell's
    quotes keep them as typed) and exactly one ``{prompt}`` field."""
    template = re.sub(r"\\(n|t|\\)", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m[1]], text)
    try:
        return check_prompt_template(template, "it")
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("it ")) from None


def _check_dpo_options(args):
    """β, the loss and its label smoothing as DPOConfig checks them, with the options' names."""
    try:
        DPOConfig(output_dir=args.output_dir, beta=args.beta, loss_type=args.loss_type,
                  label_smoothing=args.label_smoothing)
    except (TypeError, ValueError) as err:
        raise CommandError(in_users_words(str(err).removeprefix("DPOConfig: "), args.option_names)) from None


# ---- options that cannot apply ---------------------------------------------------------------------

def _greedy(a):
    return hasattr(a, "num_beams") and a.num_beams == 1 and not a.temperature > 0


#: (options given together, when they cannot apply (None: never), why and what to do instead): each a
#: refusal naming the options as typed (``n``: ``option_names``), never an option silently ignored
INAPPLICABLE = (
    (("resume", "overwrite"), None, lambda n, a: f"{n['resume']} continues the run in {n['output_dir']} and "
                                                 f"{n['overwrite']} replaces it: give one of them"),
    (("steps", "epochs"), None, lambda n, a: f"{n['steps']} fixes the run's length, so {n['epochs']} would change "
                                             f"nothing: give one of them"),
    (("seed", "seeds"), None, lambda n, a: f"{n['seeds']} runs every seed it names, so {n['seed']} would change "
                                           f"nothing: give one of them"),
    *((("model", size), None, lambda n, a, size=size: f"{n[size]} sets the size of a new model, and {n['model']} "
                                                      f"{a.model} brings its own: drop {n[size]}, or drop {n['model']} "
                                                      f"to train a new model")
      for size in ("n_layer", "n_head", "n_embd", "block_size")),
    (("eval_data",), lambda a: a.data is None, lambda n, a: f"{n['eval_data']} needs {n['data']}: the toy corpus "
                                                            f"brings its own validation split"),
    (("skip_invalid",), lambda a: a.data is None, lambda n, a: f"{n['skip_invalid']} needs {n['data']}: the toy "
                                                               f"corpus holds no invalid record"),
    (("ref",), lambda a: getattr(a, "loss_type", None) in REFERENCE_FREE_LOSS_TYPES,
     lambda n, a: f"{n['loss_type']} {a.loss_type} reads no reference model, so {n['ref']} would change nothing: "
                  f"drop it"),
    *(((opt,), _greedy, lambda n, a, opt=opt: f"{n[opt]} changes nothing in greedy decoding (no "
                                              f"{n['temperature']}): add {n['temperature']} T with T > 0 to sample, "
                                              f"or drop {n[opt]}")
      for opt in ("top_k", "top_p", "seed")),
    *((("num_beams", opt), lambda a: a.num_beams > 1,
       lambda n, a, opt=opt: f"beam search ({n['num_beams']} {a.num_beams}) keeps the likeliest continuations and "
                             f"samples nothing, so {n[opt]} would change nothing: drop {n[opt]}, or "
                             f"{n['num_beams']} to sample")
      for opt in ("temperature", "top_k", "top_p", "seed")),
    (("figures_dir", "seeds"), None, lambda n, a: f"{n['seeds']} draws no figures (each seed is a row of its "
                                                  f"table), so {n['figures_dir']} would change nothing: drop it, or "
                                                  f"run one {n['seed']} for its figures"),
)


def given_options(parser, argv):
    """The dests of the options typed in ``argv`` (abbreviations and ``--x=v`` included): parsed again
    with every default suppressed, so what remains is what the user gave, whatever its value."""
    for sub in _subparsers(parser).values():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv)
    return set(vars(given)) - {"command", "func"}


def refuse_inapplicable(args):
    """Refuse the first option in ``INAPPLICABLE`` that was given where it cannot apply."""
    names = args.option_names
    for dests, when, why in INAPPLICABLE:
        if set(dests) <= args.given and (when is None or when(args)):
            raise CommandError(why(names, args))


# ---- what a run will cost, before it starts ---------------------------------------------------------

#: the toy commands' runs in seconds, measured on a 2-core machine that other work was using (so on the
#: slow side): a default run's time, or rates per unit of work where a size moves it far
GRIDWORLD_SECONDS, GRIDWORLD_MOVES = 13.0, 40 * (2 * 800 * 32 + 4 * 5 * 2000)   # default: horizon × episodes
CLOSED_FORM_RATES = {"cell_step": 6e-8, "pair": 1e-6, "cell": 2e-6, "cell_bytes": 250, "pair_bytes": 48}
SEED_SECONDS = {"rlhf": (90.0, 8.0), "successors": (35.0, 3.0), "exact-gpt": (20.0, 2.0), "demo": (80.0, 5.0)}


def _sizes(args, *dests):
    """The size options the user gave, as typed with their values ("--horizon 100000"), for a cost's message."""
    given = [f"{args.option_names[d]} {getattr(args, d)}" for d in dests if d in args.given]
    return ", ".join(given) or "the defaults"


def _estimate_gridworld(args):
    moves = args.horizon * (2 * args.iterations * args.episodes + 4 * args.variance_seeds * args.variance_episodes)
    episodes = max(args.episodes, args.variance_episodes)
    return (_sizes(args, "horizon", "iterations", "episodes", "variance_episodes", "variance_seeds"),
            GRIDWORLD_SECONDS * moves / GRIDWORLD_MOVES, 2 * 25 * episodes * args.horizon)


def _estimate_closed_form(args):
    r = CLOSED_FORM_RATES
    cells = args.prompts * args.vocab_size ** args.length                 # prompts × responses
    pairs, steps, runs = args.pairs or 2_000_000, args.steps or 1000, 3 if args.compare else 1
    seconds = runs * (r["cell_step"] * steps * cells + r["pair"] * pairs) + r["cell"] * cells
    return (_sizes(args, "vocab_size", "length", "prompts", "pairs", "steps"), seconds,
            r["cell_bytes"] * cells + r["pair_bytes"] * pairs)


def _estimate_seeds(args):
    """The commands whose time is a default run's per seed, scaled by the sizes they take."""
    full, quick = SEED_SECONDS[args.command]
    seconds = quick if args.quick else full
    scale = {"rlhf": (("steps", 1000), ("samples", 64), ("pairs", 2_000_000)),
             "successors": (("steps", 1000), ("samples", 16), ("pairs", 100_000)),
             "demo": (("sft_steps", 1200), ("dpo_steps", 200))}.get(args.command, ())
    factor = max([1.0] + [getattr(args, d) / default for d, default in scale if getattr(args, d, None)])
    pairs = getattr(args, "pairs", None) or 0
    return (_sizes(args, "seeds", *(d for d, _ in scale)), seconds * factor * len(args.seed_list or [0]),
            48 * pairs * 4)


#: each command's estimate of (the sizes that make it, seconds, bytes), checked by ``cost.check``
ESTIMATES = {"gridworld": _estimate_gridworld, "closed-form": _estimate_closed_form, "rlhf": _estimate_seeds,
             "successors": _estimate_seeds, "exact-gpt": _estimate_seeds, "demo": _estimate_seeds}


# ---- the commands ------------------------------------------------------------------------------

def _demo(args):
    overrides = {k: v for k, v in (("sft_steps", args.sft_steps), ("dpo_steps", args.dpo_steps),
                                   ("beta", args.beta), ("sft_patience", args.sft_patience)) if v is not None}
    if args.seeds is not None:
        return _demo_seeds(args, overrides)
    _check_stages(args, args.output_dir)
    result = run_demo(output_dir=args.output_dir, figures_dir=args.figures_dir, quick=args.quick, seed=args.seed,
                      show_progress=not args.quiet, overwrite=args.overwrite, **overrides)
    _json(args, {k: result[k] for k in ("before", "after", "answers", "families", "config", "seconds", "best_steps")})
    return 0


def _demo_seeds(args, overrides):
    from dpo_np.experiments.seeds import run_seeds
    for seed in args.seed_list:
        _check_stages(args, os.path.join(args.output_dir, f"seed-{seed}"))
    result = run_seeds(args.seed_list, output_dir=args.output_dir, quick=args.quick, overwrite=args.overwrite,
                       show_progress=not args.quiet, **overrides)
    _json(args, result)
    return 0


# ---- the stages of a pipeline (demo, ppo-gpt): what is there, what an overwrite replaces ----------------

#: the stages a pipeline command trains, each in a folder of its own under --output-dir
STAGES = {"demo": ("sft", "dpo", "reward"), "ppo-gpt": ("sft", "reward", "ppo", "dpo")}


def _stage_state(path, since=None):
    """A stage folder in words: "finished (its model in …/final)", "stopped at …/checkpoint-N", "not
    started"; with ``since`` (a start time) only what this run wrote counts, the rest is "an earlier run's"."""
    final = os.path.join(path, FINAL_DIR)
    newest = max((os.stat(p).st_mtime for p in (path, final, os.path.join(path, "metrics.jsonl"))
                  if os.path.exists(p)), default=None)
    if newest is None or not os.listdir(path):
        return "not started"
    if since is not None and newest < since:
        return f"not started in this run ({path} still holds an earlier run's files)"
    if os.path.isdir(final):
        return f"finished, its model in {final}"
    last = last_checkpoint(path)
    return f"stopped, saved {last}" if last else f"stopped before saving anything ({path})"


def _stage_report(args, since=None):
    """One line per stage of a demo or ppo-gpt run (per seed with --seeds)."""
    roots = ([os.path.join(args.output_dir, f"seed-{seed}") for seed in args.seed_list]
             if getattr(args, "seed_list", None) else [args.output_dir])
    return [f"  {os.path.join(root, stage) if len(roots) > 1 else stage}: "
            f"{_stage_state(os.path.join(root, stage), since)}" for root in roots for stage in STAGES[args.command]]


def _check_stages(args, output_dir):
    """The stage folders of a demo or ppo-gpt run: none in use by a live run, and fresh unless
    --overwrite, which is checked whole before anything is deleted and says what it replaces."""
    option = args.option_names["output_dir"]
    paths = [os.path.join(output_dir, stage) for stage in STAGES[args.command]]
    for path in paths:
        _refuse_live_run(option, path)
    held = _fresh_or_replaceable(args, paths, output_dir, f"an earlier {args.command} run",
                                 f"{args.option_names['overwrite']} to replace it")
    if held:
        print(f"{args.option_names['overwrite']}: replacing the earlier {args.command} run in {output_dir}, stage "
              f"by stage as this one reaches it:\n" + "\n".join(
                  f"  {os.path.basename(p)}: {_stage_state(p)}" for p in held), file=sys.stderr)


def _seed_list(text, option="--seeds"):
    try:
        return parse_seeds(text, option)
    except ValueError as err:
        raise CommandError(str(err)) from None


def _seeds_of(args):
    """--seeds as a list (None when absent, and --seed then defaults to 0)."""
    if args.seeds is None:
        args.seed = 0 if args.seed is None else args.seed
    return args.seed_list


def _seed_report(args, result):
    """Print a --seeds run's table, then write it all with --json."""
    print(result["table"])
    _json(args, result)


def _sft(args):
    if args.block_size is not None:                # the option's old name: a new model's context
        if "max_length" in args.given and args.max_length != args.block_size:
            raise CommandError(f"--block-size {args.block_size} and {args.option_names['max_length']} "
                               f"{args.max_length}: --block-size is the old name of {args.option_names['max_length']}; "
                               f"give that one alone")
        print(f"--block-size is deprecated: it is {args.option_names['max_length']} now (a new model's context, and "
              f"the length every example is cut to); read as {args.option_names['max_length']} {args.block_size}",
              file=sys.stderr)
        args.max_length = args.block_size
    _check_run_dir(args)
    result = runs.run_sft(data=args.data, eval_data=args.eval_data, model=args.model, steps=args.steps,
                          epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, n_layer=args.n_layer,
                          n_head=args.n_head, n_embd=args.n_embd, prompts=args.prompt,
                          prompt_template=args.prompt_template, **_lengths(args), **_run_options(args))
    _json(args, result)
    return 0


def _dpo(args):
    _check_run_dir(args)
    result = runs.run_dpo(data=args.data, model=args.model, ref=args.ref, eval_data=args.eval_data, beta=args.beta,
                          loss_type=args.loss_type, label_smoothing=args.label_smoothing, steps=args.steps,
                          epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, prompts=args.prompt,
                          prompt_template=args.prompt_template, **_lengths(args), **_run_options(args))
    _json(args, result)
    return 0


def _reward(args):
    _check_run_dir(args)
    result = runs.run_reward(data=args.data, model=args.model, eval_data=args.eval_data, steps=args.steps,
                             epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             prompt_template=args.prompt_template, **_lengths(args), **_run_options(args))
    _json(args, result)
    return 0


def _evaluate(args):
    result = runs.run_evaluate(model=args.model, ref=args.ref, data=args.data, prompts=args.prompt or [],
                               beta=args.beta, kl_samples=args.kl_samples, reward_model=args.reward_model,
                               seed=args.seed, skip_invalid=args.skip_invalid, allow_large=args.allow_large)
    _json(args, result)
    return 0


def _closed_form(args):
    settings = dict(vocab_size=args.vocab_size, length=args.length, n_prompts=args.prompts, beta=args.beta,
                    pairs=args.pairs, steps=args.steps, lr=args.lr)
    seeds = _seeds_of(args)
    if seeds is not None:
        result = closed_form_seeds(seeds, compare=args.compare, print_fn=print, **settings)
        _seed_report(args, result)
        _figure(plot_closed_form, result["runs"][0], args.figure)
        return 0
    result = run_closed_form(seed=args.seed, progress=not args.quiet, **settings)
    print(f"final KL(π*‖π_θ) = {result['kl'][-1]:.3e}, J(π*) − J(π_θ) = β·KL(π_θ‖π*) = "
          f"{result['suboptimality'][-1]:.3e}  ({result['n_pairs']:,} pairs, "
          f"{plural(result['config']['steps'], 'step')}; data {result['seconds']['data']:.2f} s, "
          f"training {result['seconds']['train']:.2f} s)")
    compare = {}
    if args.compare:
        for label, _, extra in CLOSED_FORM_COMPARE:
            compare[label] = run_closed_form(seed=args.seed, progress=False, **settings, **extra(args.beta))
        print("\nwhat breaks it (same data and steps):")
        print(f"  {'variant':<16} {'KL(π*‖π_θ)':>12} {'J(π*) − J(π_θ)':>15} {'J(π_θ)':>10} {'J(π*)':>10}")
        for label, res in [("DPO at β", result)] + list(compare.items()):
            print(f"  {label:<16} {res['kl'][-1]:>12.3e} {res['suboptimality'][-1]:>15.3e} "
                  f"{res['objective'][-1]:>10.4f} {res['optimal_objective']:>10.4f}")
    _figure(plot_closed_form, result, args.figure)
    _json(args, {"config": result["config"], "final_kl": result["kl"][-1],
                 "objective_gap": result["optimal_objective"] - result["objective"][-1],
                 "suboptimality": result["suboptimality"][-1],
                 "curve": {k: result[k] for k in ("step", "loss", "kl", "objective", "suboptimality")},
                 "compare": {label: {"final_kl": r["kl"][-1], "objective": r["objective"][-1],
                                     "suboptimality": r["suboptimality"][-1]}
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
    settings = dict(gamma=args.gamma, iterations=args.iterations, episodes=args.episodes, horizon=args.horizon,
                    lr=args.lr, variance_episodes=args.variance_episodes, variance_seeds=args.variance_seeds)
    seeds = _seeds_of(args)
    if seeds is not None:
        result = gridworld_seeds(seeds, print_fn=print, **settings)
        _seed_report(args, result)
        _figure(plot_gridworld, result["runs"][0], args.output_dir and os.path.join(args.output_dir, "gridworld.png"))
        return 0
    result = run_gridworld(seed=args.seed, progress=not args.quiet, **settings)
    print_report(result)
    print(f"({result['seconds']:.1f} s)")
    _json(args, result)
    _figure(plot_gridworld, result, args.output_dir and os.path.join(args.output_dir, "gridworld.png"))
    return 0


def _rlhf(args):
    settings = dict(RLHF_QUICK) if args.quick else {}
    settings.update({k: v for k, v in (("beta", args.beta), ("steps", args.steps), ("samples", args.samples),
                                       ("pairs", args.pairs)) if v is not None})
    seeds = _seeds_of(args)
    if seeds is not None:
        result = rlhf_seeds(seeds, print_fn=print, **settings)
        print("final_kl (worst seed): " + ", ".join(f"{k} {v:.6e}" for k, v in result["final_kl"].items()))
        _seed_report(args, result)
        _rlhf_figures(args, result["runs"][0])
        return 0
    result = run_rlhf(seed=args.seed, progress=not args.quiet, **settings)
    print_rlhf_report(result)
    print("final_kl: " + ", ".join(f"{k} {v:.6e}" for k, v in result["final_kl"].items())
          + f"  ({result['seconds']['total']:.1f} s)")
    _json(args, result)
    _rlhf_figures(args, result)
    return 0


def _rlhf_figures(args, result):
    if args.output_dir and importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figures: pip install "dpo-np[plot]"')
    elif args.output_dir:
        for path in plot_rlhf(result, args.output_dir):
            print(f"figure written to {path}")


def _exact_gpt(args):
    from dpo_np.experiments.exact_gpt import plot_exact_gpt, print_report, run_exact_gpt
    result = run_exact_gpt(seeds=args.seed_list, quick=args.quick, progress=not args.quiet)
    print_report(result)
    _json(args, result)
    _figure(plot_exact_gpt, result, args.output_dir and os.path.join(args.output_dir, "exact_gpt.png"))
    return 0


def _successors(args):
    overrides = {k: v for k, v in (("beta", args.beta), ("pairs", args.pairs), ("steps", args.steps),
                                   ("samples", args.samples)) if v is not None}
    # given, an option sets every run it applies to; left out, each run keeps its own default
    result, seconds = {}, 0.0
    if args.policy in ("table", "both"):
        result = run_successors(seeds=args.seed_list, quick=args.quick, progress=not args.quiet, **overrides)
        print_successors_report(result)
        seconds += result["seconds"]["total"]
    if args.policy in ("gpt", "both"):
        result["gpt"] = run_successors_gpt(seeds=args.seed_list, quick=args.quick, progress=not args.quiet,
                                           **overrides)
        print_successors_gpt_report(result["gpt"])
        seconds += result["gpt"]["seconds"]["total"]
    print(f"({seconds:.1f} s)")
    _json(args, result)
    if args.policy != "gpt":
        _figure(plot_successors, result, args.output_dir and os.path.join(args.output_dir, "successors.png"))
    if args.policy != "table":
        _figure(plot_successors_gpt, result, args.output_dir and os.path.join(args.output_dir, "successors_gpt.png"))
    return 0


#: the README's figures, committed beside the package; --quick's drafts go elsewhere
README_FIGURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "figures")
QUICK_FIGURES = "runs/figures_quick"


def _figures_output(args):
    """``figures``' folder: the README's ``figures`` unless --quick, whose drafts never go there."""
    if args.output_dir is None:
        args.output_dir = QUICK_FIGURES if args.quick else "figures"
    if args.quick and (overlaps(args.output_dir, README_FIGURES) or os.path.normpath(args.output_dir) == "figures"):
        raise CommandError(f"--quick draws drafts from small runs, not the README's figures, so it never writes into "
                           f"{args.output_dir}: choose another {args.option_names['output_dir']} (default "
                           f"{QUICK_FIGURES})")


def _figures(args):
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError('figures needs matplotlib: pip install "dpo-np[plot]"')
    paths = make_figures(args.output_dir, only=args.only, quick=args.quick)
    print(f"figures: {len(paths)} written to {args.output_dir}")
    return 0


def _ppo_gpt(args):
    seeds = _seeds_of(args)
    if seeds is not None and args.sft_checkpoint:
        raise CommandError(f"{args.option_names['sft_checkpoint']} and {args.option_names['seeds']}: one SFT model "
                           f"cannot stand for every seed's own data split and π^SFT; drop "
                           f"{args.option_names['sft_checkpoint']}, or run one --seed")
    for root in ([args.output_dir] if seeds is None else [os.path.join(args.output_dir, f"seed-{s}") for s in seeds]):
        _check_stages(args, root)
    if args.draw_figure and importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figure: pip install "dpo-np[plot]"')
    overrides = {k: v for k, v in (("beta", args.beta), ("ppo_steps", args.ppo_steps), ("dpo_steps", args.dpo_steps))
                 if v is not None}
    if seeds is not None:
        result = run_ppo_gpt_seeds(seeds, quick=args.quick, output_dir=args.output_dir, figure=args.draw_figure,
                                   show_progress=not args.quiet, overwrite=args.overwrite, **overrides)
        _json(args, result)
        return 0
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
    if args.prompt_template is not None:
        tokenizer.prompt_template = args.prompt_template
    template = prompt_template_of(tokenizer)
    encoded = [tokenizer.encode(format_prompt(prompt, template)) for prompt in args.prompts]
    for prompt, ids in zip(args.prompts, encoded):          # every prompt checked before the first answer
        if len(ids) >= model.config.block_size:
            raise CommandError(f"prompt {prompt!r} is {len(ids)} tokens in its template, and the model reads at most "
                               f"{model.config.block_size}: no room is left for an answer; shorten it")
    for prompt, ids in zip(args.prompts, encoded):
        room = model.config.block_size - len(ids)
        if args.max_new_tokens > room:
            print(f"{args.option_names['max_new_tokens']} {args.max_new_tokens}: at most {room} for prompt {prompt!r}, "
                  f"the room its {len(ids)} tokens leave in the model's {model.config.block_size}", file=sys.stderr)
        n = min(args.max_new_tokens, room)
        if args.num_beams > 1:
            out = beam_search(model, ids, n, num_beams=args.num_beams, eos_token_id=tokenizer.eos_token_id)
        else:
            out = generate(model, ids, n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           do_sample=args.temperature > 0, eos_token_id=tokenizer.eos_token_id, seed=args.seed)
        print(format_prompt(prompt, template) + tokenizer.decode(out[len(ids):]))
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


def _diagnose(args):
    log = read_log(args.path)
    report = diagnose(log)
    print(format_report(report, quiet=args.quiet))
    _figure(lambda r, path: plot_diagnosis(log["rows"], r, path), report, args.figure)
    _json(args, report)
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
    # the threads in force are the CLI's (threadpoolctl), which the environment alone may not show
    _json(args, {"machine": {**machine.describe(), "blas_threads": args.blas_threads}, "result": run()})
    return 0


# ---- the parser ----------------------------------------------------------------------------------

def _run_args(p, default_dir):
    p.add_argument("--output-dir", default=default_dir, help=f"where the run writes (default {default_dir})")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--save-steps", type=positive_int, default=None,
                   help="save a checkpoint every N steps (default: none; Ctrl-C saves one where it stops)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --output-dir")
    p.add_argument("--json", metavar="PATH", help="write the run's numbers (and its options) to PATH (default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    _data_args(p)


def _data_args(p):
    """What a command that reads one's own JSONL takes beyond its files: leave invalid records out, and run
    what an estimate up front finds too large."""
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave out the records a file cannot hold (invalid JSON, a missing key, a repeated pair, ...) "
                        "and say how many and why (default: the first one is an error naming its line)")
    _allow_large(p)


def _allow_large(p):
    p.add_argument("--allow-large", action="store_true",
                   help="run even when the estimate made before starting says it needs more than half of this "
                        "machine's memory or more than an hour (default: such a run is refused, with the estimate)")


def _size_args(p, command, lr, batch_size):
    """The options of a training run's length, step and sequences; their defaults as ``runs`` sets them."""
    low, high = runs.STEP_BOUNDS[command]
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"optimizer steps (default: --epochs passes over the data, but at least {low} and at most "
                        f"{high} steps)")
    p.add_argument("--epochs", type=positive_int, default=runs.DEFAULT_EPOCHS,
                   help=f"passes over the data when --steps is not given (default {runs.DEFAULT_EPOCHS})")
    p.add_argument("--lr", type=positive_float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help=f"examples per step (default {batch_size})")
    p.add_argument("--max-length", type=_number(int, 2), default=None,
                   help=f"tokens of a prompt and its response together; the rest of a response is cut (default: the "
                        f"model's context, {runs.NEW_MODEL_LENGTH} for a new model). With the byte tokenizer a token is "
                        f"a byte: 1 per ASCII character, 2 or 3 for most others, 4 for an emoji")
    p.add_argument("--max-prompt-length", type=positive_int, default=None,
                   help=f"tokens kept of a prompt written in its template, from its end (default: the smaller of "
                        f"{runs.PROMPT_LENGTH} and half of --max-length)")
    p.add_argument("--prompt-template", type=_prompt_template, default=None, metavar="TEXT",
                   help=f"how a prompt is written before its response, with {{prompt}} where the prompt goes and \\n "
                        f"for a new line; saved with the model (default: the model's, {PROMPT_TEMPLATE!r} for a new one)")


def _eval_args(p, what):
    p.add_argument("--eval-data", help=f"held-out {what} file, evaluated {runs.EVALUATIONS} times along the run: the "
                                       f"run ends with its best evaluation and stops after {runs.PATIENCE} without "
                                       f"a better eval loss (default: none, no evaluation)")


def _trl_epilog(p):
    """Say which TRL spellings this command accepts (``TRL_ALIASES``)."""
    own = set(p._option_string_actions)
    names = [f"{trl} ({ours})" for trl, ours in TRL_ALIASES.items() if ours in own]
    if names:
        p.epilog = ("TRL's option names are accepted too: " + ", ".join(names)
                    + "; and any option written with underscores (--eval_data).")


def _thread_args(parser):
    for p in _subparsers(parser).values():
        p.add_argument("--threads", type=positive_int, default=None,
                       help=f"threads of NumPy's BLAS (default: OPENBLAS_NUM_THREADS or OMP_NUM_THREADS when set, "
                            f"else {DEFAULT_THREADS}: on idle cores 2 are about 15%% faster at these sizes, but when other "
                            f"work shares the cores 1 ran the demo 2.5× faster; see the README)")
        _trl_epilog(p)


def _subparsers(parser):
    return next(a for a in parser._actions if a.dest == "command").choices


def build_parser():
    parser = _Parser(prog="python -m dpo_np",
                                     description="Direct Preference Optimization from first principles, in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("demo", help="the whole pipeline on toy data: SFT → π_ref → DPO, and a reward model",
                       description="Supervised fine-tuning of the NumPy GPT on both answers of the embedded toy "
                                   "pairs, a frozen reference snapshot, DPO on the toy preference pairs and a "
                                   "Bradley–Terry reward model, the last two stopped at their best validation "
                                   "point; then what the model says before and after DPO, judged by the rules that "
                                   "wrote the toy data, a before/after table on held-out pairs, and figures of the "
                                   "metric curves.")
    p.add_argument("--output-dir", default="runs/demo", help="runs, metrics, checkpoints (default runs/demo)")
    p.add_argument("--figures-dir", default=None, help="where figures go (default OUTPUT_DIR/figures; '' for none)")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps: seconds, not minutes")
    p.add_argument("--sft-steps", type=positive_int, default=None,
                   help=f"at most this many SFT steps (default {DEMO_DEFAULTS['sft_steps']}; "
                        f"{DEMO_QUICK['sft_steps']} with --quick)")
    p.add_argument("--dpo-steps", type=positive_int, default=None,
                   help=f"at most this many DPO steps (default {DEMO_DEFAULTS['dpo_steps']}; "
                        f"{DEMO_QUICK['dpo_steps']} with --quick)")
    p.add_argument("--sft-patience", type=positive_int, default=None,
                   help="stop SFT after this many evaluations without a better validation loss and keep its best "
                        "point (default: train SFT to its last step, so π_ref writes the trained answers whole; "
                        f"{DEMO_QUICK['sft_patience']} with --quick)")
    p.add_argument("--beta", type=positive_float, default=None,
                   help=f"β of the DPO loss (default {DEMO_DEFAULTS['beta']}; {DEMO_QUICK['beta']} with --quick)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed: data split and model (default 0)")
    p.add_argument("--seeds", default=None, help="run every seed of a range (0-4) or list (0,2) and print the table "
                                                 "of their results (default: only --seed)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output-dir")
    p.add_argument("--json", metavar="PATH", help="write every number of the table to PATH (default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress indicators")
    _allow_large(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("sft", help="supervised fine-tuning: the toy corpus, or --data FILE.jsonl",
                       description="Train the NumPy GPT by maximum likelihood on the response tokens of "
                                   "{\"prompt\", \"response\"} (or {\"text\"}) JSONL lines; without --data, the toy "
                                   "corpus. A new model gets the byte tokenizer (any UTF-8 text).")
    p.add_argument("--data", help="JSONL file of {\"prompt\", \"response\"} or {\"text\"} lines, or TRL's "
                                  "{\"messages\"} (default: the toy corpus, with its validation split as --eval-data)")
    _eval_args(p, "JSONL")
    p.add_argument("--model", help="continue from this checkpoint or GPT-2 directory (default: a new model)")
    _size_args(p, "sft", 3e-3, 16)
    p.add_argument("--n-layer", type=positive_int, default=3, help="transformer blocks of a new model (default 3)")
    p.add_argument("--n-head", type=positive_int, default=4, help="attention heads (default 4)")
    p.add_argument("--n-embd", type=positive_int, default=96, help="channels (default 96)")
    p.add_argument("--block-size", type=_number(int, 2), default=None,
                   help="deprecated: the old name of --max-length, a new model's context (default: --max-length)")
    p.add_argument("--prompt", action="append", help="a question to answer greedily at the end (repeatable; default: "
                                                     "none, the notes' three for the toy corpus)")
    _run_args(p, "runs/sft")
    p.set_defaults(func=_sft)

    p = sub.add_parser("dpo", help="DPO on a preference file: --data FILE.jsonl --model CKPT",
                       description="Direct Preference Optimization of --model against --ref (default: a frozen "
                                   "copy of --model) on {\"prompt\", \"chosen\", \"rejected\"} JSONL lines.")
    p.add_argument("--data", required=True, help="JSONL file of {\"prompt\", \"chosen\", \"rejected\"} lines, as "
                                                 "strings or as TRL's one-turn conversations")
    p.add_argument("--model", help="the starting policy: a checkpoint (e.g. runs/sft/final) or GPT-2 directory "
                                   "(no default: required)")
    p.add_argument("--ref", help="π_ref (default: the same weights as --model, frozen)")
    _eval_args(p, "preference")
    p.add_argument("--beta", type=positive_float, default=0.1, help="β of the DPO loss (default 0.1)")
    p.add_argument("--loss-type", choices=LOSS_TYPES, default="sigmoid", help="the loss (default sigmoid: the notes' DPO)")
    p.add_argument("--label-smoothing", type=_number(float, 0, high=1), default=0.0, metavar="ε",
                   help="conservative DPO: the probability that a label is flipped, in [0, 1] (default 0: plain DPO)")
    _size_args(p, "dpo", 5e-5, 8)
    p.add_argument("--prompt", action="append", help="a question to answer greedily at the end (repeatable; "
                                                     "default: none)")
    _run_args(p, "runs/dpo")
    p.set_defaults(func=_dpo)

    p = sub.add_parser("reward", help="a Bradley–Terry reward model on a preference file",
                       description="Fit r_φ (the --model's body with a scalar head) to preference pairs by "
                                   "maximum likelihood: the reward model RLHF trains first and DPO skips.")
    p.add_argument("--data", required=True, help="JSONL file of {\"prompt\", \"chosen\", \"rejected\"} lines, as "
                                                 "strings or as TRL's one-turn conversations")
    p.add_argument("--model", help="the body to start from, e.g. runs/sft/final (no default: required)")
    _eval_args(p, "preference")
    _size_args(p, "reward", 3e-4, 8)
    _run_args(p, "runs/reward")
    p.set_defaults(func=_reward)

    p = sub.add_parser("evaluate", help="a policy against its reference on a preference file",
                       description="Implicit-reward accuracy and margin, the policy's own accuracy, the DPO loss, "
                                   "KL(π_θ ‖ π_ref) sampled, a reward model's accuracy, greedy answers. On the toy "
                                   "data's own pairs (lines that carry their \"family\"), also the gold judge's "
                                   "shares: which rule the policy's and the reference's sampled and greedy answers "
                                   "follow, y_w's or y_l's. A file of one's own has no rule to judge its answers by, "
                                   "so there is no judge option: compare the answers yourself (--prompt).")
    p.add_argument("--model", required=True, help="π_θ: a checkpoint or GPT-2 directory")
    p.add_argument("--ref", required=True, help="π_ref: the model DPO started from")
    p.add_argument("--data", required=True, help="preference JSONL file to measure on")
    p.add_argument("--reward-model", help="a reward-model checkpoint to score the same pairs (default: none)")
    p.add_argument("--beta", type=positive_float, default=0.1, help="β of the implicit reward (default 0.1)")
    p.add_argument("--kl-samples", type=positive_int, default=4,
                   help="responses sampled per prompt for the KL (default 4)")
    p.add_argument("--prompt", action="append", help="a question to answer greedily (repeatable; default: none)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the sampling (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the numbers to PATH (default: none; evaluate writes "
                                                  "nothing else)")
    _data_args(p)
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
    p.add_argument("--seed", type=non_negative_int, default=None, help="random seed: π_ref, r and the pairs (default 0)")
    p.add_argument("--seeds", default=None, help="run every seed of a range (0-4) or list (0,2,5) and print a "
                                                 "table of their results with the spread (default: one seed, --seed)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="also train with a wrong β and without the reference, to show they miss π* (default: on)")
    p.add_argument("--figure", default="runs/closed_form/closed_form.png",
                   help="where to write the figure (default runs/closed_form/closed_form.png; '' for none; with --seeds, "
                        "the first seed's; needs matplotlib)")
    p.add_argument("--json", metavar="PATH", help="write the numbers to PATH (default: none)")
    p.add_argument("--quiet", action="store_true", help="print only the summary, not the table as it trains")
    _allow_large(p)
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
    p.add_argument("--variance-seeds", type=positive_int, default=5,
                   help="sampling seeds for each variance measurement, to show its spread (default 5)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="training seed (default 0)")
    p.add_argument("--seeds", default=None, help="run every seed of a range (0-4) or list (0,2,5) and print a "
                                                 "table of their results with the spread (default: one seed, --seed)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH (default: none)")
    p.add_argument("--output-dir", default="runs/gridworld", help="where the figure goes (default runs/gridworld; "
                                                                 "'' for none; with --seeds, the first seed's)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    _allow_large(p)
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
    p.add_argument("--seed", type=non_negative_int, default=None, help="random seed: the problem, pairs, samples "
                                                                       "(default 0)")
    p.add_argument("--seeds", default=None, help="run every seed of a range (0-4) or list (0,2,5) and print a "
                                                 "table of their results with the spread (default: one seed, --seed)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH (default: none)")
    p.add_argument("--output-dir", default="runs/rlhf", help="where the figures go (default runs/rlhf; '' for none; "
                                                            "with --seeds, the first seed's)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    _allow_large(p)
    p.set_defaults(func=_rlhf)

    p = sub.add_parser("exact-gpt", help="DPO's failure modes measured exactly: the tiny GPT on an enumerated set",
                       description="The project's GPT scores every response of a small set exactly (responses of up "
                                   "to 3 tokens and an end token), so π_θ, π*, KL and J are exact. Five questions, "
                                   "each over --seeds: likelihood displacement and where the probability goes; "
                                   "on-policy, off-policy and low-coverage pairs; online rounds against offline "
                                   "DPO; the per-token-averaged loss's length-tilted optimum; over-optimization "
                                   "across β and learning rates. About a minute on 2 cores.")
    p.add_argument("--seeds", default="0-2", help="seeds, a range (0-2) or a list (0,1,2) (default 0-2)")
    p.add_argument("--quick", action="store_true", help="every measurement on a few steps: seconds, for a first look")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH (default: none)")
    p.add_argument("--output-dir", default="runs/exact_gpt", help="where the figure goes (default runs/exact_gpt; '' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    _allow_large(p)
    p.set_defaults(func=_exact_gpt)
    p = sub.add_parser("successors", help="SimPO, ORPO, KTO, RLOO, GRPO and Dr. GRPO beside DPO and IPO, against π*",
                       description="On an enumerated problem (responses of 1 to 4 tokens) every method trains from "
                                   "π_ref on the same budget: preference pairs (DPO, IPO, SimPO, ORPO), the same pairs "
                                   "split into desirable and undesirable examples (KTO), or as many responses scored "
                                   "by the true reward (RLOO, GRPO, Dr. GRPO). Prints, per method, KL(π*_β‖π_θ), "
                                   "J(π*_β) − J(π_θ) and the distance to its own derived optimum, over the seeds, "
                                   "for a table of logits and, with the same data budget, for the project's GPT "
                                   "scored exactly on the same responses (--policy). Under 2 minutes on 2 cores.")
    p.add_argument("--seeds", default="0-2", help="a range (0-2, the default) or a list (0,3,5) of seeds")
    p.add_argument("--beta", type=positive_float, default=None, help="β of the RLHF objective (default 0.5)")
    p.add_argument("--pairs", type=positive_int, default=None,
                   help="preference pairs; KTO gets twice as many examples, RL as many reward queries (default 100,000)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="full-batch steps of the pair and KTO losses (default 1000; the GPT's run 300)")
    p.add_argument("--samples", type=_number(int, 2), default=None,
                   help="responses sampled per prompt per RL step (default 16; the GPT's run 128)")
    p.add_argument("--policy", choices=("table", "gpt", "both"), default="both",
                   help="π_θ: a table of logits (its JSON keys dpo … dr_grpo), the GPT (JSON key gpt, with the "
                        "table on the GPT's problem under gpt.table; its own defaults: 300 steps, 128 samples), "
                        "or both (the default)")
    p.add_argument("--quick", action="store_true", help="every method on little data and few steps: seconds")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH (default: none)")
    p.add_argument("--output-dir", default="runs/successors",
                   help="where the figure goes (default runs/successors; '' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    _allow_large(p)
    p.set_defaults(func=_successors)

    p = sub.add_parser("figures", help="draw every figure the README shows into figures/, from seeds",
                       description=f"Run each command that makes a figure ({', '.join(n for n, _ in FIGURES)}) "
                                   f"with its defaults and seed 0 ({', '.join(OVER_SEEDS)}: seeds 0-2, each drawn), "
                                   "and draw its figures into --output-dir. "
                                   "The only command that writes into figures/. Several minutes on 2 cores; ppo-gpt's "
                                   "three seeds alone take about 3 minutes of CPU.")
    p.add_argument("--output-dir", default=None,
                   help=f"where the figures go (default figures; with --quick {QUICK_FIGURES}, never figures/)")
    p.add_argument("--only", nargs="+", choices=[name for name, _ in FIGURES],
                   help="draw only these groups (default: every one)")
    p.add_argument("--quick", action="store_true", help="small runs: seconds, for checking, not the README's figures")
    p.set_defaults(func=_figures)

    p = sub.add_parser("ppo-gpt", help="RLHF by PPO on the tiny GPT with a learned reward model, beside DPO",
                       description="SFT of the GPT on the toy data (π_ref), a Bradley–Terry reward model r_φ, then "
                                   "PPO (K samples per prompt, a per-token KL penalty to π_ref, a leave-one-out "
                                   "baseline, the clipped surrogate) and DPO from the same π_ref with the same β. "
                                   "Prints E[r_φ], KL(π_θ‖π_ref) and the gold judge's shares of sampled responses "
                                   "along both runs, the budgets, whether r_φ rose while the judge fell (reward "
                                   "hacking), held-out accuracies and greedy answers; draws the curves. About a "
                                   "minute of CPU per seed.")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps: seconds, not minutes")
    p.add_argument("--sft-checkpoint", default=None, help="start from this SFT checkpoint instead of training one "
                                                          "(e.g. runs/demo/sft/best; default: train one)")
    p.add_argument("--beta", type=positive_float, default=None,
                   help=f"β of PPO's KL penalty and of DPO (default {PPO_DEFAULTS['beta']})")
    p.add_argument("--ppo-steps", type=positive_int, default=None,
                   help=f"PPO iterations, each a batch of samples (default {PPO_DEFAULTS['ppo_steps']})")
    p.add_argument("--dpo-steps", type=positive_int, default=None,
                   help=f"DPO steps, each a batch of pairs (default {PPO_DEFAULTS['dpo_steps']})")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="random seed: data split, models, samples (default 0)")
    p.add_argument("--seeds", default=None, help="run every seed of a range (0-2) or list (0,2,5), each under "
                                                 "OUTPUT_DIR/seed-N, and print a table of their results with the "
                                                 "spread (about 2 minutes of CPU per seed; default: one seed, --seed)")
    p.add_argument("--output-dir", default="runs/ppo_gpt",
                   help="runs, checkpoints and the figure (default runs/ppo_gpt)")
    p.add_argument("--figure", dest="draw_figure", action=argparse.BooleanOptionalAction, default=True,
                   help="draw reward and KL against step into OUTPUT_DIR/figures (needs matplotlib; default: on)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier ppo-gpt run in --output-dir")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH (default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress indicators")
    p.set_defaults(func=_ppo_gpt)

    p = sub.add_parser("generate", help="answers from a checkpoint: greedy, sampled or beam search",
                       description="Load a checkpoint (or GPT-2 directory) with its tokenizer and answer each "
                                   "prompt, stopping at the end token.")
    p.add_argument("model", help="a checkpoint directory, e.g. runs/sft/final")
    p.add_argument("prompts", nargs="+", help="questions, e.g. 'What is 2+2?'")
    p.add_argument("--max-new-tokens", type=positive_int, default=200, help="at most this many tokens (default 200)")
    p.add_argument("--temperature", type=_number(float, 0), default=0.0, help="0 (default): greedy; >0: sample")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="sample among the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=_number(float, 0, low_open=True, high=1), default=None,
                   help="sample among the most likely tokens holding this much probability (default: all)")
    p.add_argument("--num-beams", type=positive_int, default=1,
                   help="beam search with this many beams (default 1: no beam search)")
    p.add_argument("--prompt-template", type=_prompt_template, default=None, metavar="TEXT",
                   help="write the prompts in this template, {prompt} where the prompt goes (default: the one the "
                        "model was trained with)")
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

    p = sub.add_parser("diagnose", help="read a run's logged metrics (ours or TRL's) and say what is happening",
                       description="Read the metrics a DPO run logged — a run directory of ours (metrics.jsonl), a "
                                   "Hugging Face Trainer's trainer_state.json (as TRL writes it), or a JSONL or CSV "
                                   "of rows with the standard names — and print the run at a glance, its curves, "
                                   "and findings: no_learning, reference_mismatch, chosen_logps_falling, "
                                   "over_optimization, loss_spike, non_finite, still_improving, too_few_steps; each "
                                   "with its evidence, what it usually means, what to try and where to read more.")
    p.add_argument("path", help="a run directory, a trainer_state.json (or the directory holding it), a .jsonl or .csv")
    p.add_argument("--json", metavar="PATH", help="write the report (findings and summary) to PATH (default: none)")
    p.add_argument("--figure", metavar="PATH",
                   help="draw the metric curves with the findings marked (needs matplotlib; default: none)")
    p.add_argument("--quiet", action="store_true", help="print one line per finding, nothing else")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser("bench", help="benchmarks (timings, not tests)",
                       description="Time the heavy paths on this machine and print a report.")
    p.add_argument("what", choices=["closed-form", "model", "dpo", "generate", "torch", "all", "table"],
                   help="closed-form: exact π*, log Z, J for V=8, L=6; model: the GPT's training step against "
                        "NumPy's own matmul on the same shapes, and where its time goes; dpo: a DPO step against "
                        "an SFT step; generate: tokens/s with and without the key/value cache; torch: the toy "
                        "step and a DPO step against PyTorch eager and torch.compile (needs torch and "
                        "transformers); all: every one, and GPT-2 small's step; table: the README's performance "
                        "table from the JSON of `bench all --json`")
    p.add_argument("report", nargs="?", help="table only: the JSON file `bench all --json` wrote (default: none)")
    p.add_argument("--json", metavar="PATH", help="write the report (and the machine it ran on) to PATH (default: none)")
    p.set_defaults(func=_bench)
    _thread_args(parser)
    return parser


# ---- threads, TRL's spellings, and main ---------------------------------------------------------

def thread_setting(requested, environ=None):
    """``(threads, where it came from)``: ``--threads`` when given; else the user's
    OPENBLAS_NUM_THREADS or OMP_NUM_THREADS, which the BLAS read when NumPy loaded (threads None when
    it is not a number); else ``DEFAULT_THREADS``."""
    if requested is not None:
        return requested, "--threads"
    environ = os.environ if environ is None else environ
    for name in THREAD_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return (int(value) if value.isdigit() else None), f"{name}={value}"
    return DEFAULT_THREADS, "the default"


@contextlib.contextmanager
def blas_threads(requested):
    """Run NumPy's BLAS on ``thread_setting``'s threads while the block runs, through threadpoolctl
    (imported here: the package itself needs only NumPy). Yields ``{"threads", "from", "line"}``, the
    line a command prints first. A variable the user set is honoured as the BLAS read it; without
    threadpoolctl (or a BLAS it can control) the BLAS keeps its own count, said in the line, and an
    explicit ``--threads`` is refused rather than ignored."""
    threads, source = thread_setting(requested)
    if source.split("=")[0] in THREAD_VARIABLES:
        count = plural(threads, "BLAS thread") if threads else "BLAS threads as the BLAS reads"
        yield {"threads": threads, "from": source, "line": f"threads: {count} ({source}, set before starting)"}
        return
    try:
        import threadpoolctl
        controllable = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        threadpoolctl, controllable = None, []
    if not controllable:
        why = ("threadpoolctl is not installed" if threadpoolctl is None else
               "threadpoolctl finds no BLAS it can control")
        if requested is not None:
            raise CommandError(f"--threads: {why}, so the BLAS's threads cannot be changed once NumPy has loaded; "
                               f"pip install threadpoolctl, or start with OPENBLAS_NUM_THREADS={requested}")
        yield {"threads": None, "from": why, "line": f"threads: the BLAS's own count ({why}; start with "
                                                     f"OPENBLAS_NUM_THREADS={DEFAULT_THREADS} to set it)"}
        return
    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        note = "; --threads N to change" if source == "the default" else ""
        yield {"threads": threads, "from": source,
               "line": f"threads: {plural(threads, 'BLAS thread')} ({source}{note})"}


def _trl_spellings(argv, parser):
    """``argv`` with TRL's option names (``TRL_ALIASES``) and underscores for hyphens written as this
    command's options; a value that follows an option is left as it is."""
    command = next((a for a in argv if not a.startswith("-")), None)
    sub = _subparsers(parser).get(command)
    if sub is None:
        return list(argv)
    known, out, value_next = sub._option_string_actions, [], False
    for arg in argv:
        if value_next or not arg.startswith("--"):
            out.append(arg)
            value_next = False
            continue
        name, eq, value = arg.partition("=")
        if name not in known:
            for candidate in (TRL_ALIASES.get("--" + name[2:].replace("-", "_")), "--" + name[2:].replace("_", "-")):
                if candidate in known:
                    name = candidate
                    break
        out.append(name + eq + value)
        action = known.get(name)
        value_next = action is not None and not eq and action.nargs is None
    return out


def _unknown_options(parser, command, unknown):
    """Exit with the command's usage and, for an option close to a known one, "did you mean"."""
    sub = _subparsers(parser)[command]
    names = [n for n in sub._option_string_actions if n.startswith("--")]
    names += [trl for trl, ours in TRL_ALIASES.items() if ours in names]
    hints = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=")[0], names, n=1, cutoff=0.6) if arg.startswith("-") else []
        if close:
            ours = TRL_ALIASES.get(close[0])
            hints.append(f"{arg.split('=')[0]}: did you mean {close[0]}" + (f" ({ours})?" if ours else "?"))
    sub.error(f"unrecognized arguments: {' '.join(unknown)}" + ("; " + "; ".join(hints) if hints else ""))


#: a command's own checks of its options, before its paths (a default that depends on another option)
OPTION_CHECKS = {"dpo": _check_dpo_options, "figures": _figures_output}


def check_before_start(args):
    """Everything a command was given, checked before its first step: options that cannot apply
    together, file inputs, writable outputs apart from every input, and the estimated cost."""
    seeds = getattr(args, "seeds", None)
    args.seed_list = None if seeds is None else _seed_list(seeds, args.option_names["seeds"])
    refuse_inapplicable(args)
    if args.command in OPTION_CHECKS:
        OPTION_CHECKS[args.command](args)
    check_inputs(args)
    check_paths_apart(args)
    check_outputs(args)
    if args.command in ESTIMATES:
        what, seconds, memory = ESTIMATES[args.command](args)
        cost.check(what, memory=memory, seconds=seconds, allow_large=args.allow_large)


def _parse(argv):
    """``(args, argv as parsed)``: TRL's spellings read as ours, and each option's name as the user typed it
    kept for the messages (``args.option_names``), with the set of options given (``args.given``)."""
    parser = build_parser()
    parsed = _trl_spellings(argv, parser)
    typed = {ours: theirs for ours, theirs in zip(parsed, argv) if ours != theirs and ours.startswith("--")}
    typed = {o.split("=")[0]: t.split("=")[0] for o, t in typed.items()}
    for sub in _subparsers(parser).values():
        sub.typed = typed
    args, unknown = parser.parse_known_args(parsed)
    if unknown:
        _unknown_options(parser, args.command, unknown)
    args.option_names = option_names(parser, args.command, typed)
    args.given = given_options(build_parser(), parsed)
    return args, parsed


def _interrupted(args, argv, stop, started):
    """What is true after Ctrl-C: where a command can resume, how; where it cannot (demo, ppo-gpt),
    which stages finished and where they are, and that --overwrite would replace them."""
    lines = [f"\ninterrupted" + (f": {stop}" if str(stop) else "")]
    if isinstance(stop, TrainingInterrupted) and "resume" in args.option_names:
        if stop.finished:
            lines[0] += ". Nothing is left to resume: the run finished"
        else:
            again = " ".join(a for a in argv if a not in ("--resume", "--overwrite", "--overwrite_output_dir"))
            lines[0] += f". Continue with: python -m dpo_np {again} {args.option_names['resume']}"
    elif args.command in STAGES and getattr(args, "output_dir", None):
        lines.append(f"{args.command} has no --resume; the stages of this run:")
        lines += _stage_report(args, since=started)
        lines.append(f"running it again needs a new {args.option_names['output_dir']}, or "
                     f"{args.option_names['overwrite']}, which replaces every stage above, finished ones too"
                     + (f" (keep the SFT stage with {args.option_names['sft_checkpoint']} "
                        f"{os.path.join(args.output_dir, 'sft', FINAL_DIR)})"
                        if args.command == "ppo-gpt" and not args.sft_checkpoint else ""))
    print("\n".join(lines), file=sys.stderr)
    return 130


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, parsed = _parse(argv)
    started = time.time()
    try:
        check_before_start(args)
        with blas_threads(args.threads) as threads:
            print(threads["line"], file=sys.stderr)
            args.blas_threads = {k: threads[k] for k in ("threads", "from")}
            return args.func(args)
    except KeyboardInterrupt as stop:
        return _interrupted(args, argv, stop, started)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError, MemoryError) as err:
        if os.environ.get("DPO_NP_DEBUG"):
            raise
        message = str(err) if isinstance(err, CommandError) else in_users_words(str(err), args.option_names)
        print(f"error: {message or type(err).__name__}", file=sys.stderr)
        return 2
