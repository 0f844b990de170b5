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
// guarded past its end (see device_alloc); every call is synchronous, streams and events are
// names only.

#define DYN_SMEM_BYTES (96 << 10)
#define HOST_FIBERS
#include "runtime.h"
#include "kernels.inc"

#include <functional>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

// ---------------------------------------------------------------------------------------------
// Kernels by name: each launch unpacks the driver's argument pointers into the kernel's own
// parameter types.

using Launcher = std::function<void(Dim3, Dim3, void**)>;

template <class... A, size_t... I>
static void run_kernel(void (*f)(A...), Dim3 grid, Dim3 block, void** p, std::index_sequence<I...>) {
    std::tuple<A...> args{*static_cast<A*>(p[I])...};
    launch(grid, block, [&] { std::apply(f, args); });
}

template <class... A> static Launcher launcher(void (*f)(A...)) {
    return [f](Dim3 g, Dim3 b, void** p) { run_kernel(f, g, b, p, std::index_sequence_for<A...>{}); };
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

static CUresult device_free(CUdeviceptr p) {
    check_guards("something before this free");
    std::lock_guard<std::mutex> g(lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return p == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    allocated -= it->second;
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
CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(lock);
    *free_bytes = TOTAL_BYTES - allocated;
    *total = TOTAL_BYTES;
    return CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream* s, unsigned) { *s = nullptr; return CUDA_SUCCESS; }
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned, int) { *s = nullptr; return CUDA_SUCCESS; }
CUresult cuStreamDestroy_v2(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamQuery(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) { return CUDA_SUCCESS; }
CUresult cuEventCreate(CUevent* e, unsigned) { *e = THE_CONTEXT; return CUDA_SUCCESS; }
CUresult cuEventRecord(CUevent, CUstream) { return CUDA_SUCCESS; }
CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventDestroy_v2(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventElapsedTime(float* ms, CUevent, CUevent) { *ms = 0; return CUDA_SUCCESS; }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { return device_alloc(p, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return device_alloc(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) { return device_free(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return device_free(p); }
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    *p = std::malloc(bytes ? bytes : 1);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }
CUresult cuMemFreeHost(void* p) { std::free(p); return CUDA_SUCCESS; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    check_guards("a copy to the device");
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream) {
    return cuMemcpyHtoD_v2(dst, src, n);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream) {
    return cuMemcpyDtoH_v2(dst, src, n);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
    return cuMemcpyDtoD_v2(dst, src, n);
}
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    std::memset(reinterpret_cast<void*>(dst), v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) {
    return cuMemsetD8_v2(dst, v, n);
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream) {
    unsigned* p = reinterpret_cast<unsigned*>(dst);
    for (size_t i = 0; i < n; ++i) p[i] = v;
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
                        unsigned bz, unsigned shared, CUstream, void** params, void**) {
    // As on a GPU: dynamic shared memory past 48 KiB needs the function's opt-in.
    if ((int)shared > f->max_dynamic_shared || shared > DYN_SMEM_BYTES || bx * by * bz > 1024 ||
        bx * by * bz == 0 || gx == 0 || gy == 0 || gz == 0)
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    kernels().at(f->name)({gx, gy, gz}, {bx, by, bz}, params);
    check_guards(("kernel " + f->name).c_str());
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
int cublasSetStream_v2(cublasHandle_t, CUstream) { return 0; }
int cublasSetMathMode(cublasHandle_t, int) { return 0; }
int cublasGetMathMode(cublasHandle_t, int* mode) { *mode = 0; return 0; }
int cublasSetWorkspace_v2(cublasHandle_t, void*, size_t) { return 0; }
int cublasSgemm_v2(cublasHandle_t, int ta, int tb, int m, int n, int k, const float* alpha, const float* a,
                   int lda, const float* b, int ldb, const float* beta, float* c, int ldc) {
    gemm(ta, tb, m, n, k, *alpha, a, lda, b, ldb, *beta, c, ldc, [](float v) { return v; });
    check_guards("cublasSgemm");
    return 0;
}
// fp16 inputs (CUDA_R_16F = 2), f32 output (CUDA_R_32F = 0), f32 arithmetic.
int cublasGemmEx(cublasHandle_t, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
                 int a_type, int lda, const void* b, int b_type, int ldb, const void* beta, void* c,
                 int c_type, int ldc, int, int) {
    if (a_type != 2 || b_type != 2 || c_type != 0) return 15;  // CUBLAS_STATUS_NOT_SUPPORTED
    gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha), static_cast<const unsigned short*>(a), lda,
         static_cast<const unsigned short*>(b), ldb, *static_cast<const float*>(beta), static_cast<float*>(c),
         ldc, half_to_float);
    check_guards("cublasGemmEx");
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
