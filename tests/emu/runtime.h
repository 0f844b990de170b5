// CUDA's built-ins on the host, for running our kernels (kernels/*.cu) without a GPU: a
// block's threads are real threads, `__syncthreads` a barrier of the block, warp shuffles and
// ballots an exchange through a barrier of the warp, atomics `std::atomic_ref`, shared memory a
// static array (one block runs at a time). Threads that return leave the barriers, as exited GPU
// threads do. `launch` runs the grid's blocks in turn.
//
// Used by tests/it/kernels.rs (each kernel against the CPU's results) and by the host emulator
// of the CUDA libraries (tests/emu/emulator.cpp). Include it, then the kernel files.
#pragma once
#ifndef DYN_SMEM_BYTES
#define DYN_SMEM_BYTES (1 << 16)
#endif
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>
using std::max;
using std::min;
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx, blockDim, gridDim;
#ifdef HOST_FIBERS
// A block's threads as fibers on one host thread, switched only where a thread waits at a
// barrier: tens of times faster than host threads meeting at futexes, for whole pipelines run
// on the emulator. (Host threads interleave at random, which finds more races: the kernel tests
// use them.)
#include <ucontext.h>
static Dim3 threadIdx;
static void yield_fiber();
struct Barrier {
    unsigned expected, arrived = 0;
    unsigned long long phase = 0;
    explicit Barrier(unsigned n) : expected(n) {}
    void arrive_and_wait() {
        const unsigned long long mine = phase;
        if (++arrived == expected) {
            arrived = 0;
            ++phase;
            return;
        }
        while (phase == mine) yield_fiber();
    }
    void arrive_and_drop() {
        --expected;
        if (arrived > 0 && arrived >= expected) {
            arrived = 0;
            ++phase;
        }
    }
};
#else
static thread_local Dim3 threadIdx;
using Barrier = std::barrier<>;
#endif
static Barrier* block_barrier;
static std::vector<std::unique_ptr<Barrier>> warp_barriers;
static std::unique_ptr<std::atomic<unsigned long long>[]> warp_slots;
alignas(16) static unsigned char dyn_smem[DYN_SMEM_BYTES];
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n)
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
static inline unsigned lane_of() { return threadIdx.x % 32; }
static inline std::atomic<unsigned long long>* slots_of() { return &warp_slots[threadIdx.x / 32 * 32]; }
static inline unsigned long long swap_in_warp(unsigned long long mine, unsigned src) {
    slots_of()[lane_of()].store(mine);
    warp_barriers[threadIdx.x / 32]->arrive_and_wait();
    unsigned long long got = slots_of()[src % 32].load();
    warp_barriers[threadIdx.x / 32]->arrive_and_wait();
    return got;
}
template <class T> static T exchange(T v, unsigned src) {
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = swap_in_warp(bits, src);
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}
template <class T> static T __shfl_down_sync(unsigned, T v, int offset) {
    unsigned lane = lane_of();
    return exchange(v, lane + offset < 32 ? lane + offset : lane);
}
template <class T> static T __shfl_xor_sync(unsigned, T v, int mask) { return exchange(v, lane_of() ^ mask); }
template <class T> static T __shfl_sync(unsigned, T v, int src) { return exchange(v, src); }
static unsigned __ballot_sync(unsigned, int pred) {
    slots_of()[lane_of()].store(pred ? 1 : 0);
    warp_barriers[threadIdx.x / 32]->arrive_and_wait();
    unsigned bits = 0;
    for (unsigned i = 0; i < 32; ++i) bits |= slots_of()[i].load() ? 1u << i : 0u;
    warp_barriers[threadIdx.x / 32]->arrive_and_wait();
    return bits;
}
// The lanes holding the same value as this one (every lane of the warp taking part).
static unsigned __match_any_sync(unsigned, int v) {
    slots_of()[lane_of()].store((unsigned long long)(unsigned)v);
    warp_barriers[threadIdx.x / 32]->arrive_and_wait();
    unsigned bits = 0;
    for (unsigned i = 0; i < 32; ++i) bits |= slots_of()[i].load() == (unsigned)v ? 1u << i : 0u;
    warp_barriers[threadIdx.x / 32]->arrive_and_wait();
    return bits;
}
template <class T> static T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
static unsigned atomicCAS(unsigned* p, unsigned expected, unsigned desired) {
    std::atomic_ref<unsigned>(*p).compare_exchange_strong(expected, desired);
    return expected;
}
static unsigned atomicMax(unsigned* p, unsigned v) {
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {}
    return old;
}
template <class T> static T __ldg(const T* p) { return *p; }
static inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }


