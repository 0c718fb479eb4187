"""``python -m upsamplelib.grade``: grade a student's notebook, or a folder of them.

    python -m upsamplelib.grade NOTEBOOK [--json OUT] [--timeout S] [--seed N] [--lesson NN]
    python -m upsamplelib.grade --batch FOLDER --csv OUT [--json OUT] [--timeout S] [--seed N]

Exit status: 0 when every exercise of every notebook passed, 1 otherwise,
2 on a usage error (found before any grading: a missing folder, an unknown
lesson, an output that cannot be written).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from ..checkers.exercises import EXERCISES, for_lesson
from .grader import DEFAULT_TIMEOUT, grade_folder, grade_notebook, notebooks_in
from .report import is_stream, table, write_csv, write_json


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m upsamplelib.grade",
        description="Run a student's copy of a lesson (in the CUDA simulator when there is no GPU), then check "
                    "each of its exercises on fresh random inputs, and print a table of the outcomes.")
    parser.add_argument("notebook", nargs="?", help="the student's notebook (.ipynb), anywhere on disk")
    parser.add_argument("--batch", metavar="FOLDER", help="grade every notebook under FOLDER instead")
    parser.add_argument("--csv", metavar="OUT", help="with --batch: write one row per notebook, one column "
                        "per exercise, to OUT")
    parser.add_argument("--json", metavar="OUT", help="write the full report as JSON to OUT")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds each cell, and each check, may run (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--seed", type=int, metavar="N", help="salt of the checkers' random inputs (default: a "
                        "new random one for the run, printed, so that a grade can be reproduced)")
    parser.add_argument("--lesson", metavar="NN", help="the lesson the notebook is a copy of, e.g. 01 (default: "
                        "told from the notebook's exercises)")
    return parser


def _lesson(parser, given: str | None) -> str | None:
    """``--lesson`` as the registry names it: ``3`` is ``03``."""
    if given is None:
        return None
    lesson = given.zfill(2) if given.isdigit() else given
    if not for_lesson(lesson):
        known = ", ".join(dict.fromkeys(exercise.lesson for exercise in EXERCISES.values()))
        parser.error(f"--lesson {given}: no such lesson (the lessons are {known})")
    return lesson


def _writable(parser, option: str, path: str | None) -> None:
    """A usage error now, not after hours of grading, when ``path`` cannot be written."""
    if path is None:
        return
    if is_stream(path) and not os.path.isdir(path):
        if not os.access(path, os.W_OK):
            parser.error(f"{option} {path}: cannot write there")
        return
    target = os.path.realpath(path)  # a link: the file it names
    folder = os.path.dirname(target)
    if os.path.isdir(target) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        parser.error(f"{option} {path}: cannot write there (is {folder} an existing folder you may write to?)")


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.notebook) == bool(args.batch):
        parser.error("give either a NOTEBOOK or --batch FOLDER")
    if args.csv and not args.batch:
        parser.error("--csv goes with --batch")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.batch and not os.path.isdir(args.batch):
        parser.error(f"--batch {args.batch}: no such folder")
    if args.batch and not notebooks_in(args.batch):
        parser.error(f"--batch {args.batch}: no notebooks (.ipynb) under it")
    _writable(parser, "--csv", args.csv)
    _writable(parser, "--json", args.json)
    # One salt for a whole batch: every student's code meets the same inputs.
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    options = {"timeout": args.timeout, "seed": seed, "lesson": _lesson(parser, args.lesson)}
    if args.batch:
        reports = []
        # (is a stream, write it): decided before the first write creates a file
        outputs = [(is_stream(path), write) for path, write in (
            (args.csv, lambda: write_csv(reports, args.batch, args.csv)),
            (args.json, lambda: write_json(reports, args.json, batch=True))) if path]
        for report in grade_folder(args.batch, **options):
            print(table(report), flush=True)
            reports.append(report)
            for stream, write in outputs:
                if not stream:  # rewritten after every notebook: a batch stopped half way keeps it
                    write()
        for stream, write in outputs:
            if stream:  # a stream (/dev/stdout) takes the whole gradebook once
                write()
    else:
        reports = [grade_notebook(args.notebook, **options)]
        print(table(reports[0]))
        if args.json:
            write_json(reports, args.json, batch=False)
    return 0 if all(report.all_passed for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
