"""Driver for scripts/gpu-check.sh: every GPU stage against the CPU backend, then timings.

Fresh data each run (the seed is drawn at start and printed). Output files are poisoned (junk
bytes) before every run, so a run that writes nothing cannot pass. Prints one table last and
writes the full numbers to $OUT/gpu-check.json.
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq

ap = argparse.ArgumentParser()
ap.add_argument("--vecbuild", required=True)
ap.add_argument("--work", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--gpu", default="0")
ap.add_argument("--quick", action="store_true", help="small sizes only")
ap.add_argument("--emulated", action="store_true",
                help="tiny sizes and the checks only, no timings: for trying this script on the CUDA emulator "
                     "(tests/emu) where there is no GPU")
ap.add_argument("--only-cagra1m", action="store_true",
                help="only the 1M-row timings: CAGRA build and search, IVF-PQ build and search")
ap.add_argument("--skip-faiss-build", action="store_true",
                help="leave out faiss-cpu's IVF-PQ builds (minutes at 1M rows), e.g. when measured in an earlier run")
args = ap.parse_args()

SEED = random.randrange(1, 1 << 30)
build_times = {}
# The build's own time line (`time: starting cuda:0 0.27 s, reading 0.42 s, building 3.30 s,
# writing 1.25 s`), by part, per build: faiss's timings hold data already in memory and write
# nothing, so the builds are also compared without their reading and writing.
build_parts = {}


def time_parts(stderr):
    """The parts of a build's `time:` line, in seconds, by name."""
    for line in stderr.splitlines():
        if line.startswith("time: "):
            parts = {}
            for part in line[len("time: "):].split(", "):
                name, _, secs = part.rpartition(" ")
                if secs == "s":
                    name, _, secs = name.rpartition(" ")
                    parts[name] = float(secs)
            return parts
    return {}


def without_io(key):
    """A build's seconds less its reading and writing (None without its time line)."""
    parts = build_parts.get(key, {})
    if "reading" not in parts or "writing" not in parts:
        return None
    return build_times[key] - parts["reading"] - parts["writing"]
W = args.work
rows = []  # (check, result, detail, ok)
timings = []  # (what, ours, peer, ratio, note)
memory = {}  # device memory: the dry run's prediction against what nvidia-smi saw
failed = False


START = time.perf_counter()


def say(*a):
    print(f"[{time.perf_counter() - START:6.1f} s]", *a, flush=True)


def vb(*a, check=True, quiet=True):
    cmd = [args.vecbuild, *(["--quiet"] if quiet else []), *map(str, a)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    secs = time.perf_counter() - t
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r, secs


class DeviceMemoryWatch:
    """Largest memory.used nvidia-smi reports (every 100 ms) above what was used when started."""

    def __init__(self):
        q = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(args.gpu)]
        self.idle = int(subprocess.run(q, capture_output=True, text=True).stdout.split()[0])
        self.proc = subprocess.Popen(q + ["-lms", "100"], stdout=subprocess.PIPE, text=True)

    def stop(self):
        self.proc.terminate()
        out, _ = self.proc.communicate()
        seen = [int(v) for v in out.split() if v.isdigit()]
        return max(seen, default=self.idle) - self.idle


def poison(path):
    with open(path, "wb") as f:
        f.write(os.urandom(4096))


def record(check, ok, result, detail=""):
    global failed
    failed |= not ok
    rows.append((check, "PASS" if ok else "FAIL", result, detail))
    say(f"{'PASS' if ok else 'FAIL'}  {check}: {result} {detail}")


def results(path):
    t = pq.read_table(path)
    return t.column("neighbors").to_pylist(), t.column("distances").to_pylist()


def matrix(path):
    col = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    return np.ascontiguousarray(col.flatten().to_numpy().astype(np.float32).reshape(len(col), -1))


def generate(name, n, dim, clusters, nq):
    base, q = f"{W}/{name}-base.parquet", f"{W}/{name}-q.parquet"
    vb("generate", "--rows", n, "--dim", dim, "--clusters", clusters, "--seed", SEED + n + dim,
       "--out", base, "--queries", nq, "--queries-out", q)
    return base, q


