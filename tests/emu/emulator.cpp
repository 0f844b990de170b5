// A host emulator of the parts of the CUDA driver, cuBLAS and NVRTC that vecbuild calls, for its
// tests on machines without a GPU (tests/it/emulated.rs). Built as one shared library and
// linked under the names libcuda.so, libcublas.so and libnvrtc.so, it lets the real binary run
// `--gpu 0` end to end: the Rust driver code (buffer sizes, copies, argument order, batching,
// shared-memory opt-in) runs as it does on a GPU, and every kernel launch runs our kernels
// (kernels/*.cu) on host threads through tests/emu/runtime.h.
//
// What it proves: that the GPU code paths compute the right results. What it does not: speed,
// the GPU's memory model, float contraction or cuBLAS' summation order (its GEMM adds in order).
// It is a test instrument, never shipped: the device reports itself as an emulator.
//
// Device memory is host memory (a device pointer is a host address), poisoned when allocated and
// guarded past its end (see device_alloc). Work queued on a stream (launches, GEMMs, async
// copies and sets) runs later, in order, only when the host waits for it (a stream, context or
// event synchronisation, a copy into pageable memory, a free), as late as a GPU may run it: code
// that reads a result before waiting for it, or rewrites pinned memory a queued copy has yet to
// read, computes the wrong thing here too. Each stream has its own queue; a stream waiting for
// an event runs the other stream's work up to it first, and nothing else orders two streams, so
// a missing wait between them shows as well.

#define DYN_SMEM_BYTES (96 << 10)
#define HOST_FIBERS
#include "runtime.h"
#include "kernels.inc"

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Kernels by name: each launch unpacks the driver's argument pointers into the kernel's own
// parameter types.

// A launch reads its arguments when it is queued (as the driver does) and runs when the queue
// reaches it.
using Launcher = std::function<std::function<void()>(Dim3, Dim3, void**)>;

template <class... A, size_t... I>
static std::function<void()> bind_kernel(void (*f)(A...), Dim3 grid, Dim3 block, void** p,
                                         std::index_sequence<I...>) {
    std::tuple<A...> args{*static_cast<A*>(p[I])...};
    return [f, grid, block, args] { launch(grid, block, [&] { std::apply(f, args); }); };
}

template <class... A> static Launcher launcher(void (*f)(A...)) {
    return [f](Dim3 g, Dim3 b, void** p) { return bind_kernel(f, g, b, p, std::index_sequence_for<A...>{}); };
}

static const std::map<std::string, Launcher>& kernels() {
    static const std::map<std::string, Launcher> all = {
#include "registry.inc"
    };
    return all;
}

// ---------------------------------------------------------------------------------------------
// Driver API.

extern "C" {
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct Opaque* CUcontext;
typedef struct Opaque* CUstream;
typedef struct Opaque* CUevent;
typedef struct Opaque* CUmodule;
struct Function {
    std::string name;
    int max_dynamic_shared;
};
typedef Function* CUfunction;
}

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
};

// The device's memory: 4 GiB, or VECBUILD_EMULATED_DEVICE_MIB mebibytes (to run the paths for
// data that does not fit).
static const size_t TOTAL_BYTES = [] {
    const char* mib = std::getenv("VECBUILD_EMULATED_DEVICE_MIB");
    return mib && *mib ? size_t(std::strtoull(mib, nullptr, 10)) << 20 : size_t(4) << 30;
}();
static const int OPTIN_SHARED = DYN_SMEM_BYTES;
static std::mutex lock;
static std::map<CUdeviceptr, size_t> allocations;
static size_t allocated = 0;
// The most device memory held at once, written at exit to the file VECBUILD_EMULATED_PEAK_FILE
// names (where it is set): what a build really allocated, for the tests to hold `build
// --dry-run`'s device figures against. With VECBUILD_EMULATED_ALLOC_LOG set, each allocation
// and the total after it go to stderr (to find which buffer a plan missed).
static size_t peak = 0;
static void write_peak() {
    const char* path = std::getenv("VECBUILD_EMULATED_PEAK_FILE");
    if (!path || !*path) return;
    if (FILE* f = std::fopen(path, "w")) {
        std::fprintf(f, "%zu\n", peak);
        std::fclose(f);
    }
}
static const int PEAK_AT_EXIT = std::atexit(write_peak);
static Opaque* const THE_CONTEXT = reinterpret_cast<Opaque*>(0x1000);

