# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run` installs the server and the publishing client (the webcam example);
# `make test` adds the test, bench and cluster extras.
RUN_STAMP := $(VENV)/.installed-run
# The same suite on the oldest versions pyproject.toml allows (constraints/oldest.txt).
OLDEST       ?= .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed

.PHONY: run test test-oldest bench soak install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[client,test,bench,cluster]'
	touch $(STAMP)

$(OLDEST_STAMP): pyproject.toml constraints/oldest.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet --upgrade pip
	$(OLDEST)/bin/pip install --quiet -c constraints/oldest.txt -e '.[client,test,bench,cluster]'
	touch $(OLDEST_STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[client]'
	touch $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/robogpt-video serve --config config.yaml

# The system programs the tests run: installed with apt-get as root, else the command
# that installs them is printed (tools/test-packages).
test: $(STAMP)
	tools/test-packages
	$(BIN)/python -m pytest -q

test-oldest: $(OLDEST_STAMP)
	tools/test-packages
	$(OLDEST)/bin/python -m pytest -q

# Standard benchmark set, ours vs the Flask baseline (~9 min): writes bench/REPORT.md.
bench: $(STAMP)
	tools/test-packages bench
	$(BIN)/python -m bench.run

# Soak: 50 streams × 30 fps × 1 viewer for 10 min by default; writes bench/SOAK.md.
# Other loads: make soak SOAK="--streams 100 --fps 10 --viewers 2 --minutes 30"
SOAK ?=
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK)

clean:
	rm -rf $(VENV) $(OLDEST) build dist *.egg-info .pytest_cache