def recall(found, truth, k):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def search_both(art, q, extra=(), cpu_extra=("--exact-walk",)):
    """Searches art with q on the CPU and on the GPU: {dev: (ids, distances, qps)}."""
    outs = {}
    for dev in ["cpu", "gpu"]:
        res = f"{W}/s-{dev}.parquet"
        poison(res)
        # CAGRA: the GPU walks the graph on the f32 vectors, so the CPU does the same to be its
        # oracle.
        gpu = ["--gpu", args.gpu] if dev == "gpu" else list(cpu_extra)
        r, _ = vb("search", "--index", art, "--queries", q, "--k", 10, *extra, "--out", res, *gpu, quiet=False)
        qps = float(re.findall(r"\(([0-9.]+) QPS in search", r.stderr)[-1])
        outs[dev] = (*results(res), qps)
    return outs


def compare_search(label, outs, truth_ids, kind="CAGRA", note=""):
    (ci, cd, cq), (gi, gd, gq) = outs["cpu"], outs["gpu"]
    same = float(np.mean([a == b for a, b in zip(ci, gi)]))
    rc, rg = recall(ci, truth_ids, 10), recall(gi, truth_ids, 10)
    # The same search: lists differ only where float rounding reorders a near-tie.
    ok = same >= 0.98 and rg >= rc - 0.005
    record(f"{kind} search on GPU vs CPU: {label}", ok, f"identical lists {same:.4f}",
           f"recall@10 GPU {rg:.4f} / CPU {rc:.4f}; {gq:.0f} vs {cq:.0f} QPS ({gq / max(cq, 1e-9):.1f}×){note}")


def print_checks(title):
    say("")
    say(title)
    say(f"{'check':46} {'result':6} {'value':36} detail")
    for c, res, val, det in rows:
        say(f"{c:46} {res:6} {val:36} {det}")