// Each allocation is filled with 0xff bytes (NaN floats, all-ones integers), as a GPU leaves
// memory with whatever was there, so code that reads what it never wrote goes wrong here too;
// and is followed by a guard of GUARD bytes, checked after every launch and copy and on free, so
// a write past a buffer's end is reported (and the process aborted) where it happens.
static const size_t GUARD = 256;
static const unsigned char GUARD_BYTE = 0xa5;

static CUresult device_alloc(CUdeviceptr* p, size_t bytes) {
    std::lock_guard<std::mutex> g(lock);
    if (allocated + bytes > TOTAL_BYTES) return CUDA_ERROR_OUT_OF_MEMORY;
    unsigned char* host = static_cast<unsigned char*>(std::aligned_alloc(256, (bytes + 255) / 256 * 256 + GUARD));
    if (!host) return CUDA_ERROR_OUT_OF_MEMORY;
    std::memset(host, 0xff, bytes);
    std::memset(host + bytes, GUARD_BYTE, GUARD);
    *p = reinterpret_cast<CUdeviceptr>(host);
    allocations[*p] = bytes;
    allocated += bytes;
    peak = std::max(peak, allocated);
    if (std::getenv("VECBUILD_EMULATED_ALLOC_LOG")) std::fprintf(stderr, "emu alloc %zu -> %zu\n", bytes, allocated);
    return CUDA_SUCCESS;
}

static void check_guards(const char* after) {
    std::lock_guard<std::mutex> g(lock);
    for (auto& [p, bytes] : allocations) {
        const unsigned char* guard = reinterpret_cast<const unsigned char*>(p) + bytes;
        for (size_t i = 0; i < GUARD; ++i)
            if (guard[i] != GUARD_BYTE) {
                std::fprintf(stderr, "vecbuild host emulator: %s wrote past the end of a device buffer of %zu bytes\n",
                             after, bytes);
                std::abort();
            }
    }
}

// Streams' queues. Every entry is numbered from one counter; an entry is work, or a wait for
// another stream's work up to a number (cuStreamWaitEvent). An event is a stream and the
// number queued when it was recorded.
struct Stream;
struct Queued {
    unsigned long long seq;
    std::function<void()> run;
    std::string what;
    Stream* wait_on;
    unsigned long long wait_seq;
};
struct Stream {
    std::deque<Queued> queue;
};
struct Event {
    Stream* stream;
    unsigned long long seq;
};
static std::mutex queue_lock;
static unsigned long long queued = 0;
static Stream legacy_stream;
static std::vector<Stream*> all_streams{&legacy_stream};

static Stream* stream_of(CUstream s) { return s ? reinterpret_cast<Stream*>(s) : &legacy_stream; }

static void enqueue(CUstream s, std::string what, std::function<void()> run) {
    std::lock_guard<std::mutex> g(queue_lock);
    stream_of(s)->queue.push_back({++queued, std::move(run), std::move(what), nullptr, 0});
}

// Runs `stream`'s queued work numbered up to `seq` (everything by default), in order, with
// the work of other streams it waits for first.
static void drain(Stream* stream, unsigned long long seq = ~0ull) {
    for (;;) {
        Queued next;
        {
            std::lock_guard<std::mutex> g(queue_lock);
            if (stream->queue.empty() || stream->queue.front().seq > seq) return;
            next = std::move(stream->queue.front());
            stream->queue.pop_front();
        }
        if (next.wait_on) {
            drain(next.wait_on, next.wait_seq);
        } else {
            next.run();
            check_guards(next.what.c_str());
        }
    }
}

// Everything queued on every stream (a context synchronisation, or a call that waits for the
// whole device).
static void drain_all() {
    std::vector<Stream*> streams;
    {
        std::lock_guard<std::mutex> g(queue_lock);
        streams = all_streams;
    }
    for (Stream* s : streams) drain(s);
}

// Pinned host allocations: a queued copy from or to them reads or writes them when it runs.
static std::map<const char*, size_t> pinned;

static bool is_pinned(const void* p, size_t n) {
    std::lock_guard<std::mutex> g(lock);
    const char* c = static_cast<const char*>(p);
    auto it = pinned.upper_bound(c);
    if (it == pinned.begin()) return false;
    --it;
    return c >= it->first && c + n <= it->first + it->second;
}

