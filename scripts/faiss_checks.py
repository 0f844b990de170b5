"""faiss loads vecbuild's exports (tests/it/python.rs): same neighbours as vecbuild's search.

usage: faiss_checks.py DIR
DIR/cases.json lists {"index": FAISS_FILE, "results": PARQUET, "n_probes": N, "class": NAME};
DIR/q.npy holds the queries searched for every case (k = 10).
"""
import json
import sys

import faiss
import numpy as np
import pyarrow.parquet as pq

d = sys.argv[1]
queries = np.load(f"{d}/q.npy")
for case in json.load(open(f"{d}/cases.json")):
    index = faiss.read_index(f"{d}/{case['index']}")
    assert type(index).__name__ == case["class"], (type(index).__name__, case)
    if "n_probes" in case:
        faiss.extract_index_ivf(index).nprobe = case["n_probes"]
    dist, ids = index.search(queries, 10)
    ours = pq.read_table(f"{d}/{case['results']}")
    neighbors = ours.column("neighbors").to_pylist()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(neighbors, ids.tolist())])
    assert overlap >= 0.99, f"{case}: overlap {overlap:.4f} < 0.99"
    if case.get("same_distances"):
        ours_d = np.array(ours.column("distances").to_pylist())
        assert np.allclose(ours_d, dist, rtol=1e-3, atol=1e-3), f"{case}: distances differ"
    print(f"{case['index']}: {type(index).__name__}, overlap {overlap:.4f}")
print("faiss checks passed")
