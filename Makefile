# Two commands from a fresh clone: `make demo` runs the quickstart study, `make test` the tests.
# Both install first; the install is skipped while .venv is newer than pyproject/constraints.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := ray,nni,onnx,pruning,plot,dev,postgres,transformers

.PHONY: install demo test bench bench-quick bench-smoke test-slow lint clean-studies chromium postgres

install: $(STAMP)

# One pip call resolves everything against the exact tested versions (constraints.txt);
# torch==2.13.0 there keeps pip on the CPU wheel instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c constraints.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: install
	$(BIN)/autocompress search studies/quickstart.yaml

test: install chromium postgres
	$(BIN)/python -m pytest -m "not slow" -q

# Every benchmark (about an hour on 2 cores), the reduced versions (about 4 minutes), or the
# smallest ones, every benchmark included (about 2 minutes: they only prove the code still runs).
bench: install
	$(BIN)/python -m benchmarks

bench-quick: install
	$(BIN)/python -m benchmarks --quick

bench-smoke: install
	$(BIN)/python -m benchmarks --smoke --all

test-slow: install
	$(BIN)/python -m pytest -m slow -q

lint: install
	$(BIN)/ruff check .

clean-studies:
	rm -rf studies/*/

# The report test opens report.html in headless Chromium (Debian's package); where it cannot
# be installed the test says so and is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || \
		echo "chromium could not be installed: the report rendering test will be skipped"; }

# The RDBStorage tests start a throwaway PostgreSQL server (Debian's package, whose binaries live
# in /usr/lib/postgresql/<ver>/bin, off PATH); where it cannot be installed they are skipped.
postgres:
	@{ command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 || \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 || \
		echo "postgresql could not be installed: the PostgreSQL storage tests will be skipped"; }
