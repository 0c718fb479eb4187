"""Command line of the capstone experiment.

One cell (a task and an upsampler, several seeds), written as a JSON list of
records::

    python -m upsamplelib.experiments --task region --upsampler carafe --seeds 3 --steps 300 --json out.json

The whole grid (every task x upsampler x seed), written with its metadata
(what ``make experiments`` runs)::

    python -m upsamplelib.experiments grid --json upsamplelib/experiments/results.json

Progress bars go to stderr; the table of results (mean ± std over the seeds)
to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")

import upsamplelib  # noqa: E402,F401  (first: it decides where CUDA kernels run before numba loads)

from .data import TASKS  # noqa: E402
from .model import UPSAMPLERS  # noqa: E402
from .results import claims_report, table  # noqa: E402
from .train import Config  # noqa: E402

DEFAULT_STEPS = 300
DEFAULT_SEEDS = 3


def _names(text, allowed, what):
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(allowed)
    for name in names:
        if name not in allowed:
            raise argparse.ArgumentTypeError(f"unknown {what} {name!r}; expected one of {', '.join(allowed)} or all")
    return names


def _common(parser):
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0 .. N-1 (default %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps (default %(default)s)")
    parser.add_argument("--json", required=True, type=Path, help="where to write the results")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of each training process (default 1: the machines this runs on are shared, and "
                             "two thread pools, PyTorch's and Numba's, contend for the cores)")
    parser.add_argument("--train-size", type=int, default=Config.train_size,
                        help="training images (default %(default)s)")
    parser.add_argument("--val-size", type=int, default=Config.val_size,
                        help="validation images (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args) -> Config:
    return Config(train_size=args.train_size, val_size=args.val_size)


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


def cell_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m upsamplelib.experiments",
                                     description="Train the capstone network for one task and upsampler.",
                                     epilog="`python -m upsamplelib.experiments grid --help`: the whole grid.")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--upsampler", required=True, choices=UPSAMPLERS)
    _common(parser)
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    from .grid import run_cell, set_threads

    set_threads(args.threads or 1)
    config = _config(args)
    records = []
    for seed in tqdm(range(args.seeds), desc=f"{args.task} {args.upsampler}", disable=args.quiet or args.seeds < 2):
        record, _ = run_cell(args.task, args.upsampler, seed, args.steps, config, progress=not args.quiet)
        records.append(record)
    _write(args.json, records)
    print(table(records, args.task))
    print(f"wrote {len(records)} records to {args.json}")
    return 0


def grid_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m upsamplelib.experiments grid",
                                     description="Train the capstone network for every task x upsampler x seed.")
    parser.add_argument("--tasks", default="all", help="comma-separated, or all (default)")
    parser.add_argument("--upsamplers", default="all", help="comma-separated, or all (default)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at a time (default %(default)s)")
    _common(parser)
    args = parser.parse_args(argv)
    try:
        tasks, upsamplers = _names(args.tasks, TASKS, "task"), _names(args.upsamplers, UPSAMPLERS, "upsampler")
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    from .grid import run_grid

    threads = args.threads or 1
    results = run_grid(tasks, upsamplers, args.seeds, args.steps, _config(args), args.jobs, threads,
                       progress=not args.quiet,
                       command="python -m upsamplelib.experiments " + " ".join(["grid"] + list(argv)))
    _write(args.json, results)
    for task in tasks:
        print(f"{task} ({args.seeds} seeds, {args.steps} steps): mean ± std")
        print(table(results, task))
        print()
    if set(tasks) == set(TASKS):
        print(claims_report(results))
    print(f"wrote {len(results['records'])} records to {args.json} in {results['metadata']['wall_seconds']:.0f} s")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "grid":
        return grid_main(argv[1:])
    return cell_main(argv)


if __name__ == "__main__":
    sys.exit(main())
