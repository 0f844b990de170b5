"""Stock hnswlib and faiss load vecbuild's CAGRA exports (tests/it/python.rs) and reach the
recall vecbuild's own search reaches.

usage: hnsw_checks.py DIR
DIR holds q.npy (queries), t.parquet (exact neighbours), r.parquet (vecbuild's results at
itopk_size 64), c.hnsw and c.faiss (the exports, L2, ids = input row numbers) and dim.txt.
The artifact stores rows in graph order, so the faiss export wraps its IndexHNSWFlat in an
IndexIDMap that turns stored rows back into ids.
"""
import sys

import faiss
import hnswlib
import numpy as np
import pyarrow.parquet as pq

d = sys.argv[1]
queries = np.load(f"{d}/q.npy")
dim = int(open(f"{d}/dim.txt").read())
truth = pq.read_table(f"{d}/t.parquet").column("neighbors").to_pylist()


def recall(rows):
    return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)])


ours = recall(pq.read_table(f"{d}/r.parquet").column("neighbors").to_pylist())
h = hnswlib.Index(space="l2", dim=dim)
h.load_index(f"{d}/c.hnsw")
h.set_ef(64)
labels, _ = h.knn_query(queries, k=10)
f = faiss.read_index(f"{d}/c.faiss")
assert type(f).__name__ == "IndexIDMap", type(f).__name__
inner = faiss.downcast_index(f.index)
assert type(inner).__name__ == "IndexHNSWFlat", type(inner).__name__
inner.hnsw.efSearch = 64
_, ids = f.search(queries, 10)
for name, r in [("hnswlib", recall(labels.tolist())), ("faiss", recall(ids.tolist()))]:
    print(f"{name}: recall@10 {r:.4f} at ef 64; vecbuild {ours:.4f} at itopk_size 64")
    assert r >= ours - 0.01, f"{name} recall {r:.4f} is more than 0.01 below vecbuild's {ours:.4f}"
print("hnsw checks passed")
