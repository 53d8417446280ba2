"""The ``inertia`` command line: ``inertia demo``, ``inertia bench``, ``inertia doctor``, ``inertia --version``.

Installed as the ``inertia`` console script and run by ``python -m inertia``. Exit codes:
0 success, 1 the command failed (for example an optional dependency is missing), 2 bad
usage (argparse's convention), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from inertia import __version__, demo, plots
from inertia.demo import BACKENDS, DEFAULT_BACKEND, DEFAULT_EPOCHS, DEFAULT_FACE, DEFAULT_SEED, FACES

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _ema_momentum(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``inertia`` command, with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="inertia",
        description="inertia: SGD with momentum, number for number like Keras 3, "
        "on NumPy, PyTorch, JAX and TensorFlow.",
    )
    parser.add_argument("--version", action="version", version=f"inertia {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    demo = commands.add_parser(
        "demo",
        help="train a small MLP on scikit-learn's digits with one of inertia's optimizers",
        description="Train a 64-64-10 MLP on scikit-learn's bundled digits (no download) with "
        "inertia's SGD: Nesterov momentum, a cosine learning-rate decay, weight decay on the "
        "kernels and a moving average of the weights, each as close as the chosen face allows "
        "(the header prints every setting, and what a face lacks). Prints the training loss and "
        "the test accuracy reached; --compare also trains with the system the face reproduces "
        "and compares the two, step by step. Needs scikit-learn: pip install 'inertia[demo]'.",
    )
    demo.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=DEFAULT_BACKEND,
        help=f"the array library of the model, its weights and gradients: numpy (autograd), torch "
        f"(torch.autograd), jax (jax.grad) or tensorflow (tf.GradientTape; pip install "
        f"'inertia[demo,tensorflow]') (default: {DEFAULT_BACKEND})",
    )
    demo.add_argument(
        "--face",
        choices=list(FACES),
        default=DEFAULT_FACE,
        help="the optimizer: keras (inertia.SGD), torch (inertia.torch.SGD; --backend torch only), "
        f"legacy (inertia.legacy.SGD), mlx (inertia.mlx.SGD) (default: {DEFAULT_FACE})",
    )
    demo.add_argument(
        "--compare",
        action="store_true",
        help="also train from the same initial weights on the same batches with the face's reference "
        "system (keras.optimizers.SGD, torch.optim.SGD, tf_keras.optimizers.legacy.SGD or "
        "mlx.optimizers.SGD), with the same options, and print after each epoch the largest "
        "difference of the weights and of the losses, then a verdict",
    )
    demo.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        metavar="N",
        help=f"passes over the training set (default: {DEFAULT_EPOCHS})",
    )
    demo.add_argument(
        "--seed",
        type=_non_negative_int,
        default=DEFAULT_SEED,
        metavar="S",
        help=f"seed of the split, the initial weights and the shuffling (default: {DEFAULT_SEED})",
    )
    demo.add_argument(
        "--ema-momentum",
        type=_ema_momentum,
        default=None,
        metavar="M",
        help="momentum of the moving average of the weights, in [0, 1) (default: derived from the "
        "run's length, so that it spans about its last tenth; the header prints the value)",
    )
    demo.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="also write a PNG of the loss and learning rate per step and the accuracy per epoch, "
        "with the reference system's loss and learning rate drawn over them under --compare "
        "(needs matplotlib: pip install 'inertia[plot]')",
    )
    demo.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no header and no progress bar: print only the final results",
    )
    demo.set_defaults(handler=_demo, parser=demo)

    bench = commands.add_parser(
        "bench",
        help="time inertia's SGD step beside torch.optim, optax, Keras, tf_keras and MLX",
        description="Time one SGD step of every face of inertia and of the installed peers on "
        "three workloads for plain momentum, Nesterov and everything on, interleaved in rounds "
        "beside a bandwidth probe. Prints Markdown; --json writes every figure. A default run "
        "takes about 20 minutes on 2 cores with every peer installed (torch-compile compiles for "
        "about 25 s a configuration; the TensorFlow contenders, tracing up to a minute on W3, "
        "take about 10 of the 20); --workloads W3 --configs plain --scale 0.1 takes seconds. --configs distributed runs "
        "inertia.torch.SGD, inertia.SGD and torch.optim.SGD under 2-rank DDP and FSDP2 (gloo on "
        "127.0.0.1) instead, or beside the others when listed with them (about 4 minutes).",
        epilog=_bench_choices(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--workloads", default="W1,W2,W3", help="comma-separated subset of W1,W2,W3")
    bench.add_argument("--configs", default="plain,nesterov,everything",
                       help="comma-separated configurations; distributed: the 2-rank DDP and FSDP2 benchmark (not in the default)")
    bench.add_argument("--contenders", default=None, help="comma-separated contenders (default: all installed; torch-compile compiles for about 25 s a configuration)")
    bench.add_argument("--rounds", type=_positive_int, default=7, metavar="N", help="timing rounds (default: 7)")
    bench.add_argument("--scale", type=float, default=1.0, help="shrink every workload's first dimension (quick checks)")
    bench.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON")
    bench.add_argument("--markdown", default=None, metavar="PATH", help="also write the Markdown tables")
    bench.add_argument("--plot", default=None, metavar="FILE",
                       help="also write a PNG bar chart of the step times (needs matplotlib: pip install 'inertia[plot]')")
    bench.set_defaults(handler=_bench)

    doctor = commands.add_parser(
        "doctor",
        help="show what inertia found: its kernels, the compiler, the cache, the libraries",
        description="Show whether inertia's compiled kernels load (and why not, with the fix), the "
        "C compiler, the kernel cache and whether it is private, the INERTIA_* settings, and the "
        "version of every optional library.",
    )
    doctor.add_argument("--strict", action="store_true", help="exit 1 when a kernel is unavailable")
    doctor.set_defaults(handler=_doctor)
    return parser


def _doctor(args: argparse.Namespace) -> int:
    from inertia import doctor

    return doctor.main(strict=args.strict)


def _bench_choices() -> str:
    from inertia import bench as benchmark

    return benchmark.describe_choices()


def _bench(args: argparse.Namespace) -> int:
    from inertia import bench as benchmark

    split = lambda text: [item.strip() for item in text.split(",") if item.strip()]
    errors = []
    for option, given, known in (
        ("--workloads", args.workloads, list(benchmark.WORKLOADS)),
        ("--configs", args.configs, list(benchmark.CONFIGS) + ["distributed"]),
        ("--contenders", args.contenders or "", list(benchmark.ALL_CONTENDERS)),
    ):
        errors += [f"{option}: unknown name {name!r} (choose from {', '.join(known)})"
                   for name in split(given) if name not in known]
    if not 0 < args.scale <= 1:
        errors.append(f"--scale: must be in (0, 1], got {args.scale}")
    configs = split(args.configs)
    distributed = "distributed" in configs
    configs = [config for config in configs if config != "distributed"]
    if args.plot:
        try:
            plots.pyplot()
        except plots.MissingPlotLibraryError as error:
            errors.append(f"--plot: {error}")
        if distributed and not configs:
            errors.append("--plot: draws the single-process configurations, and --configs names none")
    if errors:
        for error in errors:
            print(f"inertia bench: error: {error}", file=sys.stderr)
        return 2
    log = lambda text: print(text, file=sys.stderr, flush=True)
    if configs or not distributed:
        report = benchmark.run(
            workloads=split(args.workloads), configs=configs,
            contenders=split(args.contenders) if args.contenders else None, rounds=args.rounds, scale=args.scale,
            log=log,
        )
    else:  # --configs distributed alone: no single-process workload runs
        report = {"machine": benchmark._machine(), "settings": {"rounds": args.rounds, "scale": args.scale},
                  "bandwidth_gbps": {}, "results": [], "not_run": []}
    if distributed:
        from inertia import bench_distributed

        report["distributed"] = bench_distributed.run(rounds=args.rounds, scale=args.scale, log=log)
    text = benchmark.markdown(report)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text + "\n")
    if args.plot:
        plots.plot_bench(report, args.plot)
    return 0


def _demo(args: argparse.Namespace) -> int:
    problems = demo.option_problems(args.backend, args.face, args.ema_momentum)
    if problems:  # a usage error (exit 2), before anything is imported or trained
        args.parser.error("; ".join(problem.for_command_line() for problem in problems))
    missing = demo.missing_libraries(args.backend, args.face, args.compare)
    try:
        if missing:
            raise demo.MissingDependencyError("; ".join(missing))
        if args.plot:
            plots.pyplot()  # a missing matplotlib stops the command before it trains
        result = demo.run(
            epochs=args.epochs, seed=args.seed, quiet=args.quiet, ema_momentum=args.ema_momentum,
            backend=args.backend, face=args.face, compare=args.compare,
        )
    except (demo.MissingDependencyError, plots.MissingPlotLibraryError) as error:
        print(f"inertia demo: error: {error}", file=sys.stderr)
        return 1
    if args.quiet:
        # run() printed nothing; the results are still the point of the command.
        print(demo.format_summary(result))
    if args.plot:
        print(f"wrote {plots.plot_demo(result, args.plot)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``inertia`` command with ``argv`` (``sys.argv[1:]`` when ``None``); return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        print("inertia: error: a command is required (try `inertia demo`)", file=sys.stderr)
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("inertia: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`inertia demo | head`); Python would otherwise complain
        # again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