// `counted`: the bytes were already given back (a stream-ordered free: later allocations on the
// stream may use them, while work queued before the free still reads the buffer).
static CUresult device_free(CUdeviceptr p, bool counted = false) {
    check_guards("something before this free");
    std::lock_guard<std::mutex> g(lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return p == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    if (!counted) allocated -= it->second;
    allocations.erase(it);
    std::free(reinterpret_cast<void*>(p));
    return CUDA_SUCCESS;
}

extern "C" {
CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return CUDA_SUCCESS; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, len, "vecbuild host emulator (tests only)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 16: *v = 2; break;                  // multiprocessors
        case 75: *v = 9; break;                  // compute capability major
        case 76: *v = 0; break;                  // minor
        case 97: *v = OPTIN_SHARED; break;       // shared memory a block may opt in to
        case 115: *v = 1; break;                 // memory pools (asynchronous allocation)
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) { *bytes = TOTAL_BYTES; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) { *c = THE_CONTEXT; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* c) { *c = THE_CONTEXT; return CUDA_SUCCESS; }
CUresult cuCtxPushCurrent_v2(CUcontext) { return CUDA_SUCCESS; }
CUresult cuCtxPopCurrent_v2(CUcontext* c) { if (c) *c = THE_CONTEXT; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice* d) { *d = 0; return CUDA_SUCCESS; }
CUresult cuCtxSynchronize() { drain_all(); return CUDA_SUCCESS; }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(lock);
    *free_bytes = TOTAL_BYTES - allocated;
    *total = TOTAL_BYTES;
    return CUDA_SUCCESS;
}

// Streams are never freed: a destroyed stream's queue is empty and stays so.
CUresult cuStreamCreate(CUstream* s, unsigned) {
    Stream* stream = new Stream;
    std::lock_guard<std::mutex> g(queue_lock);
    all_streams.push_back(stream);
    *s = reinterpret_cast<CUstream>(stream);
    return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int) { return cuStreamCreate(s, flags); }
