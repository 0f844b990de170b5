#!/usr/bin/env bash
# Benchmarks vecbuild against its peers on the same data, same machine, same threads, one run,
# and prints ratios (peer time / vecbuild time: above 1.0 means vecbuild is faster).
#
#   Parquet read:  `vecbuild validate` vs pyarrow read_table + conversion to a float32 matrix
#   Exact k-NN:    `vecbuild search` on a flat artifact vs faiss IndexFlatL2.search
#   IVF-PQ:        build and recall/QPS curves vs faiss IndexIVFPQ (with and without re-ranking)
#   CAGRA:         graph build vs hnswlib (M=16) and faiss HNSW32 (efConstruction 200), and
#                  recall@10/QPS curves (itopk_size vs ef), QPS at recall 0.95 and 0.99, and
#                  the curves of hnswlib and faiss searching our graph through `export`
#
# usage: scripts/bench-peers.sh [--rows N] [--dim D] [--queries Q] [--k K] [--threads T]
#                               [--spread S] [--base FILE.parquet --query-file FILE.parquet]
#                               [--repeats N] [--skip-ivf-pq] [--skip-cagra]
# Without --base, the data is `vecbuild generate`'s, 1000 clusters, seed 7; --spread S (default
# 0.35: clusters far apart) towards 1 makes them overlap. Given files must have the schema `id`
# (integer) + `embedding` (list of float).
# Quote figures only from an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=200000 dim=128 queries=10000 k=10 threads=$(nproc) spread="" base="" qfile="" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    --dim) dim=$2; shift 2 ;;
    --queries) queries=$2; shift 2 ;;
    --k) k=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --spread) spread=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --query-file) qfile=$2; shift 2 ;;
    --repeats) extra+=(--repeats "$2"); shift 2 ;;
    --skip-ivf-pq|--skip-cagra) extra+=("$1"); shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet --disable-pip-version-check numpy pyarrow faiss-cpu hnswlib
fi
.venv-bench/bin/python -c 'import hnswlib' 2>/dev/null \
  || .venv-bench/bin/pip install --quiet --disable-pip-version-check hnswlib
cargo build --release --quiet
mkdir -p bench-data
if [ -z "$base" ]; then
  tag=${spread:+-spread$spread}
  base=bench-data/base-${rows}x${dim}$tag.parquet
  qfile=bench-data/queries-${queries}x${dim}$tag.parquet
  if [ ! -f "$base" ] || [ ! -f "$qfile" ]; then
    target/release/vecbuild generate --rows "$rows" --dim "$dim" --clusters 1000 --seed 7 \
      ${spread:+--spread "$spread"} --out "$base" --queries "$queries" --queries-out "$qfile"
  fi
fi
.venv-bench/bin/python scripts/bench_peers.py --vecbuild target/release/vecbuild \
  --base "$base" --queries "$qfile" --k "$k" --threads "$threads" --work bench-data "${extra[@]}"
