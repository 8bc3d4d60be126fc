# The two commands a user needs: `make demo` and `make test`. Both create .venv if missing.
# `make docs` builds the documentation site into site/.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo-output

.PHONY: demo test test-quick docs lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,decode,timm,clip,docs,export,logging,wandb]'
	touch $@

# fp32 (amp=none): the README's numbers on any CPU, with or without native bf16 (where
# amp auto means bf16; docs/training.md).
demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(BIN)/lwr prepare-data synthetic --out $(DEMO)/data --imbalance-factor 100 --seed 0
	$(BIN)/lwr train --preset synthetic-lt-bs --data $(DEMO)/data --out $(DEMO)/run-bs --set amp=none
	$(BIN)/lwr train --preset synthetic-lt-bs-lwr --data $(DEMO)/data --out $(DEMO)/run-bs-lwr --set amp=none
	$(BIN)/lwr eval $(DEMO)/run-bs/checkpoints/last.safetensors --data $(DEMO)/data --out $(DEMO)/eval-bs
	$(BIN)/lwr eval $(DEMO)/run-bs-lwr/checkpoints/last.safetensors --data $(DEMO)/data --out $(DEMO)/eval-bs-lwr
	$(BIN)/lwr analyze-weights $(DEMO)/run-bs/checkpoints/last.safetensors $(DEMO)/run-bs-lwr/checkpoints/last.safetensors --data $(DEMO)/data --out $(DEMO)/analysis
	@echo
	@echo "Demo outputs are in $(DEMO)/: data/ (prepared dataset), run-bs/ and run-bs-lwr/ (runs),"
	@echo "eval-bs/ and eval-bs-lwr/ (accuracy tables), analysis/ (weight plots + summary.json)."

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The quick tier: everything but the end-to-end runs marked slow (a few minutes on 2 cores).
test-quick: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

# The site from docs/ (mkdocs.yml): --strict, so a broken link or a page left out of nav fails.
docs: $(BIN)/python
	@$(BIN)/python -c 'import mkdocs, material' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

lint: $(VENV)/.installed
	$(BIN)/ruff check lwrcli tests benchmarks

clean:
	rm -rf $(DEMO) .pytest_cache site
