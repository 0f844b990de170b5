"""Interop checks run by the test suite (tests/it/python.rs): what vecbuild writes, others read.

usage: python_checks.py DIR
DIR holds base.npy (the base vectors), base.vbx (a flat L2 artifact of them, string ids
"id-<row>") and results.parquet (a search of the first 10 base rows with k=5).
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
from safetensors.numpy import load_file
from safetensors import safe_open

d = sys.argv[1]
base = np.load(f"{d}/base.npy")

# 1. safetensors opens the artifact and sees the vectors, norms and ids.
t = load_file(f"{d}/base.vbx")
assert np.array_equal(t["vectors"], base), "vectors differ"
assert np.allclose(t["sq_norms"], (base.astype(np.float64) ** 2).sum(1), rtol=1e-5), "sq_norms differ"
offsets, data = t["ids.offsets"], t["ids.data"].tobytes()
ids = [data[offsets[i]:offsets[i + 1]].decode() for i in range(len(offsets) - 1)]
assert ids == [f"id-{i}" for i in range(len(base))], "ids differ"
with safe_open(f"{d}/base.vbx", framework="numpy") as f:
    manifest = json.loads(f.metadata()["vecbuild.manifest"])
assert manifest["kind"] == "flat" and manifest["count"] == len(base) and manifest["dim"] == base.shape[1]
# Every tensor starts on a 64-byte boundary of the file; zero `__pad<i>` tensors fill the gaps.
with open(f"{d}/base.vbx", "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_len))
for name, info in header.items():
    if name == "__metadata__":
        continue
    begin, end = info["data_offsets"]
    if name.startswith("__pad"):
        assert not t[name].any() and end - begin < 64, (name, info)
    else:
        assert (8 + header_len + begin) % 64 == 0, (name, info)

# 2. pyarrow reads the results file in the documented schema.
r = pq.read_table(f"{d}/results.parquet")
assert r.schema.names == ["query_id", "neighbors", "distances"], r.schema
assert str(r.schema.field("neighbors").type) == "list<item: string>", r.schema
rows = r.to_pylist()
assert len(rows) == 10
for i, row in enumerate(rows):
    assert row["neighbors"][0] == f"id-{i}", row
    exact = ((base - base[i]) ** 2).sum(1)
    order = np.argsort(exact, kind="stable")[:5]
    assert row["neighbors"] == [f"id-{j}" for j in order], (row, order)
    assert np.allclose(row["distances"], exact[order], atol=1e-3), row
print("python interop checks passed")