say(f"seed {SEED}")
tiny = args.emulated
small = args.quick or tiny
if not args.only_cagra1m:
    data = {
        "random": generate("random", 2_000 if tiny else 20_000 if small else 100_000, 128, 1,
                           50 if tiny else 500 if small else 2000),
        "clustered": generate("clustered", 3_000 if tiny else 50_000 if small else 200_000, 128,
                              30 if tiny else 1000, 50 if tiny else 1000 if small else 5000),
    }

    # 1. Exact k-NN: GPU against the CPU backend. Same ids where no near-tie separates them;
    #    distances within fp32 rounding of the scale of the data.
    for name, (base, q) in data.items():
        x = matrix(base)
        for metric in ["l2", "ip", "cosine"]:
            for k in [10, 100]:
                outs = {}
                for dev in ["cpu", "gpu"]:
                    out = f"{W}/knn-{name}-{metric}-{k}-{dev}.parquet"
                    poison(out)
                    extra = ["--gpu", args.gpu] if dev == "gpu" else []
                    vb("knn", "--base", base, "--queries", q, "--k", k, "--metric", metric, "--out", out, *extra)
                    outs[dev] = results(out)
                (ci, cd), (gi, gd) = outs["cpu"], outs["gpu"]
                same = float(np.mean([a == b for a, b in zip(ci, gi)]))
                rec = recall(gi, ci, k)
                cd, gd = np.array(cd, dtype=np.float64), np.array(gd, dtype=np.float64)
                scale = {"l2": float(np.mean(np.sum(x.astype(np.float64) ** 2, 1))) * 2, "cosine": 2.0,
                         "ip": float(np.mean(np.linalg.norm(x, axis=1))) ** 2}[metric]
                err = float(np.max(np.abs(cd - gd))) / scale
                ok = gd.shape == cd.shape and rec >= 0.999 and err < 1e-5
                record(f"knn {name} {metric} k={k}", ok, f"recall vs CPU {rec:.5f}",
                       f"identical lists {same:.4f}, max |Δd|/scale {err:.2e}")

    # Flat search on the GPU: the index rows held on the device for every query batch.
    base, q = data["clustered"]
    art = f"{W}/flat-clustered.vbx"
    vb("build", "--input", base, "--index", "flat", "--out", art)
    outs = {}
    for dev in ["cpu", "gpu"]:
        res = f"{W}/flat-{dev}.parquet"
        poison(res)
        extra = ["--gpu", args.gpu] if dev == "gpu" else []
        vb("search", "--index", art, "--queries", q, "--k", 10, "--batch-queries", 500, "--out", res, *extra)
        outs[dev] = results(res)
    (ci, cd), (gi, gd) = outs["cpu"], outs["gpu"]
    same = float(np.mean([a == b for a, b in zip(ci, gi)]))
    rec = recall(gi, ci, 10)
    record("flat search --gpu (index held on the device, batches of 500)", rec >= 0.999,
           f"recall vs CPU {rec:.5f}", f"identical lists {same:.4f}")

    # The kernels' PTX comes from the cache on a second start (the emulator runs with it off).
    if not tiny:
        r, _ = vb("doctor")
        r, _ = vb("doctor")
        cached = re.search(r"loaded \((\d+) of (\d+) files' PTX from the cache", r.stdout)
        record("kernel PTX from the cache on the second start", bool(cached) and cached.group(1) == cached.group(2),
               cached.group(0) if cached else r.stdout.strip().splitlines()[-1][:90])

    # k at the selection's limit.
    base, q = data["random"]
    outs = {}
    for dev in ["cpu", "gpu"]:
        out = f"{W}/knn-k1024-{dev}.parquet"
        poison(out)
        extra = ["--gpu", args.gpu] if dev == "gpu" else []
        vb("knn", "--base", base, "--queries", q, "--k", 1024, "--out", out, *extra)
        outs[dev] = results(out)
    rec = recall(outs["gpu"][0], outs["cpu"][0], 1024)
    record("knn random l2 k=1024", rec >= 0.999, f"recall vs CPU {rec:.5f}")
    r, _ = vb("knn", "--base", base, "--queries", q, "--k", 1025, "--out", f"{W}/x.parquet", "--gpu", args.gpu,
              check=False)
    record("knn k=1025 on the GPU is refused", r.returncode == 2 and "1024" in r.stderr, f"exit {r.returncode}",
           r.stderr.strip().splitlines()[-1][:90] if r.stderr.strip() else "")

    # TF32 and fp16 (opt-in): recall against the exact fp32 CPU results.
    for precision in ["tf32", "fp16"]:
        for name, (base, q) in data.items():
            cpu_out = f"{W}/knn-{name}-l2-10-cpu.parquet"
            out = f"{W}/knn-{name}-{precision}.parquet"
            poison(out)
            vb("knn", "--base", base, "--queries", q, "--k", 10, "--out", out, "--gpu", args.gpu,
               "--gpu-precision", precision)
            rec = recall(results(out)[0], results(cpu_out)[0], 10)
            record(f"knn {name} l2 k=10 --gpu-precision {precision}", rec >= 0.95, f"recall vs exact {rec:.5f}",
                   "(opt-in speed mode: recall reported, not exactness)")

    # 2. Builds on the GPU against the same build on the CPU: recall of each, CPU search.
    base, q = data["clustered"]
    truth = f"{W}/truth-clustered.parquet"
    vb("knn", "--base", base, "--queries", q, "--k", 10, "--out", truth)
    truth_ids = results(truth)[0]
    n = 50_000 if small else 200_000
    for label, build_args, search_args in [
        ("ivf-pq", ["--index", "ivf-pq", "--n-lists", 32 if tiny else 256 if small else 1024, "--pq-dim", 64],
         ["--n-probes", 32]),
        ("cagra", ["--index", "cagra"], []),
        ("cagra exact", ["--index", "cagra", "--build-algo", "exact"], []),
    ]:
        recs = {}
        for dev in ["cpu", "gpu"]:
            art = f"{W}/{label.replace(' ', '-')}-{dev}.vbx"
            poison(art)
            extra = ["--gpu", args.gpu] if dev == "gpu" else []
            r, secs = vb("build", "--input", base, *build_args, "--out", art, *extra, quiet=False)
            build_times[(label, dev)] = secs
            build_parts[(label, dev)] = time_parts(r.stderr)
            for line in r.stderr.splitlines():
                if "stages" in line or line.startswith(("time:", "CAGRA optimisation")):
                    say(f"  {label} on {dev}: {line.strip()}")
            res = f"{W}/{label.replace(' ', '-')}-{dev}-res.parquet"
            poison(res)
            vb("search", "--index", art, "--queries", q, "--k", 10, *search_args, "--out", res)
            recs[dev] = recall(results(res)[0], truth_ids, 10)
            if dev == "gpu":
                backend = json.loads(vb("info", art, "--json")[0].stdout).get("backend", "?")
        # Which stored tensors differ between the GPU and the CPU build (the artifact is in the
        # safetensors layout).
        from safetensors.numpy import load_file

        tg, tc = (load_file(f"{W}/{label.replace(' ', '-')}-{d}.vbx") for d in ["gpu", "cpu"])
        differ = sorted(name for name in tc if name not in tg or not np.array_equal(tg[name], tc[name]))
        say(f"  {label}: tensors differing GPU vs CPU: {differ or 'none'}")
        if label == "cagra exact":
            # Deterministic end to end (exact kNN lists, integer pruning): the graph must be the same.
            # (The emulator's GEMM adds in plain order, not the CPU's: near-ties in the kNN lists
            # come out in another order there, so it is held to 95 % of rows.)
            same_rows = float(np.mean(np.all(tg["graph"] == tc["graph"], axis=1)))
            record("cagra exact: GPU graph identical to the CPU's",
                   same_rows >= 0.95 if tiny else "graph" not in differ,
                   f"{len(tc['graph'])} rows, {same_rows:.4f} identical", f"differing tensors: {differ or 'none'}")
        ok = recs["gpu"] >= recs["cpu"] - 0.02 and backend.startswith("cuda")
        record(f"build {label} on GPU vs CPU", ok, f"recall@10 GPU {recs['gpu']:.4f} / CPU {recs['cpu']:.4f}",
               f"manifest backend {backend}; build {build_times[(label, 'gpu')]:.2f} s vs {build_times[(label, 'cpu')]:.2f} s")


    for label in ["cagra", "cagra exact"]:
        compare_search(f"{label} build, l2", search_both(f"{W}/{label.replace(' ', '-')}-cpu.vbx", q), truth_ids)
    rbase, rq = data["random"]
    for metric in ["ip", "cosine"]:
        art = f"{W}/cagra-{metric}.vbx"
        vb("build", "--input", rbase, "--index", "cagra", "--metric", metric, "--out", art, "--gpu", args.gpu)
        t = f"{W}/truth-{metric}.parquet"
        vb("knn", "--base", rbase, "--queries", rq, "--k", 10, "--metric", metric, "--out", t, "--gpu", args.gpu)
        compare_search(f"random data, {metric}", search_both(art, rq), results(t)[0])
    for extra in [["--itopk-size", 256, "--search-width", 4], ["--itopk-size", 16]]:
        outs = search_both(f"{W}/cagra-cpu.vbx", q, extra)
        compare_search(f"cagra build, l2, {' '.join(map(str, extra))}", outs, truth_ids)
    r, _ = vb("search", "--index", f"{W}/cagra-cpu.vbx", "--queries", q, "--k", 10, "--itopk-size", 513,
              "--out", f"{W}/x.parquet", "--gpu", args.gpu, check=False)
    record("CAGRA search --gpu --itopk-size 513 is refused", r.returncode == 2 and "512" in r.stderr,
           f"exit {r.returncode}")
    # IVF-PQ search: probes by the GPU's exact k-NN, lists scanned by ivf_pq_scan with the CPU's
    # tables and sums, so the lists differ only where a near-tie among centroids changes a probe.
    for n_probes in [8, 32]:
        outs = search_both(f"{W}/ivf-pq-cpu.vbx", q, ["--n-probes", n_probes], cpu_extra=())
        # A few thousand queries: the GPU's QPS here carries the process's first GEMM (~85 ms
        # on an H100, once per run); the 1M section times 100k queries.
        compare_search(f"n_probes {n_probes}", outs, truth_ids, kind="IVF-PQ",
                       note="; includes the run's first GEMM")

