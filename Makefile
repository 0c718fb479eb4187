# Two commands for a newcomer: `make lab` (start the course) and `make test`
# (run every test). Both first run `make setup`, which creates or updates
# the virtual environment in .venv and does nothing when it is up to date.
#
#   make setup CUDA=cu12     switch the environment to another toolkit
#   make lab ARGS="--port 9999 --ip 0.0.0.0"
#   make test CUDA=none      numba's built-in simulator, no CUDA wheels at all

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Which CUDA toolkit the environment gets, as numba-cuda's extras name them:
#   cu13  numba-cuda with CUDA 13 toolkit wheels: a CUDA 13 driver, or a Linux
#         machine with no GPU (the simulator, and the PTX check of `make test`)
#   cu12  the same with CUDA 12 wheels, for a driver whose nvidia-smi says 12.x
#   none  no numba-cuda: numba's built-in CUDA simulator, no toolkit; the only
#         choice on macOS, where numba-cuda has no wheels
# The choice is remembered in the environment: once `make setup CUDA=cu12` has
# run, a plain `make lab` or `make test` keeps cu12 until CUDA= says otherwise.
TOOLKIT_FILE := $(VENV)/upsamplelib-toolkit
PLATFORM_TOOLKIT := $(if $(filter Darwin,$(shell uname -s)),none,cu13)
ifeq ($(origin CUDA),undefined)
CUDA := $(or $(shell cat $(TOOLKIT_FILE) 2>/dev/null),$(PLATFORM_TOOLKIT))
endif
ifeq ($(filter $(CUDA),cu13 cu12 none),)
$(error CUDA=$(CUDA): expected cu13, cu12 or none)
endif
STAMP := $(VENV)/.upsamplelib-$(CUDA)

# The PTX check (tests/test_ptx.py) needs numba-cuda's compiler: with a
# toolkit it must run, and a missing compiler fails the tests; with
# CUDA=none it is skipped and says why.
export UPSAMPLELIB_REQUIRE_PTX := $(if $(filter none,$(CUDA)),0,1)
# Which toolkit the tests should find installed (tests/test_simulators.py).
export UPSAMPLELIB_TOOLKIT := $(CUDA)

# JupyterLab refuses to start as root unless told: containers, Colab, Docker.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup lab test test-lib test-notebooks test-browser lessons solutions bench experiments clean

setup: $(STAMP)

# TORCH_INDEX=<url> installs torch from that index (e.g. a CUDA 12 build).
$(STAMP): pyproject.toml constraints.txt tools/setup_env.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python tools/setup_env.py --toolkit $(CUDA) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))
	@rm -f $(VENV)/.upsamplelib-*
	@touch $@

lab: setup
	@echo "JupyterLab is starting: open the http://127.0.0.1:... URL it prints below (Ctrl-C stops it)."
	$(BIN)/jupyter lab --notebook-dir=lessons $(ROOT_FLAG) $(ARGS)

test: test-lib test-notebooks

test-lib: setup
	$(BIN)/python -m pytest tests

test-notebooks: setup
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tools/nbval_sanitize.cfg solutions
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env lessons

# The lessons' widgets in a real browser (tests_browser/): JupyterLab on a
# copy of the lessons, headless Chromium driven by playwright, screenshots in
# build/browser/. It needs a Chromium on the machine (Debian: apt-get install
# chromium; or CHROMIUM=/path/to/chrome); playwright downloads no browser.
BROWSER_STAMP := $(VENV)/.upsamplelib-browser
test-browser: $(BROWSER_STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests_browser

$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[browser]"
	@touch $@

# Regenerate the student notebooks from the executed solutions.
lessons: setup
	$(BIN)/python tools/make_lessons.py

# Re-execute the solution notebooks in place (after editing one), then
# regenerate the lessons from them.
solutions: setup
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 solutions/*.ipynb
	$(BIN)/python tools/make_lessons.py

# The capstone's full experiment (2 tasks x 7 upsamplers x 3 seeds; 51 min on a shared
# 2-core machine, the wall_seconds results.json records). Lesson 06 reads its results.
experiments: setup
	$(BIN)/python -m upsamplelib.experiments grid --json upsamplelib/experiments/results.json

# The benchmark report (a few minutes): one table, build/bench/bench.csv and
# build/bench/bench.png. ARGS="--quick" is a smoke run; ARGS="ops" one section.
bench: setup
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
