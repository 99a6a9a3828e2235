"""The command line: ``python -m dpo_np <command>``, a thin layer over public functions.

Each command imports its module only when it runs, so ``--help`` is instant and
``import dpo_np`` stays light.
"""

import argparse
import importlib.util
import sys


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _closed_form(args):
    from .experiments.closed_form import plot_closed_form, run_closed_form

    result = run_closed_form(vocab_size=args.vocab_size, length=args.length, n_prompts=args.prompts,
                             beta=args.beta, pairs=args.pairs, steps=args.steps, lr=args.lr, seed=args.seed,
                             progress=not args.quiet)
    print(f"final KL(π*‖π_θ) = {result['kl'][-1]:.3e}, J(π*) − J(π_θ) = "
          f"{result['optimal_objective'] - result['objective'][-1]:.3e}  ({result['n_pairs']:,} pairs, "
          f"{result['config']['steps']} steps; data {result['seconds']['data']:.2f} s, "
          f"training {result['seconds']['train']:.2f} s)")
    compare = []
    if args.compare:
        for label, kwargs in (("β_train = 4β", dict(train_beta=4 * args.beta)),
                              ("reference-free", dict(reference_free=True))):
            other = run_closed_form(vocab_size=args.vocab_size, length=args.length, n_prompts=args.prompts,
                                    beta=args.beta, pairs=args.pairs, steps=args.steps, lr=args.lr,
                                    seed=args.seed, progress=False, **kwargs)
            compare.append((label, other))
        print("\nwhat breaks it (same data and steps):")
        print(f"  {'variant':<16} {'KL(π*‖π_θ)':>12} {'J(π_θ)':>10} {'J(π*)':>10}")
        for label, res in [("DPO at β", result)] + compare:
            print(f"  {label:<16} {res['kl'][-1]:>12.3e} {res['objective'][-1]:>10.4f} {res['optimal_objective']:>10.4f}")
    _figure(plot_closed_form, result, args.figure)
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
    from .experiments.gridworld import plot_gridworld, print_report, run_gridworld
    from .files import write_json_atomic

    result = run_gridworld(gamma=args.gamma, iterations=args.iterations, episodes=args.episodes,
                           horizon=args.horizon, lr=args.lr, seed=args.seed,
                           variance_episodes=args.variance_episodes, progress=not args.quiet)
    print_report(result)
    print(f"({result['seconds']:.1f} s)")
    if args.json:
        write_json_atomic(args.json, result)
        print(f"numbers written to {args.json}")
    _figure(plot_gridworld, result, args.output_dir and f"{args.output_dir}/gridworld.png")
    return 0


def _rlhf(args):
    from .experiments.rlhf_toy import QUICK, plot_rlhf, print_rlhf_report, run_rlhf
    from .files import write_json_atomic

    settings = dict(QUICK) if args.quick else {}
    settings.update({k: v for k, v in (("beta", args.beta), ("steps", args.steps), ("samples", args.samples),
                                       ("pairs", args.pairs)) if v is not None})
    result = run_rlhf(seed=args.seed, progress=not args.quiet, **settings)
    print_rlhf_report(result)
    print("final_kl: " + ", ".join(f"{k} {v:.6e}" for k, v in result["final_kl"].items())
          + f"  ({result['seconds']['total']:.1f} s)")
    if args.json:
        write_json_atomic(args.json, result)
        print(f"numbers written to {args.json}")
    if args.output_dir and importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figures: pip install "dpo-np[plot]"')
    elif args.output_dir:
        for path in plot_rlhf(result, args.output_dir):
            print(f"figure written to {path}")
    return 0


def _demo(args):
    from .experiments.demo import run_demo

    overrides = {k: v for k, v in (("sft_steps", args.sft_steps), ("dpo_steps", args.dpo_steps),
                                   ("beta", args.beta)) if v is not None}
    run_demo(output_dir=args.output_dir, figures_dir=args.figures_dir or None, quick=args.quick,
             seed=args.seed, show_progress=not args.quiet, **overrides)
    return 0


def _sft(args):
    from .experiments.runs import run_sft

    run_sft(output_dir=args.output_dir, max_steps=args.steps, learning_rate=args.lr,
            batch_size=args.batch_size, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
            block_size=args.block_size, seed=args.seed, show_progress=not args.quiet)
    return 0


def _generate(args):
    from .checkpoint import load_checkpoint
    from .generate import greedy_answer

    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["tokenizer"] is None:
        raise ValueError(f"checkpoint {args.checkpoint} holds no tokenizer.json: cannot encode a prompt")
    for prompt in args.prompts:
        print(f"Q: {prompt}\nA: {greedy_answer(ckpt['model'], ckpt['tokenizer'], prompt)}")
    return 0


