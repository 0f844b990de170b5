#!/usr/bin/env bash
# The main job end to end on a fresh machine, no GPU and no download: generate a clustered
# dataset, build an index, compute exact ground truth, search, and print recall and timings.
#
# usage: scripts/demo.sh [ROWS] [DIM]      (default 100000 × 128; work files in ./demo-out)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-100000}
dim=${2:-128}
out=demo-out
mkdir -p "$out"
cargo build --release --quiet
vb=target/release/vecbuild

$vb generate --rows "$rows" --dim "$dim" --clusters 1000 --out "$out/base.parquet" \
    --queries 1000 --queries-out "$out/queries.parquet"
$vb build --input "$out/base.parquet" --index flat --metric l2 --out "$out/base.vbx"
$vb info "$out/base.vbx"
$vb knn --base "$out/base.parquet" --queries "$out/queries.parquet" --k 100 --out "$out/truth.parquet"
$vb search --index "$out/base.vbx" --queries "$out/queries.parquet" --k 10 --out "$out/results.parquet"
$vb eval --results "$out/results.parquet" --truth "$out/truth.parquet" --k 10
