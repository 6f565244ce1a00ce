# The two commands of the README's quick start. Both work on a fresh machine with Python 3.11 and git.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo exps test test-fast install clean-data

# Create .venv if missing and (re)install the project when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Run the whole pipeline on the embedded demo datasets, recorded as the DVC experiment
# demo-<commit> (so `dvc exp show` has a row for it beside `dvc exp run -S model.encoder=baseline`).
# Once that experiment exists, `make demo` is a plain `dvc repro`: nothing runs when nothing changed.
DEMO_EXP = demo-$(shell git rev-parse --short HEAD 2>/dev/null || echo nogit)
demo: $(STAMP)
	@if dvc exp list --name-only 2>/dev/null | grep -qx '$(DEMO_EXP)'; then dvc repro; \
	else dvc exp run --name $(DEMO_EXP); fi

# The experiments, one row each: the switches and the headline metrics (README: Comparing runs).
EXP_KEEP = ^(Experiment|Created|State|preset|params\.yaml:model\.encoder|model\.vit\..*|params\.yaml:train\.seed)$$|^metrics/pretrain\.json:(coca_loss|contrastive_loss|perplexity)$$|^metrics/eval-pretrain\.json:(bleu4|cider|i2t_r1)$$
exps: $(STAMP)
	dvc exp show --no-pager --md --drop '.*' --keep '$(EXP_KEEP)'

# Run the whole test suite (CI runs this). The MLflow UI test drives headless Chromium (Debian's
# package), installed when missing; the 15 slowest tests are listed at the end.
test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	python -m pytest --durations=15

# The fast tier, for the inner loop: no multi-process or img2dataset tests, no dvc repro, no browser.
test-fast: $(STAMP)
	python -m pytest -m "not slow and not e2e and not browser" --durations=15

clean-data:
	rm -rf data metrics
