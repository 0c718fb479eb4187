"""``python -m upsamplelib.grade``: grade a student's notebook, or a folder of them.

    python -m upsamplelib.grade NOTEBOOK [--json OUT] [--timeout S] [--seed N] [--lesson NN]
    python -m upsamplelib.grade --batch FOLDER --csv OUT [--json OUT] [--timeout S] [--seed N]

Exit status: 0 when every exercise of every notebook passed, 1 otherwise,
2 on a usage error.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from .grader import DEFAULT_TIMEOUT, grade_folder, grade_notebook
from .report import table, write_csv, write_json


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


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.notebook) == bool(args.batch):
        parser.error("give either a NOTEBOOK or --batch FOLDER")
    if args.csv and not args.batch:
        parser.error("--csv goes with --batch")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    # One salt for a whole batch: every student's code meets the same inputs.
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    options = {"timeout": args.timeout, "seed": seed, "lesson": args.lesson}
    if args.batch:
        reports = []
        for report in grade_folder(args.batch, **options):
            print(table(report), flush=True)
            reports.append(report)
        if not reports:
            print(f"no notebooks under {args.batch}", file=sys.stderr)
        if args.csv:
            write_csv(reports, args.batch, args.csv)
    else:
        reports = [grade_notebook(args.notebook, **options)]
        print(table(reports[0]))
    if args.json:
        write_json(reports, args.json, batch=bool(args.batch))
    return 0 if reports and all(report.all_passed for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