CUresult cuStreamDestroy_v2(CUstream s) { drain(stream_of(s)); return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(CUstream s) { drain(stream_of(s)); return CUDA_SUCCESS; }
CUresult cuStreamQuery(CUstream s) { drain(stream_of(s)); return CUDA_SUCCESS; }
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned) {
    Event* ev = reinterpret_cast<Event*>(e);
    Stream* stream = stream_of(s);
    if (ev->stream && ev->stream != stream) {
        std::lock_guard<std::mutex> g(queue_lock);
        stream->queue.push_back({++queued, nullptr, "a wait for an event", ev->stream, ev->seq});
    }
    return CUDA_SUCCESS;
}
CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = reinterpret_cast<CUevent>(new Event{nullptr, 0});
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
    std::lock_guard<std::mutex> g(queue_lock);
    *reinterpret_cast<Event*>(e) = Event{stream_of(s), queued};
    return CUDA_SUCCESS;
}
CUresult cuEventSynchronize(CUevent e) {
    Event ev = *reinterpret_cast<Event*>(e);
    if (ev.stream) drain(ev.stream, ev.seq);
    return CUDA_SUCCESS;
}
CUresult cuEventQuery(CUevent e) { return cuEventSynchronize(e); }
CUresult cuEventDestroy_v2(CUevent e) { delete reinterpret_cast<Event*>(e); return CUDA_SUCCESS; }
CUresult cuEventElapsedTime(float* ms, CUevent, CUevent) { *ms = 0; return CUDA_SUCCESS; }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { return device_alloc(p, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return device_alloc(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) { drain_all(); return device_free(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    {
        std::lock_guard<std::mutex> g(lock);
        auto it = allocations.find(p);
        if (it == allocations.end()) return p == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
        allocated -= it->second;
    }
    enqueue(s, "a free", [p] { device_free(p, true); });
    return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    *p = std::malloc(bytes ? bytes : 1);
    if (!*p) return CUDA_ERROR_OUT_OF_MEMORY;
    std::lock_guard<std::mutex> g(lock);
    pinned[static_cast<const char*>(*p)] = bytes;
    return CUDA_SUCCESS;
}
CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }
CUresult cuMemFreeHost(void* p) {
    drain_all();
    std::lock_guard<std::mutex> g(lock);
    pinned.erase(static_cast<const char*>(p));
    std::free(p);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    drain_all();
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    check_guards("a copy to the device");
    return CUDA_SUCCESS;
}
// From pinned memory the copy reads the host when it runs; from pageable memory the driver takes
// the bytes when the copy is queued.
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    void* to = reinterpret_cast<void*>(dst);
    if (is_pinned(src, n)) {
        enqueue(s, "a copy to the device", [to, src, n] { std::memcpy(to, src, n); });
    } else {
        auto bytes = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + n);
        enqueue(s, "a copy to the device", [to, bytes] { std::memcpy(to, bytes->data(), bytes->size()); });
    }
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    drain_all();
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return CUDA_SUCCESS;
}
// Into pinned memory the copy is queued; into pageable memory it returns when done.
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    const void* from = reinterpret_cast<const void*>(src);
    if (!is_pinned(dst, n)) {
        drain(stream_of(s));
        std::memcpy(dst, from, n);
        return CUDA_SUCCESS;
    }
    enqueue(s, "a copy from the device", [dst, from, n] { std::memcpy(dst, from, n); });
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    drain_all();
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    check_guards("a copy on the device");
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    void* to = reinterpret_cast<void*>(dst);
    const void* from = reinterpret_cast<const void*>(src);
    enqueue(s, "a copy on the device", [to, from, n] { std::memmove(to, from, n); });
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    drain_all();
    std::memset(reinterpret_cast<void*>(dst), v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
    void* to = reinterpret_cast<void*>(dst);
    enqueue(s, "a memset", [to, v, n] { std::memset(to, v, n); });
    return CUDA_SUCCESS;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream s) {
    unsigned* p = reinterpret_cast<unsigned*>(dst);
    enqueue(s, "a memset", [p, v, n] {
        for (size_t i = 0; i < n; ++i) p[i] = v;
    });
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadData(CUmodule* m, const void*) { *m = THE_CONTEXT; return CUDA_SUCCESS; }
CUresult cuModuleUnload(CUmodule) { return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
    if (!kernels().count(name)) return CUDA_ERROR_NOT_FOUND;
    *f = new Function{name, 48 << 10};
    return CUDA_SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int attribute, CUfunction f) {
    switch (attribute) {
        case 0: *v = 1024; break;                       // threads per block
        case 8: *v = f->max_dynamic_shared; break;      // dynamic shared memory allowed
        default: *v = 0;                                // static shared memory, registers, …
    }
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction f, int attribute, int value) {
    if (attribute == 8) {
        if (value < 0 || value > OPTIN_SHARED) return CUDA_ERROR_INVALID_VALUE;
        f->max_dynamic_shared = value;
    }
    return CUDA_SUCCESS;
}
CUresult cuFuncSetCacheConfig(CUfunction, int) { return CUDA_SUCCESS; }
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared, CUstream s, void** params, void**) {
    // As on a GPU: dynamic shared memory past 48 KiB needs the function's opt-in.
    if ((int)shared > f->max_dynamic_shared || shared > DYN_SMEM_BYTES || bx * by * bz > 1024 ||
        bx * by * bz == 0 || gx == 0 || gy == 0 || gz == 0)
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    enqueue(s, "kernel " + f->name, kernels().at(f->name)({gx, gy, gz}, {bx, by, bz}, params));
    return CUDA_SUCCESS;
}
CUresult cuGetErrorString(CUresult, const char** s) { *s = "emulated CUDA error"; return CUDA_SUCCESS; }
CUresult cuGetErrorName(CUresult, const char** s) { *s = "CUDA_ERROR_EMULATED"; return CUDA_SUCCESS; }
}

// ---------------------------------------------------------------------------------------------
// cuBLAS: the two products vecbuild asks for, column-major as cuBLAS defines them, summed in
// order in f32.

