"""A study: a grid of training configurations x seeds, run as independent runs in worker processes (one core and
one thread each, so they do not fight), resumable, summarised as mean +- standard error per configuration.

    gan-engine study --preset pacgan-ring8 --grid pac=1,2,3,4 --seeds 10 --set steps=20000 --out studies/ring8

Layout: OUT/<configuration>/seed-<s>/ is an ordinary run folder (config.json, metrics.csv, checkpoints/ ...);
OUT/study.md, study.csv and study.json hold the table of the runs' last sample-quality metrics, and study.png the
metrics over the steps, a line per configuration (means over the seeds). Running the same command again skips
the finished runs and resumes the interrupted ones; `--report` writes the table of an interrupted study as it
stands (each configuration at the last step all its seeds measured), and `--report --live` the table of G's own
weights at each checkpoint of runs that averaged them (--ema): study-live.md / .csv / .json and study-live.png,
from each run's metrics-live.csv. With `--mpi` the runs go to mpi4py.futures' MPIPoolExecutor
(`mpiexec -n N python -m mpi4py.futures -m gan_engine.cli study ... --mpi`), so they spread over the machines of
an MPI job.
"""
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from .checkpoint import all_checkpoints, checkpoint_step, latest_checkpoint
from .config import TrainConfig
from .errors import GanEngineError
from .io import write_json, write_text

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
NOT_STUDIED = ("seed",)  # the study's own axis: --seeds
LOGGED = "metrics.csv"     # a run's losses and, every metrics-every steps, its sample-quality metrics
LIVE = "metrics-live.csv"  # a run's sample-quality metrics of G's own weights at each checkpoint (--report --live)


def parse_value(name, text):
    """A TrainConfig option's value from its text (name with - or _), converted to the option's type."""
    key = name.replace("-", "_")
    if key not in FIELDS or key in NOT_STUDIED:
        choices = ", ".join(k.replace("_", "-") for k in FIELDS if k not in NOT_STUDIED)
        raise GanEngineError(f"unknown option {name!r} for a study; choose from {choices}")
    kind = str(FIELDS[key].type)
    try:
        if text.lower() in ("none", "null"):
            return key, None
        if "tuple" in kind:
            return key, tuple(int(v) for v in text.split("x"))
        if "int" in kind:
            return key, int(text)
        if "float" in kind:
            return key, float(text)
    except ValueError:
        what = "sizes such as 400x400" if "tuple" in kind else "an integer" if "int" in kind else "a number"
        raise GanEngineError(f"{name}={text!r}: {name} takes {what}") from None
    return key, text


def parse_assignments(items, grid):
    """["pac=1,2", ...] -> {"pac": [1, 2]} (grid: a list of values each) or ["steps=500"] -> {"steps": 500}.
    Hidden sizes are written with x: g-hidden=400x400."""
    out = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not text:
            raise GanEngineError(f"expected NAME=VALUE{',VALUE...' if grid else ''}, got {item!r}")
        parsed = [parse_value(name, v) for v in (text.split(",") if grid else [text])]
        out[parsed[0][0]] = [value for _, value in parsed] if grid else parsed[0][1]
    return out


