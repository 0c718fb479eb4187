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

The first code cell of every solution (and so of every lesson) starts with
the install prologue: a copy of ``upsamplelib.install.course_install_command``
and a call with the repository that pyproject.toml names, so that a lesson
opened on Colab installs the course before ``import upsamplelib``. This
script writes that prologue into the solutions (everything above the cell's
first ``import upsamplelib``), so changing the function or the repository URL
takes one edit and ``make lessons``; ``--check`` reports a stale one.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
LESSONS = ROOT / "lessons"
INSTALL_MODULE = ROOT / "upsamplelib" / "install.py"
PROLOGUE_FIRST_LINE = "# Colab, or a Jupyter outside the course's environment: install the course first (once)."
FIRST_IMPORT = re.compile(r"^import upsamplelib\b|^from upsamplelib\b", re.M)


def repository_url() -> str:
    """The repository URL, from pyproject.toml's [project.urls] (its one home)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    match = section and re.search(r'^Repository\s*=\s*"([^"]+)"', section.group(1), re.M)
    if not match:
        raise ValueError("pyproject.toml: [project.urls] has no Repository")
    return match.group(1)


def colab_url(repository: str, notebook: str, branch: str = "main") -> str:
    """The "Open in Colab" address of a notebook of a GitHub repository."""
    github = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?/?", repository)
    if not github:
        raise ValueError(f"{repository}: Colab opens notebooks of GitHub repositories only")
    return f"https://colab.research.google.com/github/{github.group(1)}/blob/{branch}/{notebook}"


def install_prologue(repository: str) -> str:
    """The start of every lesson's first code cell: the install check and
    the call that runs it (nothing when upsamplelib is importable)."""
    module = INSTALL_MODULE.read_text(encoding="utf-8")
    (function,) = [node for node in ast.parse(module).body
                   if isinstance(node, ast.FunctionDef) and node.name == "course_install_command"]
    source = ast.get_source_segment(module, function)
    return (
        f"{PROLOGUE_FIRST_LINE}\n"
        "import importlib.util, shutil, subprocess, sys\n\n\n"
        f"{source}\n\n\n"
        "command = course_install_command(\n"
        f'    "{repository}",\n'
        '    upsamplelib_found=importlib.util.find_spec("upsamplelib") is not None,\n'
        '    nvidia_driver=shutil.which("nvidia-smi") is not None,\n'
        ")\n"
        "if command:\n"
        "    subprocess.run(command, check=True)\n"
        "    importlib.invalidate_caches()  # let this running kernel see the new package\n\n"
    )


def with_install_prologue(source: str, repository: str, where: str) -> str:
    """``source`` (a first code cell) with the current prologue above its
    first ``import upsamplelib``, replacing an older prologue."""
    first_import = FIRST_IMPORT.search(source)
    if not first_import:
        raise MarkerError(f"{where}: the first code cell must import upsamplelib (the install prologue goes above)")
    above = source[:first_import.start()]
    if above.strip() and not above.startswith(PROLOGUE_FIRST_LINE):
        raise MarkerError(f"{where}: code above the first `import upsamplelib` of the first code cell")
    return install_prologue(repository) + source[first_import.start():]


def first_code_cell(notebook: dict) -> dict:
    return next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")

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


def updated_solution(notebook: dict, repository: str, name: str) -> dict:
    """The solution as it should be stored: the current install prologue in
    its first code cell (same outputs: the prologue prints nothing where the
    course is installed), and no widget state (random model ids that change
    on every run; nbval ignores it)."""
    notebook = copy.deepcopy(notebook)
    notebook.get("metadata", {}).pop("widgets", None)
    cell = first_code_cell(notebook)
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    updated = with_install_prologue(source, repository, f"{name}, first code cell")
    if updated != source:
        cell["source"] = updated.splitlines(keepends=True)
    return notebook


def stale_solutions(repository: str):
    """(path, up-to-date text) of every solution whose stored text differs."""
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        text = path.read_text(encoding="utf-8")
        notebook = json.loads(text)
        wanted = updated_solution(notebook, repository, path.name)
        if wanted != notebook:
            yield path, dumps(wanted)


def expected_lessons():
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        solution = json.loads(path.read_text(encoding="utf-8"))
        yield LESSONS / path.name, dumps(make_lesson(solution, path.name))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report lessons that are out of date")
    args = parser.parse_args(argv)
    stale_sources = list(stale_solutions(repository_url()))
    if not args.check:
        for path, text in stale_sources:
            path.write_text(text, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)} (install prologue, widget state)")
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
        for path, _ in stale_sources:
            print(f"stale install prologue or widget state: {path.relative_to(ROOT)} (run `make lessons`)")
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)} (run `make lessons`)")
        for path in orphans:
            print(f"no solution for: {path.relative_to(ROOT)}")
        return 1 if stale or orphans or stale_sources else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
