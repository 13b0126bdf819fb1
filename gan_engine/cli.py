"""The `gan-engine` command: train, sample, interpolate, evaluate, info.

A mistake in the input (an unknown option value, a missing or corrupt file, bad data) prints one
`error: ...` line and exits with status 2; an interrupted `train` exits with 130 after writing a checkpoint.
"""
import argparse
import dataclasses
import difflib
import os
import platform
import sys
import time
import warnings

import numpy as np

from . import __version__
from .backends import backend_status, get_backend, threads
from .checkpoint import all_checkpoints, resolve_checkpoint
from .config import DATASET_DEFAULTS, TrainConfig
from .data import DATASETS, FOLDER_IMAGE_SIZE
from .errors import GanEngineError
from .estimate import duration
from .io import atomic_path, write_json
from .metrics import BETTER, format_metric
from .plots import save_image_grid, save_metric_curves
from .presets import PRESETS, with_preset
from .distributed import errors_end_every_rank, launched_world
from .ranks import run_for_rank
from .study import load_plan, parse_assignments, report_study, run_study, saved_plan
from .run import evaluate_checkpoints, generate_from_checkpoint, interpolate_from_checkpoint, save_samples


def _sizes(text):
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 512 or 256,256, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def _threads_option(parser):
    parser.add_argument("--threads", help=f"most threads any CPU op may use [{threads.ENV_VAR} if set, else the "
                                          "cores other processes leave free, measured as it runs]")


