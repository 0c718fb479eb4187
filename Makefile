# Two commands for a newcomer: `make lab` (start the course) and `make test`
# (run every test). Both first run `make setup`, which creates or updates
# the virtual environment in .venv and does nothing when it is up to date.

PYTHON ?= python3
# numba-cuda's toolkit extra: cu13 (default; also right with no GPU) or cu12
# for a driver that reports CUDA 12.x in nvidia-smi.
CUDA ?= cu13
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.upsamplelib-$(CUDA)

.PHONY: setup lab test test-lib test-notebooks lessons solutions bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -c constraints.txt -e ".[course,test,$(CUDA)]"
	@rm -f $(VENV)/.upsamplelib-*
	@touch $@

lab: setup
	$(BIN)/jupyter lab --notebook-dir=lessons

test: test-lib test-notebooks

test-lib: setup
	$(BIN)/python -m pytest tests

test-notebooks: setup
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tools/nbval_sanitize.cfg solutions
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env lessons

# Regenerate the student notebooks from the executed solutions.
lessons: setup
	$(BIN)/python tools/make_lessons.py

# Re-execute the solution notebooks in place (after editing one), then
# regenerate the lessons from them.
solutions: setup
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 solutions/*.ipynb
	$(BIN)/python tools/make_lessons.py

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
