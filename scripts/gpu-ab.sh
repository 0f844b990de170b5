#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: two vecbuild binaries (NEW and OLD, e.g. HEAD and the last
# commit that ran on a GPU) timed against each other on the GPU stages, alternating, two rounds,
# on one set of generated files. Optionally runs the GPU tests of an integration-test binary
# first. Full logs under $OUT (default ./gpu-ab-out); the lines to compare in $OUT/ab.txt.
#
#   scripts/gpu-ab.sh NEW OLD [IT_TESTS] [--small]
#
#   1. IT_TESTS cuda (the GPU tests; the binary they run is NEW, copied where they look for it)
#   2. exact k-NN: bench-knn (base from the host, and --held where the binary has it) at
#      10-NN and 100-NN on 1M × 128 and 10-NN on 200k × 768, 10k queries; `knn --gpu 0` whole
#      runs on the 1M file
#   3. IVF-PQ 1M builds with VECBUILD_TRACE=1 (spans summed per name); search on the 1M index
#      (built once by NEW), 100k queries, n_probes 8/32/64, NEW with VECBUILD_GPU_PROBES=host
#      against its default (probes chosen on the device); re-ranking (--refine-ratio 4) on
#      the device against the host (VECBUILD_GPU_RERANK=host)
#   4. CAGRA 1M GPU builds with VECBUILD_TRACE=1 (trace spans summed per name), and NEW with
#      --gpu-precision tf32 (the cuBLAS join)
#   5. a batch query job: each binary's CAGRA index searched on the GPU with every base row as a
#      query (1M; --small: the 100 queries), whole CLI runs timed (NEW writes each batch's
#      results while the next is searched), and NEW searching OLD's index
#
# --small: sizes for a dry run on the CUDA emulator (LD_LIBRARY_PATH at its libraries).
# scripts/gpu-prepare.sh builds the binaries here; scripts/gpu-check.sh is the parity check.
set -uo pipefail
cd "$(dirname "$0")/.."
NEW=$(realpath "$1") OLD=$(realpath "$2")
shift 2
TESTS="" SMALL=""
for a in "$@"; do
    case "$a" in
        --small) SMALL=1 ;;
        *) TESTS=$(realpath "$a") ;;
    esac
done
OUT=${OUT:-$PWD/gpu-ab-out}
mkdir -p "$OUT"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
[ -n "$SMALL" ] || source scripts/gpu-env.sh
AB="$OUT/ab.txt"
: >"$AB"
note() { echo "$*" | tee -a "$AB"; }

if [ -n "$SMALL" ]; then
    big=(--rows 1500 --dim 32 --clusters 20) wide=(--rows 1000 --dim 96 --clusters 10)
    nq=100 nq_ivf=300 runs=1 lists=16 probes="2" every=q
else
    big=(--rows 1000000 --dim 128 --clusters 1000) wide=(--rows 200000 --dim 768 --clusters 1000)
    nq=10000 nq_ivf=100000 runs=5 lists=4096 probes="8 32 64" every=b
fi

# 1. The GPU tests. They run the CLI binary at the path compiled into them: put NEW there.
if [ -n "$TESTS" ]; then
    bin=$(grep -a -o -m1 '/[A-Za-z0-9_./-]*/target/release/vecbuild' "$TESTS" | head -1 || true)
    if [ -n "$bin" ]; then
        mkdir -p "$(dirname "$bin")" && cp "$NEW" "$bin"
    fi
    "$TESTS" cuda --test-threads 1 >"$OUT/it-tests.log" 2>&1
    note "it-tests cuda: exit $? — $(grep -E '^test result' "$OUT/it-tests.log" | tail -1)"
fi

"$NEW" generate "${big[@]}" --seed 7 --out "$W/b.parquet" --queries "$nq_ivf" \
    --queries-out "$W/q-ivf.parquet" -q
# The first $nq of those queries for exact k-NN.
"${PYTHON:-python3}" - "$W" "$nq" <<'PY'
import sys, pyarrow.parquet as pq
w, n = sys.argv[1], int(sys.argv[2])
pq.write_table(pq.read_table(f"{w}/q-ivf.parquet").slice(0, n), f"{w}/q.parquet")
PY
"$NEW" generate "${wide[@]}" --seed 7 --out "$W/w.parquet" --queries "$nq" \
    --queries-out "$W/qw.parquet" -q