#ifdef HOST_FIBERS
// The fibers that play a block's threads, with their stacks kept from block to block.
struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    Dim3 index;
    bool done;
};
static ucontext_t scheduler;
static std::vector<Fiber> fibers;
static unsigned running;
static std::function<void(unsigned)> fiber_body;

static void yield_fiber() { swapcontext(&fibers[running].context, &scheduler); }

static void fiber_entry(int t) {
    fiber_body((unsigned)t);
    fibers[t].done = true;
    swapcontext(&fibers[t].context, &scheduler);
}

// Runs body(t) for t in 0..n as fibers until all return: in order on even blocks, in reverse on
// odd ones, so a read that needs a barrier before it is more likely to see the wrong data.
static void run_fibers(unsigned n, bool reverse, std::function<void(unsigned)> body) {
    fiber_body = std::move(body);
    if (fibers.size() < n) fibers.resize(n);
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = fibers[t];
        if (f.stack.empty()) f.stack.resize(1 << 16);
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.data();
        f.context.uc_stack.ss_size = f.stack.size();
        f.context.uc_link = nullptr;
        makecontext(&f.context, (void (*)())fiber_entry, 1, (int)t);
        f.done = false;
    }
    for (unsigned left = n; left > 0;) {
        for (unsigned i = 0; i < n; ++i) {
            unsigned t = reverse ? n - 1 - i : i;
            if (fibers[t].done) continue;
            running = t;
            threadIdx = fibers[t].index;
            swapcontext(&scheduler, &fibers[t].context);
            if (fibers[t].done) --left;
        }
    }
}
#else
// The threads that play a block's threads, kept from block to block (starting 256 threads per
// block would cost more than most blocks' work).
struct Team {
    std::mutex m;
    std::condition_variable wake, finished;
    std::vector<std::thread> threads;
    std::function<void(unsigned)> job;
    unsigned long long generation = 0;
    unsigned active = 0, pending = 0;

    // Runs job(t) for t in 0..n, one per thread, and waits for all of them.
    void run(unsigned n, std::function<void(unsigned)> f) {
        std::unique_lock<std::mutex> lock(m);
        while (threads.size() < n) {
            unsigned t = threads.size();
            threads.emplace_back([this, t] { serve(t); });
            threads.back().detach();
        }
        job = std::move(f);
        active = n;
        pending = n;
        ++generation;
        wake.notify_all();
        finished.wait(lock, [&] { return pending == 0; });
    }

    void serve(unsigned t) {
        unsigned long long seen = 0;
        for (;;) {
            std::function<void(unsigned)> f;
            {
                std::unique_lock<std::mutex> lock(m);
                wake.wait(lock, [&] { return generation != seen && t < active; });
                seen = generation;
                f = job;
            }
            f(t);
            std::lock_guard<std::mutex> lock(m);
            if (--pending == 0) finished.notify_one();
        }
    }
};

#endif

template <class F> static void launch(Dim3 grid, Dim3 block, F kernel) {
#ifndef HOST_FIBERS
    static Team* team = new Team;  // never destroyed: its threads wait until the process ends
#endif
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z, warps = (threads + 31) / 32;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                Barrier bar(threads);
                block_barrier = &bar;
                warp_barriers.clear();
                for (unsigned w = 0; w < warps; ++w)
                    warp_barriers.emplace_back(new Barrier(std::min(32u, threads - 32 * w)));
                warp_slots.reset(new std::atomic<unsigned long long>[warps * 32]);
                std::memset(dyn_smem, 0xcd, sizeof dyn_smem);  // garbage, as on a GPU
                auto body = [&](unsigned t) {
                    threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                    kernel();
                    slots_of()[lane_of()].store(0);
                    warp_barriers[t / 32]->arrive_and_drop();
                    bar.arrive_and_drop();
                };
#ifdef HOST_FIBERS
                for (unsigned t = 0; t < threads; ++t) {
                    if (fibers.size() < threads) fibers.resize(threads);
                    fibers[t].index = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                }
                run_fibers(threads, (x + y + z) % 2 == 1, body);
#else
                team->run(threads, body);
#endif
            }
}
