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
ap.add_argument("--skip-ivf-pq", action="store_true")
ap.add_argument("--skip-cagra", action="store_true")
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


def medians(ours, peer, warm=False):
    """Runs ours and the peer alternately, so drift in machine speed hits both alike; `warm`:
    after one untimed run of each (the file in the page cache, the libraries loaded)."""
    if warm:
        ours()
        peer()
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


ours, peer = medians(ours_read, pyarrow_read, warm=True)
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

# 3. IVF-PQ: build time and the recall@10 / QPS curve, same n_lists / pq_dim / pq_bits.
curves = []
if not args.skip_ivf_pq:
    n_lists = 1 << round(np.log2(4 * np.sqrt(n)))
    n_lists = min(n_lists, n // 39)
    pq_dim = dim // 2
    _, truth = index.search(queries, args.k)
    truth_ids = id_of_row[truth]

    def recall_of(found):
        return float(np.mean([len(set(f) & set(t)) / args.k for f, t in zip(found, truth_ids.tolist())]))

    def ours_build(extra):
        out = os.path.join(args.work, "bench-ivf.vbx")
        r = vb_run("build", "--input", args.base, "--index", "ivf-pq", "--n-lists", str(n_lists), "--pq-dim",
                   str(pq_dim), "--pq-bits", "8", "--out", out, *extra)
        stages = re.search(r"IVF-PQ stages: (.*)", r.stderr).group(1)
        return out, sum(float(x) for x in re.findall(r"([0-9.]+) s", stages))

    def ours_curve(art, ratios):
        points = []
        for ratio in ratios:
            for p in [1, 2, 4, 8, 16, 32, 64]:
                r = vb_run("search", "--index", art, "--queries", args.queries, "--k", str(args.k), "--n-probes", str(p),
                           "--refine-ratio", str(ratio), "--out", res)
                secs = float(re.search(r"in ([0-9.]+) s \(", r.stderr).group(1))
                found = pq.read_table(res).column("neighbors").to_pylist()
                points.append((p, ratio, recall_of(found), nq / secs))
        return points

    def faiss_curve(idx, ratios):
        points = []
        ivf = faiss.extract_index_ivf(idx)
        for ratio in ratios:
            if ratio > 1:
                idx.k_factor = ratio
            for p in [1, 2, 4, 8, 16, 32, 64]:
                ivf.nprobe = p
                t = time.perf_counter()
                _, found = idx.search(queries, args.k)
                secs = time.perf_counter() - t
                points.append((p, ratio, recall_of(id_of_row[found].tolist()), nq / secs))
        return points

    # Builds, interleaved: ours, faiss, ours, faiss (median of 2 each; builds are long).
    ours_t, faiss_t = [], []
    for _ in range(2):
        art, t_ours = ours_build([])
        ours_t.append(t_ours)
        fidx = faiss.index_factory(dim, f"IVF{n_lists},PQ{pq_dim}x8")
        fidx.do_polysemous_training = False
        faiss.extract_index_ivf(fidx).cp.niter = 20
        fidx.pq.cp.niter = 20
        t = time.perf_counter()
        fidx.train(base)
        fidx.add(base)
        faiss_t.append(time.perf_counter() - t)
    ours_b, faiss_b = statistics.median(ours_t), statistics.median(faiss_t)
    rows.append((f"IVF-PQ build IVF{n_lists},PQ{pq_dim}x8 (train+add)", f"{ours_b:.2f} s", f"{faiss_b:.2f} s",
                 faiss_b / ours_b, "faiss IndexIVFPQ"))
    curves.append(("vecbuild IVF-PQ", ours_curve(art, [1])))
    curves.append(("faiss IVF-PQ", faiss_curve(fidx, [1])))
    art_r, _ = ours_build(["--refine"])
    curves.append(("vecbuild IVF-PQ + refine", ours_curve(art_r, [2, 4])))
    flat_refine = faiss.IndexFlatL2(dim)
    flat_refine.add(base)
    refined = faiss.IndexRefine(fidx, flat_refine)  # what IndexRefineFlat is, over a filled index
    curves.append(("faiss IVF-PQ + RFlat", faiss_curve(refined, [2, 4])))

    def best_at(points, target):
        ok = [q for (_, _, r, q) in points if r >= target]
        return max(ok) if ok else None

    for target, (a, b) in [(0.85, (0, 1)), (0.95, (2, 3))]:
        qa, qb = best_at(curves[a][1], target), best_at(curves[b][1], target)
        if qa and qb:
            rows.append((f"IVF-PQ QPS at recall@10 >= {target} ({curves[a][0]})", f"{qa:.0f} QPS", f"{qb:.0f} QPS",
                         qa / qb, curves[b][0]))
        else:
            rows.append((f"IVF-PQ QPS at recall@10 >= {target}", str(qa), str(qb), float("nan"), curves[b][0]))

# 4. CAGRA against HNSW: build time (graph construction on data in memory: our kNN-graph and
#    optimisation stages vs hnswlib add_items / faiss HNSW add) and recall@10 / QPS curves
#    (medians of interleaved runs).
if not args.skip_cagra:
    import hnswlib

    _, truth4 = index.search(queries, args.k)
    truth4_ids = id_of_row[truth4]

    def recall4(found):
        return float(np.mean([len(set(f) & set(t)) / args.k for f, t in zip(found, truth4_ids.tolist())]))

    cagra_art = os.path.join(args.work, "bench-cagra.vbx")

    def ours_cagra_build():
        r = vb_run("build", "--input", args.base, "--index", "cagra", "--out", cagra_art)
        stages = re.search(r"CAGRA stages: kNN graph ([0-9.]+) s.*optimisation ([0-9.]+) s", r.stderr)
        return float(stages.group(1)) + float(stages.group(2))

    def hnswlib_build(m):
        def run():
            h = hnswlib.Index("l2", dim)
            h.init_index(max_elements=n, M=m, ef_construction=200)
            t = time.perf_counter()
            h.add_items(base, np.arange(n), num_threads=args.threads)
            hnsw[m] = h
            return time.perf_counter() - t
        return run

    def faiss_hnsw_build():
        f = faiss.IndexHNSWFlat(dim, 32)
        f.hnsw.efConstruction = 200
        t = time.perf_counter()
        f.add(base)
        hnsw["faiss"] = f
        return time.perf_counter() - t

    hnsw = {}
    ours_b, hnsw16_b = medians(ours_cagra_build, hnswlib_build(16))
    ours_b2, faiss_b = medians(ours_cagra_build, faiss_hnsw_build)
    rows.append((f"graph build {n}x{dim} (CAGRA, degree 32)", f"{ours_b:.2f} s", f"{hnsw16_b:.2f} s", hnsw16_b / ours_b,
                 "hnswlib M=16 efC=200"))
    rows.append(("graph build (same)", f"{ours_b2:.2f} s", f"{faiss_b:.2f} s", faiss_b / ours_b2,
                 "faiss IndexHNSWFlat M=32 efC=200"))

    # Recall@10 / QPS curves. Every point is the median QPS of `repeats` runs, the three
    # searchers taking turns within each round so drift in machine speed hits all alike.
    def ours_cagra_point(itopk):
        r = vb_run("search", "--index", cagra_art, "--queries", args.queries, "--k", str(args.k), "--itopk-size",
                   str(itopk), "--out", res)
        secs = float(re.search(r"in ([0-9.]+) s \(", r.stderr).group(1))
        return recall4(pq.read_table(res).column("neighbors").to_pylist()), nq / secs

    def hnsw_point(search, labels=id_of_row):
        # labels: row number -> id; None where the search returns ids.
        def point(ef):
            t = time.perf_counter()
            found = np.asarray(search(ef))
            secs = time.perf_counter() - t
            return recall4((found if labels is None else labels[found]).tolist()), nq / secs
        return point

    # Our graph as the peers load it (`export`): their own searches (greedy on the upper
    # levels) over the CAGRA graph and upper levels. The exports' labels are the ids.
    export_hnswlib = os.path.join(args.work, "bench-cagra.hnswlib")
    export_faiss = os.path.join(args.work, "bench-cagra.faiss")
    vb_run("export", "--index", cagra_art, "--format", "hnswlib", "--out", export_hnswlib)
    vb_run("export", "--index", cagra_art, "--format", "faiss", "--out", export_faiss)
    hnsw["export-hnswlib"] = hnswlib.Index("l2", dim)
    hnsw["export-hnswlib"].load_index(export_hnswlib)
    hnsw["export-faiss"] = faiss.read_index(export_faiss)

    def export_hnswlib_search(ef):
        hnsw["export-hnswlib"].set_ef(max(ef, args.k))
        return hnsw["export-hnswlib"].knn_query(queries, k=args.k, num_threads=args.threads)[0].astype(np.int64)

    def export_faiss_search(ef):
        faiss.downcast_index(hnsw["export-faiss"].index).hnsw.efSearch = max(ef, args.k)
        return hnsw["export-faiss"].search(queries, args.k)[1]

    def hnswlib_search(ef):
        hnsw[16].set_ef(max(ef, args.k))
        return hnsw[16].knn_query(queries, k=args.k, num_threads=args.threads)[0]

    def faiss_hnsw_search(ef):
        hnsw["faiss"].hnsw.efSearch = max(ef, args.k)
        return hnsw["faiss"].search(queries, args.k)[1]

    series = [("vecbuild CAGRA (itopk_size)", ours_cagra_point, [10, 12, 16, 24, 32, 48, 64, 96, 128]),
              ("hnswlib M=16 (ef)", hnsw_point(hnswlib_search), [10, 16, 24, 32, 48, 64, 96, 128]),
              ("faiss HNSW32 (efSearch)", hnsw_point(faiss_hnsw_search), [10, 16, 24, 32, 48, 64, 96, 128]),
              ("hnswlib on vecbuild's export (ef)", hnsw_point(export_hnswlib_search, None), [32, 64, 128]),
              ("faiss on vecbuild's export (efSearch)", hnsw_point(export_faiss_search, None), [32, 64, 128])]
    samples = {(name, p): [] for name, _, params in series for p in params}
    for _ in range(args.repeats):
        for name, point, params in series:
            for p in params:
                samples[(name, p)].append(point(p))
    g_curves = [(name, [(p, 1, samples[(name, p)][0][0], statistics.median(q for _, q in samples[(name, p)]))
                        for p in params]) for name, _, params in series]
    curves.extend(g_curves)

    def best_qps(points, target):
        ok = [q for (_, _, r, q) in points if r >= target]
        return max(ok) if ok else None

    for target in [0.95, 0.99]:
        ours_q = best_qps(g_curves[0][1], target)
        for name, points in g_curves[1:3]:
            peer_q = best_qps(points, target)
            ratio = ours_q / peer_q if ours_q and peer_q else float("nan")
            rows.append((f"graph search QPS at recall@10 >= {target}", f"{ours_q or 0:.0f} QPS",
                         f"{peer_q or 0:.0f} QPS", ratio, name))

print(f"\nvecbuild vs peers: {args.threads} threads, median of {args.repeats} interleaved runs, faiss {faiss.__version__}, "
      f"pyarrow {pa.__version__}, {time.strftime('%Y-%m-%d')}")
print(f"{'benchmark':<58} {'vecbuild':>12} {'peer':>12} {'ratio':>7}  peer")
for name, a, b, r, who in rows:
    print(f"{name:<58} {a:>12} {b:>12} {r:>6.2f}x  {who}")
print(f"exact k-NN agreement with faiss: {agree:.4f}")
for name, points in curves:
    print(f"\n{name}: parameter refine_ratio recall@10 QPS")
    for p, ratio, r, q in points:
        print(f"  {p:>4} {ratio:>3} {r:.4f} {q:>9.0f}")