# 2. Exact k-NN.
bench() { # label binary args...
    local label=$1 bin=$2
    shift 2
    local line
    line=$("$bin" bench-knn --gpu 0 --runs "$runs" --warmup 1 "$@" 2>>"$OUT/bench-knn.err" | tail -1)
    note "$label: $(echo "$line" | "${PYTHON:-python3}" -c 'import json, sys
j = json.load(sys.stdin)
print("median %.4f s, fastest %.4f s, %.0f GFLOP/s, load %s s"
      % (j["median_s"], j["fastest_s"], j["gflops"], j.get("load_s")))' 2>/dev/null || echo "failed: $line")"
}
for round in 1 2; do
    for v in OLD NEW; do
        bin=$OLD
        [ $v = NEW ] && bin=$NEW
        for shape in "b q 10" "b q 100" "w qw 10"; do
            set -- $shape
            bench "r$round $v knn $1 k=$3" "$bin" --base "$W/$1.parquet" --queries "$W/$2.parquet" --k "$3"
            if "$bin" bench-knn --help | grep -q -- --held; then
                bench "r$round $v knn $1 k=$3 --held" "$bin" --base "$W/$1.parquet" \
                    --queries "$W/$2.parquet" --k "$3" --held
            fi
        done
        start=$(date +%s%N)
        "$bin" knn --gpu 0 --base "$W/b.parquet" --queries "$W/q.parquet" --k 10 \
            --out "$W/knn-$v.parquet" -q 2>>"$OUT/knn.err"
        status=$?
        note "r$round $v knn --gpu 0 CLI 10-NN: exit $status, $(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }') s"
    done
done
cmp -s "$W/knn-OLD.parquet" "$W/knn-NEW.parquet" && note "knn results OLD = NEW (bytes)" \
    || note "knn results OLD != NEW (bytes): compare with vecbuild eval"

# A log's trace spans summed per name.
spans() {
    awk '/^trace: /{ms=$(NF-1); $1=""; $(NF)=""; $(NF-1)=""; t[$0]+=ms; c[$0]++}
         END{for (k in t) printf "    trace%s %.1f ms in %d\n", k, t[k], c[k]}' "$1" \
        | sort | tee -a "$AB"
}

# 3. IVF-PQ builds, the two binaries alternating (the same tensors expected), then search with
#    the probes on the device against probes from the host.
for round in 1 2; do
    for v in OLD NEW; do
        bin=$OLD; [ $v = NEW ] && bin=$NEW
        log="$OUT/ivf-build-$v-r$round.log"
        VECBUILD_TRACE=1 "$bin" build --gpu 0 --input "$W/b.parquet" --index ivf-pq \
            --n-lists "$lists" --out "$W/p-$v.vbx" >"$log" 2>&1
        note "r$round IVF-PQ build $v: exit $?, $(grep -E '^(IVF-PQ stages|time):' "$log" \
            | tr '\n' ' ')"
        spans "$log"
    done
