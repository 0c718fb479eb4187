"""What the grader writes: a table for the terminal, JSON, and a CSV for a
gradebook."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import stat
import sys

from .grader import NotebookReport, student_name

#: Width of the message column when the terminal's width is unknown.
_DEFAULT_WIDTH = 120


def one_line(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: max(width - 1, 0)] + "…"


def table(report: NotebookReport, width: int | None = None) -> str:
    """The per-exercise table, then the cells that hung or crashed, and a
    total. Messages are cut to one line."""
    width = width or shutil.get_terminal_size((_DEFAULT_WIDTH, 24)).columns
    lines = [f"{report.notebook}  (lesson {report.lesson or '?'}, inputs salted with --seed {report.seed})"]
    if report.error:
        lines.append(f"  {'not graded in full' if report.exercises else 'not graded'}: {report.error}")
    if report.exercises:
        status_width = max(len("status"), *(len(e.status) for e in report.exercises))
        head = f"  {'exercise':<8}  {'status':<{status_width}}  "
        lines.append(head + "first mismatch or error")
        for result in report.exercises:
            row = f"  {result.exercise:<8}  {result.status:<{status_width}}  "
            lines.append(row + one_line(result.message, max(width - len(row), 20)) if result.message else row.rstrip())
    for problem in report.cells:
        if problem.status in ("timeout", "crashed"):
            what = "was interrupted" if problem.status == "timeout" else "crashed the kernel"
            lines.append(f"  cell {problem.cell} {what}: {one_line(problem.message, max(width - 30, 20))}")
    if report.restarts:
        lines.append(f"  the kernel was restarted {report.restarts} time{'s' if report.restarts != 1 else ''} "
                     "(the cells before each restart were run again)")
    passed = sum(e.passed for e in report.exercises)
    lines.append(f"  {passed} of {len(report.exercises)} exercises passed in {report.seconds:g} s")
    return "\n".join(lines)


def is_stream(path: str) -> bool:
    """Whether ``path`` is a stream rather than a file to replace: a pipe, a
    device, or this process's own standard output (``/dev/stdout`` even when
    the shell sent it to a file)."""
    try:
        found = os.stat(path)
    except OSError:  # not there yet: a file to create
        return False
    if not stat.S_ISREG(found.st_mode):
        return True
    try:
        ours = os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # stdout replaced by an object with no file
        return False
    return (found.st_dev, found.st_ino) == (ours.st_dev, ours.st_ino)


@contextlib.contextmanager
def _replacing(path: str, **options):
    """A file to write that replaces ``path`` only once it is complete: a
    grader stopped while writing leaves the previous version whole. A link
    is followed (the file it names is replaced); a stream is written
    directly."""
    if is_stream(path):  # appended after what was printed: /dev/stdout sent to a file holds the tables
        sys.stdout.flush()
        with open(path, "a", encoding="utf-8", **options) as file:
            yield file
        return
    path = os.path.realpath(path)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8", **options) as file:
        yield file
    os.replace(partial, path)


def write_json(reports: list[NotebookReport], path: str, batch: bool) -> None:
    """One notebook's report, or ``{"notebooks": [...]}`` for a batch."""
    data = {"notebooks": [r.as_json() for r in reports]} if batch else reports[0].as_json()
    with _replacing(path) as file:
        json.dump(data, file, indent=1, ensure_ascii=False)
        file.write("\n")


def write_csv(reports: list[NotebookReport], folder, path: str) -> None:
    """One row per notebook: ``student`` (its path in the folder, without
    .ipynb), ``lesson``, ``passed``, ``total``, ``seed``, ``error``, then one
    column per exercise holding its status. A gradebook takes ``passed`` (or
    the status columns) as they are."""
    exercise_ids = list(dict.fromkeys(e.exercise for r in reports for e in r.exercises))
    with _replacing(path, newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["student", "lesson", "passed", "total", "seed", "error", *exercise_ids])
        for report in reports:
            statuses = {e.exercise: e.status for e in report.exercises}
            writer.writerow([student_name(report, folder), report.lesson or "",
                             sum(e.passed for e in report.exercises), len(report.exercises), report.seed,
                             one_line(report.error, 300), *(statuses.get(i, "") for i in exercise_ids)])