def _parser():
    # allow_abbrev=False everywhere: a typo such as --step is an error, not silently --steps.
    p = argparse.ArgumentParser(prog="gan-engine", description="Train GANs on hand-written kernels.",
                                allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"gan-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = TrainConfig()
    t = sub.add_parser("train", allow_abbrev=False, help="train a GAN into a run folder",
                       description="Train a GAN into a run folder. Defaults are shown in brackets.")
    # Train options default to None so that --resume can tell which ones were given.
    t.add_argument("--preset", help=f"a published protocol's options, which the options given override: "
                                    f"{', '.join(PRESETS)}")
    t.add_argument("--dataset", help=f"{', '.join(DATASETS)} [{d.dataset}]; {' and '.join(DATASET_DEFAULTS)} bring "
                                     "their own defaults for the options not given (README)")
    t.add_argument("--data", help="path of the data: for mnist / fashion-mnist an IDX folder or file, or an .npz; "
                                  "for folder a folder of images (PNG, JPEG, ...)")
    t.add_argument("--image-size", type=int, help=f"folder: side of the square images [{FOLDER_IMAGE_SIZE}]")
    t.add_argument("--channels", type=int, help="folder: 1 (grayscale) or 3 (RGB) [auto]")
    t.add_argument("--model", help=f"mlp, dcgan or maxout (the PacGAN paper's 2-D mixture GAN) [{d.model}]")
    t.add_argument("--backend", help=f"numpy, numba, cuda or auto [{d.backend}]")
    t.add_argument("--dtype", help=f"float32 or float64 [{d.dtype}]")
    t.add_argument("--steps", type=int, help=f"total training steps (k D steps + 1 G step each; see --update) "
                                             f"[{d.steps}]")
    t.add_argument("--batch-size", type=int, help=f"samples per batch [{d.batch_size}]")
    t.add_argument("--seed", type=int, help=f"seed of weights, noise and batches [{d.seed}]")
    t.add_argument("--k-disc", type=int, help=f"discriminator steps per generator step [{d.k_disc}]")
    t.add_argument("--loss", help=f"generator loss: non-saturating or minimax [{d.loss}]")
    t.add_argument("--prior", help=f"noise prior: normal or uniform (on [-1, 1]) [{d.prior}]")
    t.add_argument("--z-dim", type=int, help=f"noise dimension [{d.z_dim}]")
    t.add_argument("--hidden", type=_sizes, help="hidden sizes of both G and D, e.g. 512 or 256,256")
    t.add_argument("--g-hidden", type=_sizes, help="hidden sizes of G: mlp layer widths [512], maxout G widths "
                                                   "[400,400,400,400], or dcgan channels from the smallest feature "
                                                   "map up, one per upsampling layer [by image size: 128,64 for 8x8 "
                                                   "and 28x28, 512,256,128,64 for 64x64]")
    t.add_argument("--d-hidden", type=_sizes, help="hidden sizes of D: mlp layer widths [512], maxout units "
                                                   "[200,200,200], or dcgan channels, one per strided convolution "
                                                   "[by image size: 64,128 for 28x28]")
    t.add_argument("--alpha", type=float, help=f"leaky ReLU slope [{d.alpha}]")
    t.add_argument("--init", help="weight initialiser: xavier, he or normal (N(0, 0.02)) [xavier for mlp, normal "
                                  "for dcgan and maxout]")
    t.add_argument("--optimizer", help=f"adam or sgd [{d.optimizer}]")
    t.add_argument("--lr", type=float, help="learning rate of both G and D")
    t.add_argument("--lr-g", type=float, help=f"generator learning rate [{d.lr_g}]")
    t.add_argument("--lr-d", type=float, help=f"discriminator learning rate [{d.lr_d}]")
    t.add_argument("--beta1", type=float, help=f"Adam beta1 [{d.beta1}]")
    t.add_argument("--beta2", type=float, help=f"Adam beta2 [{d.beta2}]")
    t.add_argument("--momentum", type=float, help=f"SGD momentum [{d.momentum}]")
    t.add_argument("--label-smoothing", type=float, help=f"one-sided smoothing of D's real labels [{d.label_smoothing}]")
    t.add_argument("--pac", type=int, help=f"PacGAN packing: D judges this many samples at once, real or generated "
                                           f"[{d.pac}: a plain GAN]")
    t.add_argument("--ema", type=float, help="keep a moving average of G's weights with this decay (0.999: about "
                                             "the last 1,000 steps) and draw samples, metrics and checkpoints' "
                                             f"generator from it [{d.ema}: G as it is]")
    t.add_argument("--update", help="the step's rule: alternating (k D steps, then a G step through the updated D) "
                                    "or simultaneous (both players' gradients from one batch, then both updates: the "
                                    f"PacGAN authors' code) [{d.update}]")
    t.add_argument("--bn-eps", type=float, help=f"batch norm's epsilon, added to the variance [{d.bn_eps:g}]")
    t.add_argument("--bn-running", help="what batch norm's running statistics (eval mode, sampling) average: var "
                                        "(the batches' unbiased variance, as PyTorch) or stdev (sqrt(variance + "
                                        f"eps), as Blocks, the library of the PacGAN authors' code) [{d.bn_running}]")
    t.add_argument("--pack-norm", help="with --pac m, G's batch-norm statistics over the whole batch of B m samples "
                                       "(batch) or per pack slot, over each slot's B samples as if G made each slot "
                                       f"in a batch of its own (slot: the PacGAN authors' code) [{d.pack_norm}]")
    t.add_argument("--real-packs", help="how a step draws its real batch: drawn (B x pac points of the data, uniform "
                                        "with replacement, every step) or fixed (B of N packs of pac points made once "
                                        f"from the data and the seed: the PacGAN authors' code) [{d.real_packs}]")
    t.add_argument("--log-every", type=int, help=f"steps between metrics.csv rows [{d.log_every}]")
    t.add_argument("--sample-every", type=int, help=f"steps between sample pictures [{d.sample_every}]")
    t.add_argument("--checkpoint-every", type=int, help=f"steps between checkpoints [{d.checkpoint_every}]")
    t.add_argument("--metrics-every", type=int, help="steps between sample-quality metrics, logged to metrics.csv; "
                                                     "the best checkpoint so far is kept as best.npz [never]")
    t.add_argument("--out", help="run folder to create [runs/<dataset>-<model>-<time>]")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads_option(t)

    s = sub.add_parser("sample", allow_abbrev=False, help="draw samples from a checkpoint")
    s.add_argument("--checkpoint", required=True, help="checkpoint .npz, or a run folder (its latest checkpoint)")
    s.add_argument("--n", type=int, default=64, help="number of samples [64]")
    s.add_argument("--out", default="samples.png", help="PNG to write [samples.png]")
    s.add_argument("--npz", help="also save the raw samples (n, D) to this .npz as `samples`")
    s.add_argument("--seed", type=int, default=0, help="noise seed [0]")
    s.add_argument("--backend", default="auto", help="backend to run G on [auto]")
    _threads_option(s)

    i = sub.add_parser("interpolate", allow_abbrev=False,
                       help="decode latent paths into an image grid (one path per row)")
    i.add_argument("--checkpoint", required=True, help="checkpoint .npz, or a run folder (its latest checkpoint)")
    i.add_argument("--rows", type=int, default=8, help="paths, one per row [8]")
    i.add_argument("--steps", type=int, default=10, help="points per path, both ends included [10]")
    i.add_argument("--method", default="linear", help="linear (straight line) or slerp (great circle) [linear]")
    i.add_argument("--out", default="interpolation.png", help="PNG to write [interpolation.png]")
    i.add_argument("--seed", type=int, default=0, help="seed of the path ends [0]")
    i.add_argument("--backend", default="auto", help="backend to run G on [auto]")
    _threads_option(i)

    e = sub.add_parser("evaluate", allow_abbrev=False,
                       help="sample-quality metrics of a checkpoint, or of every checkpoint of a run")
    e.add_argument("--checkpoint", required=True, help="checkpoint .npz, or a run folder (every checkpoint, and "
                                                       "a plot of the metrics over training)")
    e.add_argument("--json", help="also write the results to this JSON file")
    e.add_argument("--plot", help="for a run folder: PNG of the metrics over steps [RUN/metrics.png]")
    e.add_argument("--seed", type=int, help="noise seed [the run's own evaluation noise, which --metrics-every "
                                           "used: best.npz then gives best.json's numbers]")
    e.add_argument("--backend", default="auto", help="backend to run G on [auto]")
    e.add_argument("--live", action="store_true", help="for a run trained with --ema: measure G's own weights at "
                                                       "that step, not their moving average [the average]")
    _threads_option(e)

    st = sub.add_parser("study", allow_abbrev=False,
                        help="a grid of configurations x seeds in parallel processes, summarised as mean ± standard "
                             "error per configuration (resumable)")
    st.add_argument("--out", required=True, help="the study folder: a run folder per configuration and seed, "
                                                 "study.md / .csv / .json and study.png")
    st.add_argument("--preset", help=f"start from a preset's options: {', '.join(PRESETS)}")
    st.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="a train option for every run, e.g. steps=20000 (hidden sizes as 400x400)")
    st.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                    help="an axis of the grid, e.g. pac=1,2,3,4; several make their product")
    st.add_argument("--seeds", type=int, help="how many seeds each configuration runs [3]")
    st.add_argument("--first-seed", type=int, default=0,
                    help="the first of them (seeds S..S+N-1), e.g. to check chosen options on seeds not tuned on [0]")
    st.add_argument("--workers", type=int, help="worker processes, one core and one thread each [one per core]")
    st.add_argument("--mpi", action="store_true", help="run on the ranks of an MPI job (mpi4py.futures): "
                                                       "mpiexec -n N python -m mpi4py.futures -m gan_engine.cli "
                                                       "study ... --mpi")
    st.add_argument("--report", action="store_true",
                    help="train nothing: write the table and plot from the runs as they stand (an interrupted study: "
                         "each configuration at the last step all its seeds measured); give --out alone")
    st.add_argument("--live", action="store_true",
                    help="with --report, for runs trained with --ema: the table of G's own weights at each "
                         "checkpoint, not their moving average (study-live.md / .csv / .json and study-live.png)")

    sub.add_parser("info", allow_abbrev=False,
                   help="version, which backends are available here, the thread policy and the BLAS")
    return p, sub.choices


