#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and the release binary: every GPU stage against the CPU
# backend on fresh random and clustered data, then timings against PyTorch, faiss-cpu and our
# CPU backend. Prints one table last; full numbers in $OUT/gpu-check.json (OUT defaults to
# ./gpu-check-out).
#
#   scripts/gpu-check.sh [path/to/vecbuild] [--quick]
#
# Needs: the NVIDIA driver, libnvrtc and libcublas (a CUDA toolkit, or PyTorch's wheels: they
# are found and put on LD_LIBRARY_PATH here), python3 with numpy, pyarrow and torch; faiss-cpu
# optional (its timing is skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
VB=${1:-target/release/vecbuild}
shift || true
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

source scripts/gpu-env.sh
"$VB" doctor
case " $* " in
    *" --emulated "*) echo "--emulated: the emulator's NVRTC makes no cubins (the tests compile every kernel for sm_80/sm_90)" ;;
    *) "$VB" doctor --check-kernels sm_80,sm_90 ;;
esac
PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --vecbuild "$VB" --work "$WORK" --out "$OUT" "$@"
