# Two commands set up everything on a fresh machine:  make repro  (the whole pipeline)  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Stages call papermill and jupyter from the venv; DVC's usage analytics stay off.
RUN    := PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
LAB_PORT ?= 8888
DATASET  ?= cub200

.PHONY: env repro paper test lint lab clean-env

env: $(STAMP)

# Reinstalled only when a requirement file changes.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# data/ is where users place the paper datasets (tracked by data.dvc). A fresh clone has none: create it empty
# and record that empty folder in DVC's cache, so that `dvc status` is clean (data.dvc does not change).
repro: env
	mkdir -p data
	[ -n "$$(ls -A data)" ] || $(RUN) $(BIN)/dvc add -q data
	$(RUN) $(BIN)/dvc repro
	$(BIN)/python scripts/readme_table.py

# The paper-scale profile on one placed dataset (cub200 | cars196 | inshop) as a DVC experiment: params-paper.yaml
# laid over params.yaml with -S overrides (eatlib.profiles), so params.yaml itself stays the glyphs profile.
paper: env
	$(BIN)/python -c "from eatlib.data import load_splits; load_splits('$(DATASET)', 'data')" > /dev/null
	$(RUN) $(BIN)/dvc exp run --name paper-$(DATASET) \
		$$($(BIN)/python -m eatlib.profiles params-paper.yaml) -S data.name=$(DATASET)

test: env
	$(RUN) $(BIN)/python -m pytest

lint: env
	$(BIN)/ruff check eatlib tests benchmarks

# JupyterLab on loopback only, behind a random token (printed in the URL); --allow-root only when run as root.
lab: env
	$(RUN) $(BIN)/jupyter lab --ip=127.0.0.1 --port=$(LAB_PORT) --no-browser \
		--IdentityProvider.token="$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(24))')" \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean-env:
	rm -rf $(VENV)