done
sums() { "$NEW" info --json "$1" | python3 -c 'import json, sys
print(json.dumps(json.load(sys.stdin)["checksums"], sort_keys=True))'; }
[ "$(sums "$W/p-OLD.vbx")" = "$(sums "$W/p-NEW.vbx")" ] && note "IVF-PQ tensors OLD = NEW" \
    || note "IVF-PQ tensors OLD != NEW"
cp "$W/p-NEW.vbx" "$W/p.vbx"
for np in $probes; do
    for round in 1 2; do
        for probes_on in host device; do
            log="$OUT/ivf-$np-$probes_on-r$round.log"
            if [ $probes_on = host ]; then
                VECBUILD_GPU_PROBES=host VECBUILD_TRACE=1 "$NEW" search --gpu 0 --index "$W/p.vbx" \
                    --queries "$W/q-ivf.parquet" --k 10 --n-probes "$np" --out "$W/r-$probes_on.parquet" \
                    >"$log" 2>&1
            else
                VECBUILD_TRACE=1 "$NEW" search --gpu 0 --index "$W/p.vbx" --queries "$W/q-ivf.parquet" \
                    --k 10 --n-probes "$np" --out "$W/r-$probes_on.parquet" >"$log" 2>&1
            fi
            note "r$round n_probes $np probes on the $probes_on: $(grep -E '^searched' "$log" | tail -1)"
        done
        cmp -s "$W/r-host.parquet" "$W/r-device.parquet" && note "  lists identical" \
            || note "  lists differ"
    done
done

# 3b. Re-ranking (an index built by NEW with --refine, --refine-ratio 4 at n_probes 32): on the
#     device (rescore_exact) against the host (VECBUILD_GPU_RERANK=host), alternating.
"$NEW" build --gpu 0 --input "$W/b.parquet" --index ivf-pq --n-lists "$lists" --refine \
    --out "$W/pr.vbx" >"$OUT/ivf-refine-build.log" 2>&1
note "IVF-PQ --refine build: exit $?"
for round in 1 2; do
    for rerank in host device; do
        log="$OUT/ivf-rerank-$rerank-r$round.log"
        how=""; [ $rerank = host ] && how=host
        VECBUILD_GPU_RERANK=$how VECBUILD_TRACE=1 "$NEW" search --gpu 0 --index "$W/pr.vbx" --queries "$W/q-ivf.parquet" \
            --k 10 --n-probes 32 --refine-ratio 4 --out "$W/rr-$rerank.parquet" >"$log" 2>&1
        note "r$round re-ranked on the $rerank: $(grep -E '^searched' "$log" | tail -1)"
        spans "$log"
    done
    cmp -s "$W/rr-host.parquet" "$W/rr-device.parquet" && note "  lists identical" \
        || note "  lists differ"
done

# 4. CAGRA 1M builds on the GPU, with the trace spans summed per name.
cagra() { # label binary extra...
    local label=$1 bin=$2
    shift 2
    local log="$OUT/cagra-${label// /-}.log"
    VECBUILD_TRACE=1 "$bin" build --gpu 0 --input "$W/b.parquet" --index cagra \
        --out "$W/c-${label// /-}.vbx" "$@" >"$log" 2>&1
    note "$label: exit $?, $(grep -E '^time:' "$log")"
    grep -E '^CAGRA (stages|optimisation)' "$log" | sed 's/^/    /' | tee -a "$AB"
    spans "$log"
}
for round in 1 2; do
    cagra "r$round OLD cagra" "$OLD"
    cagra "r$round NEW cagra" "$NEW"
done
cagra "NEW cagra tf32" "$NEW" --gpu-precision tf32
# Since the upper levels keep graph_degree links per row (sixteenth session), `upper.graph`
# and the level-1 rows' shared links in `graph` differ from the old binary's by design, and
# with them the stored order: every tensor.
note "CAGRA tensors that differ OLD/NEW: $(python3 -c 'import json, sys
a, b = map(json.loads, sys.argv[1:])
print(" ".join(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)) or "none")' \
    "$(sums "$W/c-r1-OLD-cagra.vbx")" "$(sums "$W/c-r1-NEW-cagra.vbx")")"

# 5. A batch query job: every base row as a query against each binary's own CAGRA index, and
# the new binary against the old index (whose upper levels keep 16 links per row, not 32).
for round in 1 2; do
    for pair in OLD:OLD NEW:NEW NEW:OLD; do
        v=${pair%%:*} idx=${pair##*:}
        bin=$OLD; [ $v = NEW ] && bin=$NEW
        log="$OUT/cagra-search-$v-on-$idx-r$round.log"
        start=$(date +%s%N)
        "$bin" search --gpu 0 --index "$W/c-r1-$idx-cagra.vbx" --queries "$W/$every.parquet" \
            --k 10 --out "$W/s-$v.parquet" >"$log" 2>&1
        status=$?
        note "r$round $v binary, $idx index: CAGRA search of every base row: exit $status, \
$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }') s wall; \
$(grep -E '^searched' "$log" | tail -1)"
    done
done
echo "logs in $OUT"
