"""The README: its library example runs, and starts without compiling once
`make setup` has warmed the cache; its links and install advice are right."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "tools"))

import make_lessons  # noqa: E402

REPOSITORY = make_lessons.repository_url()


def _python_blocks():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    return blocks


def test_library_example_runs(capsys):
    for block in _python_blocks():
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([2, 64, 64, 64])" in printed


_CHANNELS_LAST_MAPS = """
import torch, upsamplelib as ul
for dtype in (torch.float32, torch.float64):
    x = torch.randn(2, 16, 20, 20, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    for mode in ("nearest", "bilinear"):
        ul.interpolate(x, scale_factor=2, mode=mode, backend="cpu").sum().backward()
    de, weight = torch.randn(2, 16, 10, 10, dtype=dtype), torch.randn(4, 16, 3, 3, dtype=dtype)
    ul.semi_shift_conv(x, de, weight, None, 2, backend="cpu").sum().backward()
"""


def test_library_example_compiles_nothing_after_the_warmup(tmp_path):
    """What makes the example start in seconds in a fresh clone: every Numba
    function it calls is in the cache that `make setup` filled
    (upsamplelib.warmup); channels-last maps' loops too. NUMBA_DEBUG_CACHE
    reports each compilation that is saved to the cache; there must be none."""
    env = dict(os.environ, UPSAMPLELIB_QUIET="1")
    subprocess.run([sys.executable, "-m", "upsamplelib.warmup"], env=env, check=True, capture_output=True,
                   timeout=1800)
    (tmp_path / "example.py").write_text("\n".join(_python_blocks()))
    (tmp_path / "channels_last.py").write_text(_CHANNELS_LAST_MAPS)
    for script in ("example.py", "channels_last.py"):
        result = subprocess.run([sys.executable, script], env=dict(env, NUMBA_DEBUG_CACHE="1"), cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        compiled = [line for line in result.stdout.splitlines() if line.startswith("[cache] data saved")]
        assert compiled == [], f"{script} compiled although warmed:\n" + "\n".join(compiled)
        assert any(line.startswith("[cache] data loaded") for line in result.stdout.splitlines())


def test_install_advice_names_the_repository():
    text = README.read_text()
    commands = re.findall(r'pip install "upsamplelib\[(\w+)\] @ git\+([^"]+)"', text)
    assert commands and all(url == REPOSITORY for _, url in commands)
    assert "<this repository>" not in text
    # Only an install from the repository works: the package is on no index.
    for line in re.findall(r"pip install [^\n`]*upsamplelib[^\n`]*", text):
        assert "@ git+" in line, line


def test_every_lesson_has_its_colab_link():
    text = README.read_text()
    for lesson in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")):
        link = make_lessons.colab_url(REPOSITORY, f"lessons/{lesson.name}")
        assert f"(lessons/{lesson.name}) | [Colab]({link}) |" in text, lesson.name
    for link in re.findall(r"https://colab\.research\.google\.com/[^)\s]+", text):
        notebook = link.split("/blob/main/", 1)[1]
        assert link == make_lessons.colab_url(REPOSITORY, notebook) and (ROOT / notebook).exists()


def test_every_github_address_is_the_repository():
    text = README.read_text()
    for address in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text):
        assert address == REPOSITORY


def test_relative_links_point_to_files_that_exist():
    for target in re.findall(r"\]\(([^)#:]+)\)", README.read_text()):
        assert (ROOT / target).exists(), target


def test_the_operator_specification_is_in_the_repository():
    text = README.read_text()
    assert "(docs/operators.md)" in text and "SPEC.md" not in text
    operators = (ROOT / "docs" / "operators.md").read_text()
    for name in ("ul.interpolate", "ul.carafe", "ul.CARAFE", "ul.sapa_similarity", "ul.SAPA",
                 "ul.semi_shift_conv", "ul.FADE", "backend=", "torch.ops.upsamplelib"):
        assert name in operators, name


def test_platforms_named_are_the_ones_ci_runs():
    text = README.read_text()
    assert "macOS 14+ on Apple silicon" in text and "Linux" in text
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "macos-14" in workflow and "ubuntu-latest" in workflow
    assert "Windows" not in text
