"""Installing the course where it is missing: Colab, or a Jupyter started
outside the course's environment.

Every lesson's first code cell carries a copy of ``course_install_command``
(``tools/make_lessons.py`` writes it there from this file, with the
repository named in pyproject.toml) and runs the command it returns before
``import upsamplelib``. A copy, because the cell runs exactly where this
package cannot be imported yet. tests/test_install.py tests the function and
checks that every lesson carries this version of it.
"""

import re
import sys

#: The oldest torch release the library runs on. Every operator is registered
#: with ``torch.library.infer_schema`` (public from torch 2.5) and
#: ``register_fake``/``register_autograd`` (from 2.4). pyproject.toml and
#: environment.yml name the same floor (tests/test_install.py checks it).
OLDEST_TORCH = (2, 5)


def torch_version_problem(version):
    """Why torch ``version`` (a ``torch.__version__`` string) cannot run
    upsamplelib, as a message that says what to do; None when it can."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and (int(found.group(1)), int(found.group(2))) >= OLDEST_TORCH:
        return None
    oldest = ".".join(map(str, OLDEST_TORCH))
    return (f"upsamplelib needs torch {oldest} or newer (its operators are registered with "
            f"torch.library.infer_schema, register_fake and register_autograd), but this is torch {version}. "
            f'Upgrade it: pip install -U "torch>={oldest}", or `make setup` in the course; then restart Python '
            "(in Jupyter: restart the kernel), which has the old torch loaded.")


def course_install_command(repository, upsamplelib_found, nvidia_driver, python=sys.executable):
    """The pip command that installs the course from its repository, or None
    when upsamplelib can be imported already.

    With an NVIDIA driver, numba-cuda comes with its CUDA 12 wheels, which a
    CUDA 12 driver and a CUDA 13 one both run; without one, numba's built-in
    CUDA simulator needs no toolkit at all. torch is left as it is (Colab
    has one; pip installs one where it is missing).
    """
    if upsamplelib_found:
        return None
    extras = "course,cu12" if nvidia_driver else "course"
    return [python, "-m", "pip", "install", "--quiet", f"upsamplelib[{extras}] @ git+{repository}"]