def _parse(argv):
    """The parsed arguments. An unknown option is reported with its subcommand's usage, not the top-level one."""
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = commands[args.command]
        known = [o for action in command._actions for o in action.option_strings]
        close = difflib.get_close_matches(unknown[0].split("=")[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close and unknown[0].startswith("-") else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def _train_options(args):
    """The TrainConfig fields given on the command line (name -> value)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if args.hidden is not None:
        given.setdefault("g_hidden", args.hidden)
        given.setdefault("d_hidden", args.hidden)
    if args.lr is not None:
        given.setdefault("lr_g", args.lr)
        given.setdefault("lr_d", args.lr)
    return given


def _say_dataset_defaults(config, given):
    """One line naming the options the dataset's defaults set, when any of them was not given."""
    used = {k: v for k, v in DATASET_DEFAULTS.get(config.dataset, {}).items() if k not in given}
    if used:
        options = " ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                           for k, v in used.items())
        print(f"{config.dataset}'s defaults: {options} (options you give win over them)", flush=True)


def cmd_train(args):
    comm = launched_world()  # under `mpiexec -n P`: one model over the P ranks
    with errors_end_every_rank(comm, "train"):
        return _train(args, comm)


def _train(args, comm):
    run_type, progress = run_for_rank(comm, not args.quiet)
    given = _train_options(args)
    if args.preset:
        if args.resume:
            raise GanEngineError("--preset starts a run; a resumed run keeps the options it was started with")
        given = with_preset(args.preset, given)
    if args.data:
        given["data"] = os.path.abspath(args.data)  # the run stays resumable from any folder
    if args.resume:
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise GanEngineError("--resume continues the run in its own folder; drop --out")
        run = run_type.resume(args.resume, given, progress=progress, comm=comm)
    else:
        config = TrainConfig.with_defaults(**given)
        _say_dataset_defaults(config, given)
        out = args.out or os.path.join("runs", f"{config.dataset}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        run = run_type(comm.broadcast(out), config, progress=progress, comm=comm)  # rank 0's name on every rank
    ranks = f" on {comm.size} ranks" if comm.size > 1 else ""
    print(f"training {run.config.model} GAN on {run.config.dataset} with backend {run.trainer.backend.name}{ranks} "
          f"into {run.out} (step {run.trainer.step_count} of {run.config.steps})", flush=True)
    start = time.perf_counter()
    status = run.train()
    step, took = run.trainer.step_count, duration(time.perf_counter() - start)
    if status == "interrupted":
        print(f"interrupted at step {step}: checkpoint written; resume with: gan-engine train --resume {run.out}",
              flush=True)
        return 130
    print(f"done: {step} steps in {took}. samples: {os.path.join(run.out, 'samples')}, metrics: {run.metrics_path}, "
          f"checkpoints: {os.path.join(run.out, 'checkpoints')}")
    return 0


def cmd_sample(args):
    path = resolve_checkpoint(args.checkpoint)
    samples, info = generate_from_checkpoint(path, args.n, seed=args.seed, backend=args.backend)
    save_samples(samples, info, args.out, title=f"{info['name']}: {args.n} samples")
    if args.npz:
        with atomic_path(args.npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, samples=samples)
    print(f"wrote {args.n} samples from {path} to {args.out}" + (f" and {args.npz}" if args.npz else ""))
    return 0


def cmd_interpolate(args):
    path = resolve_checkpoint(args.checkpoint)
    samples, info = interpolate_from_checkpoint(path, args.rows, args.steps, args.method, args.seed, args.backend)
    save_image_grid(samples, tuple(info["image_shape"]), args.out, cols=args.steps)
    print(f"wrote {args.rows} {args.method} paths of {args.steps} steps from {path} to {args.out}")
    return 0


def cmd_evaluate(args):
    if os.path.isdir(args.checkpoint):
        paths = all_checkpoints(args.checkpoint)
        if not paths:
            raise GanEngineError(f"no checkpoints in {os.path.join(args.checkpoint, 'checkpoints')}")
    else:
        paths = [resolve_checkpoint(args.checkpoint)]
    results = []
    for result in evaluate_checkpoints(paths, args.seed, args.backend, average=not args.live):
        results.append(result)
        print(_metrics_table(result), flush=True)
    if len(results) > 1:
        plot = args.plot or os.path.join(args.checkpoint, "metrics.png")
        save_metric_curves(results, plot)
        print(f"plot of {len(results)} checkpoints: {plot}")
    if args.json:
        write_json(args.json, results if len(results) > 1 else results[0])
        print(f"results: {args.json}")
    return 0


def _metrics_table(result):
    lines = [f"{result['checkpoint']} (step {result['step']}):",
             f"  {'metric':20s} {'generated':>12s} {'real data':>12s}  better"]
    for name, value in result["generated"].items():
        lines.append(f"  {name:20s} {format_metric(name, value):>12s} {format_metric(name, result['real'][name]):>12s}"
                     f"  {BETTER[name]}")
    if "classifier_accuracy" in result:
        lines.append(f"  (classifier held-out accuracy {100 * result['classifier_accuracy']:.1f}%)")
    return "\n".join(lines)


def cmd_study(args):
    if args.report:
        given = [name for name in ("preset", "set", "grid", "seeds", "workers") if getattr(args, name) is not None]
        given += [f"--{name.replace('_', '-')}" for name in ("first_seed", "mpi") if getattr(args, name)]
        if given:
            raise GanEngineError(f"--report reads the study's options from its plan.json: give --out alone, "
                                 f"without {', '.join(g if g.startswith('--') else '--' + g for g in given)}")
        report_study(saved_plan(args.out), live=args.live)
        return _print_study_table(args.out, "study-live" if args.live else "study")
    if args.live:
        raise GanEngineError("--live goes with --report: gan-engine study --out OUT --report --live")
    base = parse_assignments(args.set, grid=False)
    if args.preset:
        base = with_preset(args.preset, base)
    if "data" in base:
        base["data"] = os.path.abspath(base["data"])
    seeds = 3 if args.seeds is None else args.seeds
    if seeds < 1 or (args.workers is not None and args.workers < 1):
        raise GanEngineError("--seeds and --workers must be positive")
    if args.first_seed < 0:
        raise GanEngineError(f"--first-seed must be 0 or more, got {args.first_seed}")
    plan = load_plan(args.out, base, parse_assignments(args.grid, grid=True), seeds, args.first_seed)
    rows = run_study(plan, args.workers, args.mpi)
    if rows is None:
        return 130
    return _print_study_table(args.out)


def _print_study_table(out, stem="study"):
    print(f"table: {os.path.join(out, stem + '.md')} (and .csv, .json); plot: {os.path.join(out, stem + '.png')}")
    with open(os.path.join(out, f"{stem}.md")) as f:
        print(f.read(), end="")
    return 0


def cmd_info(args):
    print(f"gan-engine {__version__} (Python {platform.python_version()}, NumPy {np.__version__})")
    print("backends (auto picks the first available):")
    for name, available, reason in backend_status():
        print(f"  {name:6s} {'yes' if available else 'no '}  {reason}")
    for name, available, _ in backend_status():
        backend = get_backend(name) if available else None
        if hasattr(backend, "warm_up"):
            seconds = backend.warm_up()
            loaded, compiled = backend.kernel_cache_stats()
            how = (f"compiled {compiled} kernel signatures and cached them; the next process loads them"
                   if compiled else f"loaded {loaded} kernel signatures from the cache")
            print(f"{name} warm-up: {seconds:.2f} s ({how})")
    print(_threads_report(threads.policy().describe()))
    return 0


def _threads_report(d):
    """The thread policy and the BLAS libraries, as `gan-engine info` prints them."""
    cap = (f"capped at {d['override']} by --threads or {threads.ENV_VAR}" if d["override"] is not None else
           f"{d['cap']} free now (other processes keep {d['others_busy']:.2f} cores busy; measured as it runs)")
    lines = [f"threads: {d['cores']} cores available, {cap}; a large product is cut into a row block per "
             f"{d['macs_per_block']:,} multiply-adds (at least {d['min_rows']} rows, at most one per core), spread "
             "over that many of the engine's threads (the Numba channel loops and Adam in blocks of channels): the "
             "same result on any number; BLAS itself runs on one thread"]
    for b in d["blas"]:
        lines.append(f"BLAS: {b['name']} {b['version']} ({b['architecture']} kernels, {b['threading']}), "
                     f"{b['threads']} thread{'s' if b['threads'] != 1 else ''} now ({b['file']})")
    lines.append(f"OPENBLAS_CORETYPE: {d['openblas_coretype'] or 'not set (OpenBLAS picks the kernels for this CPU)'}")
    return "\n".join(lines)


def main(argv=None):
    args = _parse(argv)
    command = {"train": cmd_train, "sample": cmd_sample, "interpolate": cmd_interpolate, "evaluate": cmd_evaluate,
               "study": cmd_study, "info": cmd_info}[args.command]

    def show_warning(message, category, filename, lineno, file=None, line=None):  # one line, no source
        print(f"gan-engine {args.command}: warning: {message}", file=sys.stderr, flush=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            threads.policy()  # a bad GAN_ENGINE_THREADS is reported before any work
            if getattr(args, "threads", None) is not None:
                threads.set_threads(threads.parse_threads(args.threads, "--threads"))
            return command(args)
    except GanEngineError as exc:
        print(f"gan-engine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only folder, a full disk, a file that vanished: the path and the cause
        where = f" {exc.filename}" if exc.filename else ""
        print(f"gan-engine {args.command}: error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"gan-engine {args.command}: error: out of memory; try a smaller --batch-size or model",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the training loop, which handles Ctrl-C itself
        print(f"gan-engine {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