static float half_to_float(unsigned short h) {
    unsigned sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        int e = -1;
        do { ++e; man <<= 1; } while (!(man & 0x400u));
        bits = sign | ((112u - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

template <class T, class Load>
static void gemm(int ta, int tb, int m, int n, int k, float alpha, const T* a, int lda, const T* b,
                 int ldb, float beta, float* c, int ldc, Load load) {
    auto run = [&](int j0, int j1) {
        for (int j = j0; j < j1; ++j)
            for (int i = 0; i < m; ++i) {
                float acc = 0.0f;
                for (int l = 0; l < k; ++l) {
                    float x = load(ta ? a[l + (long long)i * lda] : a[i + (long long)l * lda]);
                    float y = load(tb ? b[j + (long long)l * ldb] : b[l + (long long)j * ldb]);
                    acc += x * y;
                }
                float& out = c[i + (long long)j * ldc];
                out = beta == 0.0f ? alpha * acc : alpha * acc + beta * out;
            }
    };
    unsigned threads = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
    std::vector<std::thread> team;
    int per = (n + threads - 1) / threads;
    for (unsigned t = 0; t < threads; ++t) {
        int j0 = t * per, j1 = std::min(n, j0 + per);
        if (j0 < j1) team.emplace_back(run, j0, j1);
    }
    for (auto& th : team) th.join();
}

extern "C" {
typedef struct Opaque* cublasHandle_t;
int cublasCreate_v2(cublasHandle_t* h) { *h = THE_CONTEXT; return 0; }
int cublasDestroy_v2(cublasHandle_t) { return 0; }
// The stream the GEMMs go on (one handle).
static CUstream blas_stream = nullptr;
int cublasSetStream_v2(cublasHandle_t, CUstream s) { blas_stream = s; return 0; }
int cublasSetMathMode(cublasHandle_t, int) { return 0; }
int cublasGetMathMode(cublasHandle_t, int* mode) { *mode = 0; return 0; }
int cublasSetWorkspace_v2(cublasHandle_t, void*, size_t) { return 0; }
// Queued on the stream like a kernel; alpha and beta are read when called (host pointer mode).
int cublasSgemm_v2(cublasHandle_t, int ta, int tb, int m, int n, int k, const float* alpha, const float* a,
                   int lda, const float* b, int ldb, const float* beta, float* c, int ldc) {
    float al = *alpha, be = *beta;
    enqueue(blas_stream, "cublasSgemm", [=] { gemm(ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc, [](float v) { return v; }); });
    return 0;
}
// fp16 inputs (CUDA_R_16F = 2), f32 output (CUDA_R_32F = 0), f32 arithmetic.
int cublasGemmEx(cublasHandle_t, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
                 int a_type, int lda, const void* b, int b_type, int ldb, const void* beta, void* c,
                 int c_type, int ldc, int, int) {
    if (a_type != 2 || b_type != 2 || c_type != 0) return 15;  // CUBLAS_STATUS_NOT_SUPPORTED
    float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    auto a16 = static_cast<const unsigned short*>(a), b16 = static_cast<const unsigned short*>(b);
    auto c32 = static_cast<float*>(c);
    enqueue(blas_stream, "cublasGemmEx", [=] { gemm(ta, tb, m, n, k, al, a16, lda, b16, ldb, be, c32, ldc, half_to_float); });
    return 0;
}
}

// ---------------------------------------------------------------------------------------------
// NVRTC: "compiling" names the file; the module's functions are the host-built kernels above.

extern "C" {
struct Program {
    std::string ptx;
};
typedef Program* nvrtcProgram;
const char* nvrtcGetErrorString(int) { return "emulated NVRTC error"; }
int nvrtcVersion(int* major, int* minor) { *major = 0; *minor = 1; return 0; }
int nvrtcCreateProgram(nvrtcProgram* p, const char*, const char* name, int, const char* const*,
                       const char* const*) {
    *p = new Program{std::string("// vecbuild host emulator: ") + (name ? name : "") + "\n"};
    return 0;
}
int nvrtcCompileProgram(nvrtcProgram, int, const char* const*) { return 0; }
int nvrtcGetProgramLogSize(nvrtcProgram, size_t* n) { *n = 1; return 0; }
int nvrtcGetProgramLog(nvrtcProgram, char* log) { log[0] = 0; return 0; }
int nvrtcGetPTXSize(nvrtcProgram p, size_t* n) { *n = p->ptx.size() + 1; return 0; }
int nvrtcGetPTX(nvrtcProgram p, char* out) { std::memcpy(out, p->ptx.c_str(), p->ptx.size() + 1); return 0; }
int nvrtcDestroyProgram(nvrtcProgram* p) { delete *p; *p = nullptr; return 0; }
}
