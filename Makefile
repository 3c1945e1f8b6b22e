# One entry point. `make demo` and `make test` create .venv on first use.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint bench bench-peers bench-serving protos serve fuzz contract clean

$(STAMP): pyproject.toml requirements.txt constraints.txt third_party/fbgemm-gpu-cpu-shim/pyproject.toml protos/ctr/scoring/v1/scorer.proto
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	$(BIN)/python -m serving.codegen >/dev/null   # gRPC stubs from protos/ (tests/serving/test_codegen.py checks them)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ctr run pipelines/examples/synthetic.yaml --summary-json runs/demo-summary.json

test: $(STAMP)
	$(BIN)/ruff check ctr pipelines serving tests fuzz benchmarks
	$(BIN)/lint-imports
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.train_throughput
	$(BIN)/python -m benchmarks.ray_scale
	$(BIN)/python -m benchmarks.serving_latency
	$(BIN)/python -m benchmarks.step_profile
	$(BIN)/python -m benchmarks.field_attention
	$(BIN)/python -m benchmarks.embedding_methods --seeds 2021 2022 2023
	$(BIN)/python -m benchmarks.unified_budget pipelines/examples/unified_ml100k.yaml --budgets 0.1 0.5 1.0 --seeds 2021 --out bench-results/unified_ml100k.json

# ctr vs deepctr-torch and torch-rechub on the same encoded data (creates .bench-peers on first use; long)
bench-peers: $(STAMP)
	$(BIN)/python -m benchmarks.peer_compare --mlflow-experiment ctr-bench-peers
	$(BIN)/python -m benchmarks.peer_compare --data movielens --models din --name peers_din --mlflow-experiment ctr-bench-peers
	$(BIN)/python -m benchmarks.scale_sweep

bench-serving: $(STAMP)
	$(BIN)/python -m benchmarks.serving_latency

# the scorer's request-path fuzz target for 10 minutes (make test runs it for 60 s)
fuzz: $(STAMP)
	$(BIN)/python fuzz/fuzz_score_request.py -max_total_time=600 -rss_limit_mb=4096

protos: $(STAMP)
	$(BIN)/python -m serving.codegen

# serve the demo's champion (after `make demo` and `ctr models promote ... --alias champion`)
serve: $(STAMP)
	$(BIN)/ctr serve --model models:/ctr-synthetic-autoint-plus@champion --metrics-port 9095

contract: $(STAMP)
	../shared/bin/check-contract

clean:
	rm -rf runs .ctr_cache mlruns.db mlartifacts bench-results
