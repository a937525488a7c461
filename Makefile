PY := .venv/bin/python

.PHONY: setup demo test clean

setup:
	@bash scripts/setup.sh

# Generate with the tiny offline pipeline, then score with the tiny Qwen3-VL on vLLM (CPU).
demo: setup
	$(PY) -m gen.run
	$(PY) -m score.run

# Test workers, one per core (at most 4): most tests spend their time in one process's imports.
test: setup
	$(PY) -m pytest -n auto --maxprocesses 4

clean:
	rm -rf runs .cache