def _bench(args):
    if args.what == "closed-form":
        from .bench.closed_form import bench_closed_form
        bench_closed_form()
    elif args.what == "model":
        from .bench.model import bench_model
        bench_model()
    elif args.what == "dpo":
        from .bench.dpo import bench_dpo
        bench_dpo()
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m dpo_np",
                                     description="Direct Preference Optimization from first principles, in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("demo", help="the whole pipeline on toy data: SFT → π_ref → DPO, and a reward model",
                       description="Supervised fine-tuning of the NumPy GPT on the embedded toy corpus, a frozen "
                                   "reference snapshot, DPO on the toy preference pairs and a Bradley–Terry "
                                   "reward model; then a before/after table on held-out pairs and figures of "
                                   "the metric curves. A few minutes on 2 cores.")
    p.add_argument("--output-dir", default="runs/demo", help="runs, metrics and checkpoints (default runs/demo)")
    p.add_argument("--figures-dir", default="figures", help="where figures go ('' for none; needs matplotlib)")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps: seconds, not minutes")
    p.add_argument("--sft-steps", type=_positive_int, default=None, help="SFT steps (default 1500)")
    p.add_argument("--dpo-steps", type=_positive_int, default=None, help="DPO steps (default 80)")
    p.add_argument("--beta", type=_positive_float, default=None, help="β of the DPO loss (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress indicators")
    p.set_defaults(func=_demo)

    p = sub.add_parser("closed-form", help="DPO on sampled preferences recovers the exact RLHF optimum π*",
                       description="Enumerate every response of a toy vocabulary, sample Bradley–Terry preference "
                                   "pairs under a known reward, train a tabular policy with the DPO loss and "
                                   "watch KL(π*‖π_θ) fall to zero.")
    p.add_argument("--vocab-size", type=_positive_int, default=3, help="tokens in the toy vocabulary (default 3)")
    p.add_argument("--length", type=_positive_int, default=3, help="tokens per response (default 3)")
    p.add_argument("--prompts", type=_positive_int, default=4, help="number of prompts x (default 4)")
    p.add_argument("--beta", type=_positive_float, default=0.5, help="β of the KL penalty (default 0.5)")
    p.add_argument("--pairs", type=_positive_int, default=None, help="preference pairs sampled")
    p.add_argument("--steps", type=_positive_int, default=None, help="gradient steps")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="also train with a wrong β and without the reference, to show they miss π*")
    p.add_argument("--figure", default="figures/closed_form.png",
                   help="where to write the figure ('' for none; needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="print only the summary, not the table as it trains")
    p.set_defaults(func=_closed_form)

    p = sub.add_parser("gridworld", help="the notes' cat: value iteration and REINFORCE on a grid",
                       description="The notes' RL set-up as a 5×5 grid (broom −1, bathtub −10 and the episode ends, "
                                   "meat +100): value iteration gives V* and the optimal policy; REINFORCE, with "
                                   "and without a baseline, learns a softmax policy from sampled episodes; the "
                                   "variance of its gradient estimate is measured with and without the baseline.")
    p.add_argument("--gamma", type=float, default=0.9, help="discount γ in [0, 1) (default 0.9)")
    p.add_argument("--iterations", type=_positive_int, default=800, help="REINFORCE steps (default 800)")
    p.add_argument("--episodes", type=_positive_int, default=32, help="episodes sampled per step (default 32)")
    p.add_argument("--horizon", type=_positive_int, default=40, help="moves before an episode is cut (default 40)")
    p.add_argument("--lr", type=_positive_float, default=0.05, help="Adam's peak learning rate (default 0.05)")
    p.add_argument("--variance-episodes", type=_positive_int, default=2000,
                   help="episodes sampled to measure the gradient variance (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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
    p.add_argument("--beta", type=_positive_float, default=None, help="β of the KL penalty (default 0.5)")
    p.add_argument("--steps", type=_positive_int, default=None, help="RL steps, each a batch of samples (default 1000)")
    p.add_argument("--samples", type=_positive_int, default=None,
                   help="responses sampled per prompt per RL step (default 64)")
    p.add_argument("--pairs", type=_positive_int, default=None,
                   help="preference pairs for DPO and the reward model (default 2,000,000)")
    p.add_argument("--quick", action="store_true", help="everything on little data and few steps: seconds")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the measured numbers to PATH")
    p.add_argument("--output-dir", default="runs/rlhf", help="where the figures go ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    p.set_defaults(func=_rlhf)

    p = sub.add_parser("sft", help="supervised fine-tuning of a small GPT on the embedded toy corpus",
                       description="Train the NumPy GPT (hand-written backprop) on the toy prompt/response "
                                   "corpus with the loss on response tokens only, save a checkpoint, and "
                                   "print greedy answers to the notes' three prompts.")
    p.add_argument("--output-dir", default="runs/sft", help="metrics and checkpoints (default runs/sft)")
    p.add_argument("--steps", type=_positive_int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--lr", type=_positive_float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="sequences per step (default 16)")
    p.add_argument("--n-layer", type=_positive_int, default=3, help="transformer blocks (default 3)")
    p.add_argument("--n-head", type=_positive_int, default=4, help="attention heads (default 4)")
    p.add_argument("--n-embd", type=_positive_int, default=96, help="channels (default 96)")
    p.add_argument("--block-size", type=_positive_int, default=160, help="context length (default 160)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress indicator")
    p.set_defaults(func=_sft)

    p = sub.add_parser("generate", help="greedy answers from a saved checkpoint",
                       description="Load a checkpoint (parameters, config, tokenizer) and answer each prompt "
                                   "greedily, stopping at the end token.")
    p.add_argument("checkpoint", help="a checkpoint directory, e.g. runs/sft/final")
    p.add_argument("prompts", nargs="+", help="questions, e.g. 'What is 2+2?'")
    p.set_defaults(func=_generate)

    p = sub.add_parser("bench", help="benchmarks (timings, not tests)",
                       description="Time the heavy paths on this machine and print a report.")
    p.add_argument("what", choices=["closed-form", "model", "dpo"],
                   help="closed-form: exact π*, log Z, J for V=8, L=6; model: the GPT's forward+backward "
                        "against NumPy's own matmul ceiling; dpo: a DPO step against an SFT step")
    p.set_defaults(func=_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:     # bad input: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
