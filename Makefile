# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[client,test,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/robogpt-video serve --config config.yaml

test: $(STAMP)
	@command -v ffmpeg >/dev/null || { echo "ffmpeg is required by the tests: apt-get install ffmpeg"; exit 1; }
	@command -v chromium >/dev/null || { echo "chromium is required by tests/test_browser.py: apt-get install chromium"; exit 1; }
	$(BIN)/python -m pytest -q

# Standard benchmark set, ours vs the Flask baseline (~4 min): writes bench/REPORT.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
