# Two commands set up everything on a fresh machine:  make repro  (the whole pipeline)  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# glibc keeps the memory it frees, on huge pages (eatlib/runtime.py: attacks 1.35-1.5x faster on this CPU);
# dvc.yaml puts the same in front of every stage, for a plain `dvc repro`.
TUNED  := GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647
# Stages call papermill and jupyter from the venv; DVC's usage analytics stay off.
RUN    := PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1 $(TUNED)
LAB_PORT ?= 8888
DATASET  ?= cub200

.PHONY: env repro paper verdict-grid test test-fast lint lab clean-env

env: $(STAMP)

# Reinstalled only when a requirement file changes.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	# rfc3987-syntax (jupyter-events' jsonschema[format-nongpl]) builds ~35 Lark parsers when imported, and nbformat
	# imports it: ~1.9 s in every papermill call, i.e. every stage. No notebook or Jupyter schema uses the IRI
	# formats it checks (jsonschema skips a checker whose library is missing). benchmarks/stage_startup.py
	$(BIN)/python -m pip uninstall --quiet --yes rfc3987-syntax
	touch $(STAMP)

# data/ is where users place the paper datasets (tracked by data.dvc). A fresh clone has none: create it empty
# and record that empty folder in DVC's cache, so that `dvc status` is clean (data.dvc does not change).
# scripts/repro.py runs `dvc repro` printing one line per stage ("[3/41] train@resnet-eat ... 2m13s"); each cell's
# output is in the executed notebooks under results/notebooks/. Target `report`: everything but the readings of
# EAT (make verdict-grid).
repro: env
	mkdir -p data
	[ -n "$$(ls -A data)" ] || $(RUN) $(BIN)/dvc add -q data
	$(RUN) $(BIN)/python scripts/repro.py report
	$(BIN)/python scripts/readme_table.py

# The paper-scale profile on one placed dataset (cub200 | cars196 | inshop) as a DVC experiment: params-paper.yaml
# laid over params.yaml with -S overrides (eatlib.profiles), so params.yaml itself stays the glyphs profile.
# PAPER_ARGS: more `dvc exp run` arguments, e.g. PAPER_ARGS="-S train.epochs=4 -S train.lr_milestones=[2,3]".
paper: env
	$(BIN)/python -c "from eatlib.data import load_splits; load_splits('$(DATASET)', 'data')" > /dev/null
	overrides="$$($(BIN)/python -m eatlib.profiles params-paper.yaml)" && \
		$(RUN) $(BIN)/dvc exp run --name paper-$(DATASET) $$overrides -S data.name=$(DATASET) $(PAPER_ARGS) report

# The readings of EAT in params.yaml (readings.variants, each over readings.seeds on readings.arch), trained and
# attacked in this workspace beside the default run's models (`dvc repro readings` makes those first if missing), then
# compared with them: results/verdict_readings.json and results/verdict_readings/ (notebook 08). About 5 min per
# reading and seed on this CPU; add readings to params.yaml, or remove some (readings.matched: PGD-AT at a reading's
# own compute, about 4 min per seed).
verdict-grid: env
	mkdir -p data
	[ -n "$$(ls -A data)" ] || $(RUN) $(BIN)/dvc add -q data
	$(RUN) $(BIN)/python scripts/repro.py readings
	$(BIN)/python scripts/readme_table.py

test: env
	$(RUN) $(BIN)/python -m pytest --durations=15

# The development lane: every test not marked slow (pytest -m "not slow"), under 3 minutes.
test-fast: env
	$(RUN) $(BIN)/python -m pytest -m "not slow"

lint: env
	$(BIN)/ruff check eatlib tests benchmarks

# JupyterLab on loopback only, behind a fresh random token. Jupyter masks the token in its own log, so the recipe
# prints the URL to paste itself; the token reaches jupyter through JUPYTER_TOKEN (not visible in `ps`).
# port_retries=0: a busy LAB_PORT is an error, not a server on another port than the printed URL. --allow-root
# only when run as root.
lab: env
	@token="$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(24))')" && [ -n "$$token" ] && \
	echo "JupyterLab: open http://127.0.0.1:$(LAB_PORT)/lab?token=$$token" && \
	exec env $(RUN) JUPYTER_TOKEN="$$token" $(BIN)/jupyter lab --ip=127.0.0.1 --port=$(LAB_PORT) \
		--ServerApp.port_retries=0 --no-browser $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean-env:
	rm -rf $(VENV)