if tiny:
    # On the emulator: the checks are the point; its timings would mean nothing.
    print_checks(f"GPU check {time.strftime('%Y-%m-%d')} on the CUDA emulator (no timings), seed {SEED}")
    sys.exit(1 if failed else 0)

# 3. Timings. Exact k-NN against PyTorch matmul + topk on the same data, same precision (fp32,
#    TF32 off on both sides), norms precomputed on both sides.
import torch  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
dev = torch.device(f"cuda:{args.gpu}")


def cuda_median(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


# The fp32 ceiling as this GPU reaches it through cuBLAS (an 8192³ product).
m = torch.randn(8192, 8192, device=dev)
peak = 2 * 8192 ** 3 / cuda_median(lambda: m @ m) / 1e9
del m
say(f"fp32 matmul ceiling measured: {peak:.0f} GFLOP/s")

if not args.only_cagra1m:
    shapes = [(100_000, 128, 2000, 10)] if small else [
        (1_000_000, 128, 10_000, 10), (1_000_000, 128, 10_000, 100), (200_000, 768, 10_000, 10)]
    for n_rows, dim, nq, k in shapes:
        base, q = generate(f"t{n_rows}x{dim}", n_rows, dim, 1000, nq)
        r, _ = vb("bench-knn", "--gpu", args.gpu, "--base", base, "--queries", q, "--k", k, "--runs", 5)
        ours = json.loads(r.stdout.strip().splitlines()[-1])
        r, _ = vb("bench-knn", "--gpu", args.gpu, "--held", "--base", base, "--queries", q, "--k", k, "--runs", 5)
        ours_held = json.loads(r.stdout.strip().splitlines()[-1])
        r, _ = vb("bench-knn", "--gpu", args.gpu, "--gpu-precision", "tf32", "--base", base, "--queries", q, "--k", k,
                  "--runs", 5)
        ours_tf32 = json.loads(r.stdout.strip().splitlines()[-1])
        r, _ = vb("bench-knn", "--gpu", args.gpu, "--gpu-precision", "fp16", "--base", base, "--queries", q, "--k", k,
                  "--runs", 5)
        ours_fp16 = json.loads(r.stdout.strip().splitlines()[-1])
        r, _ = vb("bench-knn", "--base", base, "--queries", q, "--k", k, "--runs", 1, "--warmup", 0)
        cpu = json.loads(r.stdout.strip().splitlines()[-1])
        x_host, q_host = matrix(base), matrix(q)

        def torch_knn(x, qq, xn):
            out = []
            step = max(1, (1 << 30) // (x.shape[0] * 4))
            for i in range(0, qq.shape[0], step):
                s = torch.addmm(xn, qq[i:i + step], x.T, beta=1.0, alpha=-2.0)
                out.append(torch.topk(s, k, dim=1, largest=False))
            return out

        xd, qd = torch.from_numpy(x_host).to(dev), torch.from_numpy(q_host).to(dev)
        xn = (xd * xd).sum(1)
        t_dev = cuda_median(lambda: torch_knn(xd, qd, xn))

        def from_host():
            x = torch.from_numpy(x_host).to(dev)
            qq = torch.from_numpy(q_host).to(dev)
            res = torch_knn(x, qq, xn)
            return [(v.cpu(), i.cpu()) for v, i in res]

        t_host = cuda_median(from_host)
        torch.backends.cuda.matmul.allow_tf32 = True
        t_dev_tf32 = cuda_median(lambda: torch_knn(xd, qd, xn))
        torch.backends.cuda.matmul.allow_tf32 = False
        xh, qh = xd.half(), qd.half()
        t_dev_fp16 = cuda_median(lambda: torch_knn(xh, qh, xn.half()))
        del xd, qd, xn, xh, qh
        torch.cuda.empty_cache()
        flops = 2 * n_rows * dim * nq
        what = f"exact {k}-NN {nq} q × {n_rows} × {dim} fp32"
        timings.append((what + " (data on host)", ours["median_s"], t_host, t_host / ours["median_s"],
                        f"PyTorch incl. copies; ours {flops / ours['median_s'] / 1e9:.0f} GFLOP/s = "
                        f"{flops / ours['median_s'] / 1e9 / peak:.0%} of measured fp32 matmul"))
        timings.append((what + " (ours from host, PyTorch data already on GPU)", ours["median_s"], t_dev,
                        t_dev / ours["median_s"], f"PyTorch {flops / t_dev / 1e9:.0f} GFLOP/s"))
        timings.append((what + " (both with the base on GPU: ours --held)", ours_held["median_s"], t_dev,
                        t_dev / ours_held["median_s"],
                        f"ours {flops / ours_held['median_s'] / 1e9:.0f} GFLOP/s = "
                        f"{flops / ours_held['median_s'] / 1e9 / peak:.0%} of measured fp32 matmul; "
                        f"base copied once in {ours_held['load_s']:.3f} s"))
        timings.append((f"exact {k}-NN {nq} q × {n_rows} × {dim} tf32 (PyTorch data on GPU, tf32)",
                        ours_tf32["median_s"], t_dev_tf32, t_dev_tf32 / ours_tf32["median_s"],
                        f"ours {flops / ours_tf32['median_s'] / 1e9:.0f} GFLOP/s"))
        timings.append((f"exact {k}-NN {nq} q × {n_rows} × {dim} fp16 (PyTorch fp16 data on GPU, fp16 scores)",
                        ours_fp16["median_s"], t_dev_fp16, t_dev_fp16 / ours_fp16["median_s"],
                        f"ours {flops / ours_fp16['median_s'] / 1e9:.0f} GFLOP/s, fp32 scores"))
        timings.append((what + " vs our CPU backend", ours["median_s"], cpu["median_s"],
                        cpu["median_s"] / ours["median_s"], f"{os.cpu_count()} CPU cores"))

def faiss_ivf_pq(parquet, nl, rows, ours, ours_without_io=None):
    """Times faiss-cpu's IVF{nl},PQ64x8 train + add on the rows of `parquet` (data already in
    memory; 20 k-means iterations for both quantizers, polysemous training off, as our builds)
    and adds the row against our GPU build's `ours` seconds."""
    try:
        import faiss
    except ImportError:
        say(f"faiss not importable: IVF-PQ build of {rows} rows not timed against faiss-cpu")
        return
    if args.skip_faiss_build:
        say(f"--skip-faiss-build: faiss-cpu's IVF-PQ build of {rows} rows not timed")
        return
    x = matrix(parquet)
    fidx = faiss.index_factory(128, f"IVF{nl},PQ64x8")
    fidx.do_polysemous_training = False
    faiss.extract_index_ivf(fidx).cp.niter = 20
    fidx.pq.cp.niter = 20
    t = time.perf_counter()
    fidx.train(x)
    fidx.add(x)
    tf = time.perf_counter() - t
    timings.append((f"build ivf-pq IVF{nl},PQ64x8 {rows} × 128 vs faiss-cpu", ours, tf, tf / ours,
                    f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, data in memory"))
    if ours_without_io:
        timings.append((f"build ivf-pq IVF{nl},PQ64x8 {rows} × 128 vs faiss-cpu, less reading and writing",
                        ours_without_io, tf, tf / ours_without_io,
                        "ours: starting the device and building; faiss: train + add"))


# CAGRA at 1M rows: build on GPU and CPU, then batch search on the GPU against the same
# search on the CPU (all cores) and against PyTorch's exact search, at matched itopk_size.
if not small:
    cbase, cq = generate("cagra1m", 1_000_000, 128, 1000, 100_000)
    ctruth = f"{W}/truth-cagra1m.parquet"
    vb("knn", "--base", cbase, "--queries", cq, "--k", 10, "--out", ctruth, "--gpu", args.gpu)
    ctruth_ids = results(ctruth)[0]
    arts = {}
    for where in ["gpu", "cpu"]:
        arts[where] = f"{W}/cagra1m-{where}.vbx"
        gpu = ["--gpu", args.gpu] if where == "gpu" else []
        if where == "gpu":
            plan, _ = vb("build", "--input", cbase, "--index", "cagra", "--out", arts[where], *gpu, "--dry-run")
            predicted = [line for line in plan.stdout.splitlines() if line.startswith("peak device memory")]
            watch = DeviceMemoryWatch()
        r, secs = vb("build", "--input", cbase, "--index", "cagra", "--out", arts[where], *gpu, quiet=False)
        if where == "gpu":
            used = watch.stop()
            say(f"  device memory, cagra 1M: build --dry-run says {predicted[0] if predicted else '(nothing)'}; "
                f"nvidia-smi saw {used} MiB above idle at most (CUDA context and cuBLAS included)")
            memory["cagra 1M"] = {"dry_run": predicted, "nvidia_smi_peak_mib_above_idle": used}
        build_times[("cagra 1M", where)] = secs
        build_parts[("cagra 1M", where)] = time_parts(r.stderr)
        for line in r.stderr.splitlines():
            if "stages" in line or line.startswith(("time:", "CAGRA optimisation")):
                say(f"  cagra 1M on {where} ({secs:.2f} s in all): {line.strip()}")
    g, c = build_times[("cagra 1M", "gpu")], build_times[("cagra 1M", "cpu")]
    timings.append(("build cagra 1000000 × 128", g, c, c / g, "our CPU build, same CLI run"))
    g, c = without_io(("cagra 1M", "gpu")), without_io(("cagra 1M", "cpu"))
    if g and c:
        timings.append(("build cagra 1000000 × 128, less reading and writing", g, c, c / g,
                        "our CPU build; the GPU's includes starting the device"))
    xd = torch.from_numpy(matrix(cbase)).to(dev)
    qd = torch.from_numpy(matrix(cq)).to(dev)
    xn = (xd * xd).sum(1)

    def exact_all():
        for i in range(0, qd.shape[0], 1000):
            torch.topk(torch.addmm(xn, qd[i:i + 1000], xd.T, beta=1.0, alpha=-2.0), 10, dim=1, largest=False)

    t_exact = cuda_median(exact_all, reps=3)
    say(f"  PyTorch exact 10-NN of 100k queries on 1M rows: {t_exact:.3f} s")
    del xd, qd, xn
    torch.cuda.empty_cache()
    for itopk in [32, 64, 128, 256]:
        outs = search_both(arts["gpu"], cq, ["--itopk-size", itopk])
        rg, rc = recall(outs["gpu"][0], ctruth_ids, 10), recall(outs["cpu"][0], ctruth_ids, 10)
        qg, qc = outs["gpu"][2], outs["cpu"][2]
        say(f"  CAGRA 1M itopk {itopk}: GPU {qg:.0f} QPS recall {rg:.4f}; CPU {qc:.0f} QPS recall {rc:.4f}")
        timings.append((f"CAGRA search 100k q × 1M × 128 itopk {itopk} (recall GPU {rg:.4f}, CPU {rc:.4f})",
                        1e5 / qg, 1e5 / qc, qg / qc, f"GPU {qg:.0f} QPS vs our CPU {os.cpu_count()} cores"))
        timings.append((f"CAGRA search itopk {itopk} vs PyTorch exact (fp32, data on GPU)", 1e5 / qg, t_exact,
                        t_exact * qg / 1e5, f"PyTorch {1e5 / t_exact:.0f} QPS at recall 1"))

    # IVF-PQ at 1M rows: our GPU build with its automatic parameters (4096 lists, PQ64x8; whole
    # CLI run, Parquet read included) against faiss-cpu's train + add on the same rows and
    # parameters, data already in memory.
    r, g = vb("build", "--input", cbase, "--index", "ivf-pq", "--out", f"{W}/ivfpq1m-gpu.vbx",
              "--gpu", args.gpu, quiet=False)
    for line in r.stderr.splitlines():
        if "stages" in line or "n_lists" in line or line.startswith("time:"):
            say(f"  ivf-pq 1M on gpu ({g:.2f} s in all): {line.strip()}")
    build_times[("ivf-pq 1M", "gpu")], build_parts[("ivf-pq 1M", "gpu")] = g, time_parts(r.stderr)
    faiss_ivf_pq(cbase, 4096, 1_000_000, g, without_io(("ivf-pq 1M", "gpu")))

    # IVF-PQ search at 1M, 100k queries: our index searched on the GPU and on the CPU (all
    # cores), and the same index exported to faiss (IndexIVFPQ) and searched by faiss-cpu at
    # the same n_probes (one call with every query, all threads).
    ivf1m = f"{W}/ivfpq1m-gpu.vbx"
    try:
        import faiss
        vb("export", "--index", ivf1m, "--format", "faiss", "--out", f"{W}/ivfpq1m.faiss")
        fx, qx = faiss.read_index(f"{W}/ivfpq1m.faiss"), matrix(cq)
    except ImportError:
        fx = None
        say("faiss not importable: IVF-PQ search at 1M not timed against faiss-cpu")
    for n_probes in [8, 32, 64]:
        outs = search_both(ivf1m, cq, ["--n-probes", n_probes], cpu_extra=())
        (ci, _, qc), (gi, _, qg) = outs["cpu"], outs["gpu"]
        same = float(np.mean([a == b for a, b in zip(ci, gi)]))
        rg, rc = recall(gi, ctruth_ids, 10), recall(ci, ctruth_ids, 10)
        say(f"  IVF-PQ 1M n_probes {n_probes}: GPU {qg:.0f} QPS recall {rg:.4f}; CPU {qc:.0f} QPS recall {rc:.4f}; "
            f"identical lists {same:.4f}")
        record(f"IVF-PQ search 1M on GPU vs CPU: n_probes {n_probes}", same >= 0.98 and rg >= rc - 0.005,
               f"identical lists {same:.4f}", f"recall@10 GPU {rg:.4f} / CPU {rc:.4f}")
        timings.append((f"IVF-PQ search 100k q × 1M × 128 n_probes {n_probes} (recall GPU {rg:.4f}, CPU {rc:.4f})",
                        1e5 / qg, 1e5 / qc, qg / qc, f"GPU {qg:.0f} QPS vs our CPU {os.cpu_count()} cores"))
        if fx is not None:
            faiss.extract_index_ivf(fx).nprobe = n_probes
            t = time.perf_counter()
            _, fi = fx.search(qx, 10)
            tf = time.perf_counter() - t
            rf = recall(fi.tolist(), ctruth_ids, 10)
            say(f"  IVF-PQ 1M n_probes {n_probes}: faiss-cpu {1e5 / tf:.0f} QPS recall {rf:.4f}")
            timings.append((f"IVF-PQ search n_probes {n_probes} vs faiss-cpu, our index exported (faiss recall {rf:.4f})",
                            1e5 / qg, tf, tf * qg / 1e5,
                            f"faiss {1e5 / tf:.0f} QPS, {faiss.omp_get_max_threads()} threads"))

# Builds: ours on the GPU against ours on the CPU (whole CLI runs, Parquet read included) and
# against faiss-cpu's IVF-PQ train + add on the same data and parameters (data already in memory).
if not args.only_cagra1m:
    for label in ["cagra", "cagra exact", "ivf-pq"]:
        g, c = build_times[(label, "gpu")], build_times[(label, "cpu")]
        timings.append((f"build {label} {n} × 128", g, c, c / g, "our CPU build, same CLI run"))
        g, c = without_io((label, "gpu")), without_io((label, "cpu"))
        if g and c:
            timings.append((f"build {label} {n} × 128, less reading and writing", g, c, c / g,
                            "our CPU build; the GPU's includes starting the device"))
    faiss_ivf_pq(data["clustered"][0], 256 if small else 1024, n, build_times[("ivf-pq", "gpu")],
                 without_io(("ivf-pq", "gpu")))

name = torch.cuda.get_device_name(dev)
print_checks(f"GPU check {time.strftime('%Y-%m-%d')} on {name}, seed {SEED}")
say("")
say(f"{'timing (median)':64} {'ours s':>9} {'peer s':>9} {'peer/ours':>9}  note")
for w, a, b, ratio, note in timings:
    say(f"{w:64} {a:9.4f} {b:9.4f} {ratio:9.2f}  {note}")
with open(os.path.join(args.out, "gpu-check.json"), "w") as f:
    json.dump({"device": name, "seed": SEED, "checks": rows, "timings": timings, "fp32_peak_gflops": peak,
               "memory": memory}, f,
              indent=1)
sys.exit(1 if failed else 0)
