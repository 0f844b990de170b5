"""Driver for scripts/bench-peers.sh: times vecbuild and its peers side by side."""
import argparse
import json
import os
import re
import statistics
import subprocess
import time

ap = argparse.ArgumentParser()
ap.add_argument("--vecbuild", required=True)
ap.add_argument("--base", required=True)
ap.add_argument("--queries", required=True)
ap.add_argument("--k", type=int, default=10)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--work", default="bench-data")
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()

os.environ["OMP_NUM_THREADS"] = str(args.threads)
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import faiss  # noqa: E402

pa.set_cpu_count(args.threads)
faiss.omp_set_num_threads(args.threads)
vb = [args.vecbuild, "--threads", str(args.threads), "--quiet"]
rows = []


def medians(ours, peer):
    """Runs ours and the peer alternately, so drift in machine speed hits both alike."""
    a, b = [], []
    for _ in range(args.repeats):
        a.append(ours())
        b.append(peer())
    return statistics.median(a), statistics.median(b)


def vb_run(*a):
    return subprocess.run(vb + list(a), check=True, capture_output=True, text=True)


def read_matrix(path):
    t = pq.read_table(path, columns=["id", "embedding"])
    col = t.column("embedding").combine_chunks()
    dim = col.type.list_size if hasattr(col.type, "list_size") else len(col[0])
    x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    ids = t.column("id").to_numpy()
    return ids, np.ascontiguousarray(x)


# 1. Parquet read to contiguous float32 rows (both check values: vecbuild all rows finite).
size = os.path.getsize(args.base)


def ours_read():
    out = vb_run("validate", "--input", args.base, "--allow-duplicate-ids", "--json")
    return json.loads(out.stdout)["seconds"]


def pyarrow_read():
    t = time.perf_counter()
    _, x = read_matrix(args.base)
    assert np.isfinite(x).all()
    return time.perf_counter() - t


def pyarrow_table_only():
    t = time.perf_counter()
    pq.read_table(args.base, columns=["id", "embedding"])
    return time.perf_counter() - t


ours, peer = medians(ours_read, pyarrow_read)
ours2, table_only = medians(ours_read, pyarrow_table_only)
ids, base = read_matrix(args.base)
_, queries = read_matrix(args.queries)
n, dim = base.shape
rows.append((f"Parquet read {n}x{dim} ({size / 1e6:.0f} MB) to f32 rows", f"{size / 1e6 / ours:.0f} MB/s",
             f"{size / 1e6 / peer:.0f} MB/s", peer / ours, "pyarrow read_table+to_numpy"))
rows.append(("  (pyarrow read_table alone, no conversion)", f"{size / 1e6 / ours2:.0f} MB/s",
             f"{size / 1e6 / table_only:.0f} MB/s", table_only / ours2, "pyarrow read_table"))

# 2. Exact k-NN, L2: search time only on both sides.
art = os.path.join(args.work, "bench-flat.vbx")
vb_run("build", "--input", args.base, "--metric", "l2", "--out", art)
res = os.path.join(args.work, "bench-results.parquet")


def ours_knn():
    out = vb_run("search", "--index", art, "--queries", args.queries, "--k", str(args.k), "--out", res)
    return float(re.search(r"in ([0-9.]+) s \(", out.stderr).group(1))


# --quiet hides the summary line we parse: run search without it.
vb = [args.vecbuild, "--threads", str(args.threads)]
index = faiss.IndexFlatL2(dim)
index.add(base)


def faiss_knn():
    t = time.perf_counter()
    index.search(queries, args.k)
    return time.perf_counter() - t


ours, peer = medians(ours_knn, faiss_knn)
nq = len(queries)
rows.append((f"exact k-NN L2 {nq} queries x {n} base, k={args.k}", f"{nq / ours:.0f} QPS",
             f"{nq / peer:.0f} QPS", peer / ours, "faiss IndexFlatL2"))
# Same answers: recall of ours against faiss.
_, faiss_ids = index.search(queries, args.k)
got = pq.read_table(res).column("neighbors").to_pylist()
id_of_row = ids
agree = np.mean([len(set(g) & set(id_of_row[f].tolist())) / args.k for g, f in zip(got, faiss_ids)])

print(f"\nvecbuild vs peers: {args.threads} threads, median of {args.repeats} interleaved runs, faiss {faiss.__version__}, "
      f"pyarrow {pa.__version__}, {time.strftime('%Y-%m-%d')}")
print(f"{'benchmark':<58} {'vecbuild':>12} {'peer':>12} {'ratio':>7}  peer")
for name, a, b, r, who in rows:
    print(f"{name:<58} {a:>12} {b:>12} {r:>6.2f}x  {who}")
print(f"exact k-NN agreement with faiss: {agree:.4f}")
