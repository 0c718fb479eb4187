"""Every lesson ends with "Check your understanding" questions; their answers are for instructors only.

The format, for every lesson NN (a new lesson follows it too):

* The last two cells of ``solutions/NN_*.ipynb`` are markdown cells:
  1. the questions, visible to students: the first line is exactly
     ``## Check your understanding``, then 3 to 5 questions as a numbered
     Markdown list (``1.``, ``2.``, ... at the start of a line; a question's
     further lines are indented, code blocks included);
  2. the answers, tagged ``solution-only`` (so ``tools/make_lessons.py``
     drops the cell from the lesson): the first line is exactly
     ``**Answers.**``, then one numbered answer per question, in order.
* No other cell of the solution holds a ``## Check your understanding``
  heading or an ``**Answers.**`` line.
* So the generated lesson ends with the questions cell, word for word, and
  contains no answer: no ``**Answers.**`` line, no sentence of an answer.

Questions test the lesson's own content (predict an output, explain a design
choice, spot a bug, estimate a cost); numbers stated in an answer are checked
by running the library, as the lesson's own figures are.
"""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import make_lessons  # noqa: E402

QUESTIONS_HEADING = "## Check your understanding"
ANSWERS_HEADING = "**Answers.**"
NUMBERED_ITEM = re.compile(r"^(\d+)\. ", re.M)
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))


def text(cell):
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def numbered_items(markdown):
    """The items of the top-level numbered list of ``markdown``, checked to run 1, 2, 3, ..."""
    starts = list(NUMBERED_ITEM.finditer(markdown))
    numbers = [int(match.group(1)) for match in starts]
    assert numbers == list(range(1, len(numbers) + 1)), f"items numbered {numbers}"
    ends = [match.start() for match in starts[1:]] + [len(markdown)]
    return [markdown[match.end():end] for match, end in zip(starts, ends)]


def sentences(answer):
    """The answer's sentences of some length, whitespace folded: what must not reach a student."""
    folded = " ".join(answer.split())
    return [s for s in re.split(r"(?<=[.:;!?])\s+", folded) if len(s) >= 40]


def questions_and_answers(notebook, name):
    cells = notebook["cells"]
    assert len(cells) >= 2, name
    questions, answers = cells[-2], cells[-1]
    assert questions["cell_type"] == "markdown" and text(questions).split("\n")[0] == QUESTIONS_HEADING, (
        f"{name}: the next to last cell must be the questions, starting with {QUESTIONS_HEADING!r}")
    assert "solution-only" not in tags(questions), f"{name}: the questions must reach the lesson"
    assert answers["cell_type"] == "markdown" and text(answers).split("\n")[0] == ANSWERS_HEADING, (
        f"{name}: the last cell must be the answers, starting with {ANSWERS_HEADING!r}")
    assert "solution-only" in tags(answers), f"{name}: the answers cell must be tagged solution-only"
    return questions, answers


def test_there_are_lessons():
    assert len(SOLUTIONS) >= 7


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_the_solution_ends_with_questions_and_their_answers(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    questions, answers = questions_and_answers(notebook, path.name)
    asked = numbered_items(text(questions))
    answered = numbered_items(text(answers))
    assert 3 <= len(asked) <= 5, f"{path.name}: {len(asked)} questions (3 to 5)"
    assert len(answered) == len(asked), f"{path.name}: {len(asked)} questions, {len(answered)} answers"
    assert all(item.strip() for item in asked + answered), f"{path.name}: an empty question or answer"
    for cell in notebook["cells"][:-2]:
        if cell["cell_type"] == "markdown":
            lines = text(cell).split("\n")
            assert QUESTIONS_HEADING not in lines and ANSWERS_HEADING not in lines, (
                f"{path.name}: questions or answers before the end of the notebook")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_the_lesson_ends_with_the_questions_and_holds_no_answer(path):
    solution = json.loads(path.read_text(encoding="utf-8"))
    questions, answers = questions_and_answers(solution, path.name)
    lesson_path = ROOT / "lessons" / path.name
    for lesson, where in [(make_lessons.make_lesson(solution, path.name), "generated"),
                          (json.loads(lesson_path.read_text(encoding="utf-8")), "lessons/")]:
        assert text(lesson["cells"][-1]) == text(questions), f"{path.name} ({where}): must end with the questions"
        everything = " ".join(" ".join(text(cell).split()) for cell in lesson["cells"])
        assert ANSWERS_HEADING not in everything, f"{path.name} ({where}): holds the answers cell"
        for answer in numbered_items(text(answers)):
            for sentence in sentences(answer):
                assert sentence not in everything, f"{path.name} ({where}): an answer reaches students: {sentence!r}"


def test_a_lesson_that_leaks_its_answers_is_caught():
    path = SOLUTIONS[0]
    solution = json.loads(path.read_text(encoding="utf-8"))
    solution["cells"][-1]["metadata"]["tags"] = []  # the answers cell, no longer solution-only
    with pytest.raises(AssertionError, match="tagged solution-only"):
        questions_and_answers(solution, path.name)
    lesson = make_lessons.make_lesson(solution, path.name)
    everything = " ".join(" ".join(text(cell).split()) for cell in lesson["cells"])
    leaked = [s for answer in numbered_items(text(solution["cells"][-1])) for s in sentences(answer)]
    assert leaked and all(sentence in everything for sentence in leaked)
