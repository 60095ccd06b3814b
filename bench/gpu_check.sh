#!/usr/bin/env bash
# The GPU check of the fast path (bench/gpu_check.py) on a GPU machine, from the repository root:
#
#   OUT=/some/folder bash bench/gpu_check.sh            # writes $OUT/gpu_check.json and $OUT/gpu_check.log
#   bash bench/gpu_check.sh --skip done                 # extra flags go to gpu_check.py
#
# Everything else (fake data, runs, compiler and CUDA caches, bytecode) goes to one temporary
# folder, removed at the end; nothing is written outside the repository and that folder but the
# two files above. The interpreter is $PYTHON, else .venv/bin/python if present, else python3.
# Exit status: gpu_check.py's (0: every target met; 1: a target missed or a step failed; 2: bad
# flags or no CUDA device).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
out_dir="${OUT:-.}"
mkdir -p "$out_dir" || exit 2

tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")" || exit 2
trap 'rm -rf "$tmp"' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi

# Caches that would otherwise land in $HOME or /tmp go to the temporary folder.
export PYTHONUNBUFFERED=1
export TMPDIR="$tmp"
export PYTHONPYCACHEPREFIX="$tmp/pycache"
export TORCHINDUCTOR_CACHE_DIR="$tmp/inductor"
export TRITON_HOME="$tmp"
export TRITON_CACHE_DIR="$tmp/triton"
export CUDA_CACHE_PATH="$tmp/nv"
export XDG_CACHE_HOME="$tmp/cache"
export MPLCONFIGDIR="$tmp/matplotlib"

started=$SECONDS
log="$out_dir/gpu_check.log"
echo "[gpu_check.sh] $("$python" --version 2>&1) in $(pwd); temporary folder $tmp; output in $out_dir" | tee "$log"
"$python" bench/gpu_check.py --out "$out_dir/gpu_check.json" --workdir "$tmp/work" "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
echo "[gpu_check.sh] exit status $status after $((SECONDS - started)) s" | tee -a "$log"
exit "$status"
