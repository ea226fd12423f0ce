# Two commands do all set-up on a fresh machine:  `make book` (the main job) and `make test`.
# Everything runs inside .venv, created on first use from pyproject.toml: `make book` installs
# only what the book needs (no torch), `make test` everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RESULTS := results
# The plan, read from reproresnet/reference.py (no dependency needed): PLAN_TIERS' networks tier by
# tier, and PLANNED_SEEDS
PLAN_OF = $(shell $(PYTHON) -c 'import reproresnet.reference as plan; print(*plan.$(1))')
ARCHS ?= $(call PLAN_OF,PLANNED)
SEEDS ?= $(call PLAN_OF,PLANNED_SEEDS)
DATA_DIR ?= data
# where `make reproduce` runs the sweep: local (this machine's GPUs) or slurm (with SWEEP_ARGS="--slurm-partition NAME ...")
LAUNCHER ?= local
SWEEP_ARGS ?=
# where `make book` writes _build/html (test-book-light builds a second copy elsewhere)
BOOK_OUT ?= .

.PHONY: all book readme test test-fast test-lib test-notebooks test-browser test-book-light smoke reproduce bench \
	campaign-home clean mutation-check

all: book

# Everything: training (torch), the book and the tests.
$(BIN)/reproresnet-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@ $(BIN)/reproresnet-book-installed

# The book only: pandas, matplotlib and Jupyter Book, no torch (its notebooks build no network).
$(BIN)/reproresnet-book-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# The README's status table, from the run records in results/ (a test fails when it is stale).
readme: $(BIN)/reproresnet-book-installed
	$(BIN)/python -m reproresnet pages --readme README.md

# The main job: a page per record, the README's table, then the book from the run records in
# results/ and the cheap notebooks (offline, no torch).
book: readme
	$(BIN)/jupyter-book build . --all -W --keep-going --path-output $(BOOK_OUT)  # --all: results/ may change
	$(BIN)/python scripts/check_book.py $(BOOK_OUT)/_build/html

# The newcomer's path, proved: the whole book built in a fresh virtual environment with the
# book's dependencies only, where torch cannot be imported.
test-book-light:
	rm -rf .venv-book
	$(MAKE) book VENV=.venv-book BOOK_OUT=.venv-book/site
	.venv-book/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
		|| (echo "test-book-light: torch is installed in .venv-book" >&2; exit 1)
	@echo "test-book-light: the whole book built without torch: .venv-book/site/_build/html"

test-lib: $(BIN)/reproresnet-installed
	$(BIN)/python -m pytest tests --ignore=tests/test_browser.py

# The quick tier, about a minute on 2 cores: every library test that starts no training process.
test-fast: $(BIN)/reproresnet-installed
	$(BIN)/python -m pytest -m "not slow" tests --ignore=tests/test_browser.py

test-notebooks: $(BIN)/reproresnet-installed
	$(BIN)/python -m pytest --nbval-lax notebooks/

# The built book, every page, in headless Chromium (apt-get install chromium chromium-driver).
test-browser: book
	$(BIN)/python -m pytest tests/test_browser.py

# The whole test suite: library, notebooks, and the book built once, checked, and read in a browser.
test: test-lib test-notebooks book test-browser test-book-light

# The reproduce pipeline end to end on a tiny budget, on CPU, with the embedded synthetic
# data: papermill over the three networks, then a book whose results page reads those runs.
smoke: $(BIN)/reproresnet-installed
	$(BIN)/python -m reproresnet sweep --archs $(ARCHS) --seeds 0 --results runs/smoke \
		--dataset synthetic --epochs 2 --limit-train 256 --limit-test 256 --device cpu
	REPRORESNET_RESULTS=$(CURDIR)/runs/smoke $(BIN)/python -m reproresnet pages
	REPRORESNET_RESULTS=$(CURDIR)/runs/smoke $(BIN)/jupyter-book build . --all -W --keep-going \
		--path-output runs/smoke-book
	@echo "smoke book: runs/smoke-book/_build/html/notebooks/results.html"

# The real thing, on a GPU with internet: CIFAR-10, the plan's networks in tier order x SEEDS, then the book.
reproduce: $(BIN)/reproresnet-installed
	$(BIN)/python -c "from reproresnet.data import load_splits; load_splits('cifar10', '$(DATA_DIR)', download=True)"
	$(BIN)/python -m reproresnet sweep --archs $(ARCHS) --seeds $(SEEDS) --results $(RESULTS) \
		--dataset cifar10 --data-dir $(DATA_DIR) --launcher $(LAUNCHER) $(SWEEP_ARGS)
	$(MAKE) book

bench: $(BIN)/reproresnet-installed
	$(BIN)/python -m reproresnet bench

# A GPU slot's bundle (bench/campaign.sh) brought home: restored into results/, and each
# complete run's page rendered by papermill without training.  make campaign-home BUNDLE=path
campaign-home: $(BIN)/reproresnet-installed
	$(BIN)/python -m reproresnet unbundle $(BUNDLE) --to $(RESULTS) --render

clean:
	rm -rf _build runs .venv-book book/runs

# Plants ~45 small bugs, one at a time, in a temporary copy of the repository and fails if
# the fast test tier misses any (slow: the fast tier once per mutation; not part of `make test`).
mutation-check: $(BIN)/reproresnet-installed
	$(BIN)/python scripts/mutation_check.py
