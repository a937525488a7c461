PY := .venv/bin/python

.PHONY: setup demo test clean

setup:
	@bash scripts/setup.sh

# Generate with the tiny offline pipeline, then score with the tiny Qwen3-VL on vLLM (CPU).
demo: setup
	$(PY) -m gen.run
	$(PY) -m score.run

test: setup
	$(PY) -m pytest

clean:
	rm -rf runs .cache