@dataclasses.dataclass
class Plan:
    """The runs of a study: base options, the grid's axes, the seeds (first_seed .. first_seed + seeds - 1)."""
    out: str
    base: dict
    grid: dict
    seeds: int
    first_seed: int = 0

    def to_json(self):
        """plan.json's contents: the base options, the grid and the seeds, as JSON reads them back."""
        return json.loads(json.dumps({"base": self.base, "grid": self.grid, "seeds": self.seeds,
                                      "first_seed": self.first_seed}))

    def configurations(self):
        """[(label, options)] for every point of the grid ("base" when there is no grid). The axes go in name
        order, whatever order they were given in, so a run's folder is the same for `--grid pac=1,2 --grid lr=..`,
        its reverse and plan.json (which keeps its keys sorted)."""
        names = sorted(self.grid)
        points = itertools.product(*(self.grid[n] for n in names)) if names else [()]
        out = []
        for values in points:
            options = dict(zip(names, values))
            label = ",".join(f"{n.replace('_', '-')}={_text(v)}" for n, v in options.items()) or "base"
            out.append((label, {**self.base, **options}))
        return out

    def runs(self):
        """[(label, seed, run folder, TrainConfig)] for every configuration and seed; options are checked here,
        before any run starts."""
        runs = []
        for label, options in self.configurations():
            for seed in range(self.first_seed, self.first_seed + self.seeds):
                config = TrainConfig.with_defaults(**{**options, "seed": seed})
                if config.metrics_every is None:  # a study compares sample quality: measure it ten times a run
                    config = dataclasses.replace(config, metrics_every=max(1, config.steps // 10))
                runs.append((label, seed, os.path.join(self.out, label, f"seed-{seed}"), config))
        return runs


def _text(value):
    return "x".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def run_one(folder, options):
    """Train one run of a study to its end in `folder`: skip it when finished, resume it when interrupted. Runs in a
    worker process, on one thread. Returns (folder, "done" | "skipped" | "interrupted")."""
    from .backends import threads
    from .run import Run

    threads.set_threads(1)
    config = TrainConfig(**options)
    latest = latest_checkpoint(folder)
    if latest and latest.endswith(f"{config.steps:08d}.npz"):
        return folder, "skipped"
    if os.path.exists(os.path.join(folder, "config.json")):
        run = Run.resume(folder, {"steps": config.steps}, progress=False)
    else:
        run = Run(folder, config, progress=False)
    status = run.train()
    if _orphaned.is_set():  # nobody to report to, and runs may still wait in the queue: stop here
        sys.stdout.flush()
        os._exit(1)
    return folder, status


ORPHAN_POLL_S = 1.0            # how often a worker checks that the study's process is still there
_orphaned = threading.Event()  # in a worker: the study's process is gone


def stop_when_orphaned():
    """A worker process's initializer: a thread that interrupts the worker once the study's process is gone,
    killed with no chance to stop its workers (SIGTERM, SIGKILL). A run in progress checkpoints and stops, as on
    Ctrl-C, and the worker exits (run_one); an idle worker exits at once."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_S)
        _orphaned.set()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True, name="gan-engine-orphan-watch").start()


def executor(workers, mpi=False):
    """The pool the runs go to: worker processes on this machine, or MPI ranks (mpi4py.futures)."""
    if mpi:
        try:
            from mpi4py.futures import MPIPoolExecutor
        except ImportError as exc:
            raise GanEngineError(f"--mpi needs mpi4py ({exc}); pip install -e '.[mpi]'") from exc
        return MPIPoolExecutor()
    import concurrent.futures
    import multiprocessing
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=stop_when_orphaned)


def run_study(plan, workers=None, mpi=False, say=print):
    """Run every run of the plan (the unfinished ones), then write the table and the plot. Returns the summary
    rows, or None when a run was interrupted (rerun the same command to go on)."""
    runs = plan.runs()
    os.makedirs(plan.out, exist_ok=True)
    write_json(os.path.join(plan.out, "plan.json"), plan.to_json())
    workers = workers or len(os.sched_getaffinity(0))
    say(f"study: {len(runs)} runs ({len(runs) // plan.seeds} configurations x {plan.seeds} seeds) on "
        f"{'MPI ranks' if mpi else f'{workers} worker processes'}, into {plan.out}")
    statuses = []
    pool = executor(workers, mpi)
    try:
        futures = [pool.submit(run_one, folder, config.to_dict()) for _, _, folder, config in runs]
        for future in futures:
            folder, status = future.result()
            statuses.append(status)
            say(f"  {os.path.relpath(folder, plan.out)}: {status}")
    except BaseException:  # Ctrl-C: the running runs checkpoint and stop (their own SIGINT); none starts after
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    if "interrupted" in statuses:
        say(f"study interrupted: run the same command again to go on (or gan-engine study --out {plan.out} --report "
            "for the table so far)")
        return None
    return report_study(plan)


def report_study(plan, live=False):
    """Write study.md / .csv / .json and study.png from the runs as they stand, training nothing: a finished study's
    final table, or an interrupted one's so far (each configuration at the last step all its seeds measured).
    live: the same from G's own weights at each checkpoint (measure_live), not their moving average, into
    study-live.md / .csv / .json and study-live.png. Returns the summary rows."""
    runs = plan.runs()
    missing = [folder for _, _, folder, _ in runs if not os.path.exists(os.path.join(folder, LOGGED))]
    if missing:
        raise GanEngineError(f"{len(missing)} of the {len(runs)} runs have not started (the first: {missing[0]}): "
                             "run the study further before its table")
    if live:
        if not any(config.ema for *_, config in runs):
            raise GanEngineError("--live measures G's own weights in runs that average them (--ema); this study's "
                                 "runs average nothing, so its study.md already measures G's own weights")
        for _, _, folder, _ in runs:
            measure_live(folder)
    source, stem = (LIVE, "study-live") if live else (LOGGED, "study")
    rows = summarise(runs, source)
    write_tables(plan.out, rows, stem)
    save_study_plot(runs, os.path.join(plan.out, f"{stem}.png"), source)
    return rows


def measure_live(folder):
    """Write folder/metrics-live.csv: the sample-quality metrics of G's own weights, not their moving average, at
    each of the run's checkpoints, on the noise its metrics.csv was measured on. Averaging changes no training step,
    so these are the metrics of the same run trained without --ema. Checkpoints already in the file are not
    measured again."""
    from .run import evaluate_checkpoints

    path = os.path.join(folder, LIVE)
    rows = {}
    if os.path.exists(path):
        with open(path, newline="") as f:
            rows = {int(r["step"]): r for r in csv.DictReader(f)}
    new = [p for p in all_checkpoints(folder) if checkpoint_step(p) not in rows]
    for result in evaluate_checkpoints(new, average=False):
        rows[result["step"]] = {"step": result["step"], **result["generated"]}
    if not rows:
        raise GanEngineError(f"{folder} has no checkpoints yet to measure G's own weights on: train it further")
    write_csv(path, [rows[step] for step in sorted(rows)])


def quality_rows(folder, source=LOGGED):
    """(the sample-quality metrics' names, the rows of a run's metrics file `source` that have them)."""
    with open(os.path.join(folder, source), newline="") as f:
        rows = list(csv.DictReader(f))
    names = [name for name in rows[0] if name not in ("step", "d_loss", "g_loss", "d_real", "d_fake")] if rows else []
    measured = [r for r in rows if names and r[names[0]]]
    if not measured:
        raise GanEngineError(f"{folder}/{source} has no sample-quality metrics yet: train it further (they come "
                             "every metrics-every steps)")
    return names, measured


def metrics_at(folder, step, source=LOGGED):
    """The sample-quality metrics {name: float} of a run's last row of `source` that has them, at or before `step`."""
    names, measured = quality_rows(folder, source)
    row = [r for r in measured if int(r["step"]) <= step][-1]
    return {name: float(row[name]) for name in names}


def last_common_step(folders, source=LOGGED):
    """The last step at which every one of the runs in `folders` has measured its samples (in `source`)."""
    return min(int(quality_rows(folder, source)[1][-1]["step"]) for folder in folders)


def by_configuration(runs):
    """{label: [run folder, ...]} in the plan's order."""
    folders = {}
    for label, _, folder, _ in runs:
        folders.setdefault(label, []).append(folder)
    return folders


def summarise(runs, source=LOGGED):
    """One row per configuration: {"configuration", "runs", "step", metric: mean, metric_se: standard error}, at
    the last step all its runs measured in their metrics file `source` (their end, once finished)."""
    rows = []
    for label, folders in by_configuration(runs).items():
        step = last_common_step(folders, source)
        results = [metrics_at(folder, step, source) for folder in folders]
        row = {"configuration": label, "runs": len(results), "step": step}
        for name in results[0]:
            values = np.array([metrics[name] for metrics in results])
            row[name] = float(values.mean())
            row[f"{name}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        rows.append(row)
    return rows


def write_tables(out, rows, stem="study"):
    """OUT/<stem>.md (mean +- standard error), .csv and .json, each written whole or not at all."""
    metrics = [k for k in rows[0] if k not in ("configuration", "runs", "step") and not k.endswith("_se")]
    lines = ["| configuration | runs | step | " + " | ".join(metrics) + " |", "|---" * (3 + len(metrics)) + "|"]
    for row in rows:
        cells = [f"{row[m]:.3g} ± {row[m + '_se']:.2g}" if row[m + "_se"] is not None else f"{row[m]:.3g}"
                 for m in metrics]
        lines.append(f"| {row['configuration']} | {row['runs']} | {row['step']} | " + " | ".join(cells) + " |")
    write_text(os.path.join(out, f"{stem}.md"), "\n".join(lines) + "\n")
    write_csv(os.path.join(out, f"{stem}.csv"), rows)
    write_json(os.path.join(out, f"{stem}.json"), rows)


def write_csv(path, rows):
    """rows (dicts with the first one's keys) as a CSV file with a header, written whole or not at all."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def study_curves(runs, source=LOGGED):
    """{metric: {configuration: (steps, means over its seeds)}} at the steps every seed of the configuration
    measured in its metrics file `source` (a run stopped and resumed may have measured at a step of its own)."""
    curves = {}
    for label, folders in by_configuration(runs).items():
        measured = [quality_rows(folder, source) for folder in folders]
        names = measured[0][0]
        series = [{int(r["step"]): r for r in rows} for _, rows in measured]
        steps = sorted(set.intersection(*(set(rows) for rows in series)))
        for name in names:
            curves.setdefault(name, {})[label] = (steps, [float(np.mean([float(rows[step][name]) for rows in series]))
                                                          for step in steps])
    return curves


def save_study_plot(runs, path, source=LOGGED):
    """Each sample-quality metric over the steps, a line per configuration (study_curves)."""
    from .plots import save_curves

    save_curves(study_curves(runs, source), path)


def saved_plan(out):
    """The Plan of the study in folder `out`, from its plan.json (a plan from before --first-seed began at 0)."""
    path = os.path.join(out, "plan.json")
    if not os.path.exists(path):
        raise GanEngineError(f"{out} holds no study ({path} is missing): give the folder a study wrote")
    try:
        with open(path) as f:
            saved = json.load(f)
        return Plan(out, saved["base"], saved["grid"], saved["seeds"], saved.get("first_seed", 0))
    except (ValueError, KeyError, TypeError) as exc:
        raise GanEngineError(f"{path} is damaged ({type(exc).__name__}: {exc}); give another --out") from exc


def load_plan(out, base, grid, seeds, first_seed=0):
    """The Plan of a study folder: the options given now, which must match those a study already there used."""
    plan = Plan(out, base, grid, seeds, first_seed)
    if os.path.exists(os.path.join(out, "plan.json")) and saved_plan(out).to_json() != plan.to_json():
        raise GanEngineError(f"{out} holds a study with other options ({os.path.join(out, 'plan.json')}); give the "
                             "same options to go on with it, or another --out")
    return plan
