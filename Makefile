# The two commands of the README's quick start. Both work on a fresh machine with Python 3.11 and git.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test install clean-data

# Create .venv if missing and (re)install the project when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Run the whole pipeline on the embedded demo datasets.
demo: $(STAMP)
	dvc repro

# Run the test suite. The MLflow UI test drives headless Chromium (Debian's package), installed when missing.
test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	python -m pytest

clean-data:
	rm -rf data metrics
