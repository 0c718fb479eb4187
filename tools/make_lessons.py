"""Generate the student notebooks in lessons/ from the solutions in solutions/.

    python tools/make_lessons.py          # write lessons/NN_*.ipynb
    python tools/make_lessons.py --check  # exit 1 if any lesson is out of date

In a solution notebook, the code a student writes sits between two marker
lines, with the exercise number on the first:

    # BEGIN SOLUTION 01.2
    ...
    # END SOLUTION

The lesson gets, at the indentation of the BEGIN line,

    raise NotImplementedError("Exercise 01.2: write this part")

Cells tagged ``uses-exercise`` in the solution (the checker cells, and any
cell that runs the student's code) are tagged ``raises-exception`` in the
lesson, so the lesson runs top to bottom under nbval-lax while exercises are
unsolved. Cells tagged ``solution-only`` are dropped. Outputs, execution
counts and stored widget state are cleared. Never edit a lesson by hand: edit the solution, run
``make solutions``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
LESSONS = ROOT / "lessons"

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION (?P<exercise>\d\d\.\d+)\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")


class MarkerError(ValueError):
    pass


def strip_solutions(source: str, where: str) -> str:
    """Replace every marked solution region of ``source`` by a stub."""
    lines = source.split("\n")
    result = []
    inside = None
    for number, line in enumerate(lines, 1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if inside:
                raise MarkerError(f"{where}, line {number}: BEGIN SOLUTION inside exercise {inside}")
            inside = begin["exercise"]
            result.append(
                f'{begin["indent"]}raise NotImplementedError("Exercise {inside}: write this part")'
            )
        elif end:
            if not inside:
                raise MarkerError(f"{where}, line {number}: END SOLUTION without BEGIN")
            inside = None
        elif not inside:
            result.append(line)
    if inside:
        raise MarkerError(f"{where}: exercise {inside} has no END SOLUTION")
    return "\n".join(result)


def make_lesson(solution: dict, name: str) -> dict:
    """The student notebook for one solution notebook (as JSON dicts)."""
    lesson = copy.deepcopy(solution)
    # Widget state is what a run happened to draw, with random model ids.
    lesson.get("metadata", {}).pop("widgets", None)
    cells = []
    for index, cell in enumerate(lesson["cells"]):
        tags = cell.get("metadata", {}).get("tags", [])
        if "solution-only" in tags:
            continue
        if cell["cell_type"] == "code":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = strip_solutions(source, f"{name}, cell {index}")
            cell["outputs"] = []
            cell["execution_count"] = None
            if "uses-exercise" in tags:
                new_tags = [t for t in tags if t != "uses-exercise"] + ["raises-exception"]
                cell["metadata"]["tags"] = new_tags
        cells.append(cell)
    lesson["cells"] = cells
    return lesson


def dumps(notebook: dict) -> str:
    """The same bytes Jupyter writes (one-space indent, trailing newline)."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def strip_widget_state(path: Path) -> None:
    """Remove the widget state nbconvert stores in an executed solution
    (random model ids that change on every run; nbval ignores it)."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    if notebook.get("metadata", {}).pop("widgets", None) is not None:
        path.write_text(dumps(notebook), encoding="utf-8")


def expected_lessons():
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        solution = json.loads(path.read_text(encoding="utf-8"))
        yield LESSONS / path.name, dumps(make_lesson(solution, path.name))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report lessons that are out of date")
    args = parser.parse_args(argv)
    if not args.check:
        for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
            strip_widget_state(path)
    stale = []
    for path, text in expected_lessons():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    expected_names = {path.name for path, _ in expected_lessons()}
    orphans = [p for p in LESSONS.glob("*.ipynb") if p.name not in expected_names]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)} (run `make lessons`)")
        for path in orphans:
            print(f"no solution for: {path.relative_to(ROOT)}")
        return 1 if stale or orphans else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
