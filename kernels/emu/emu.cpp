// The CUDA execution-model emulator's runtime (read emu.h first for the model).
//
//   1. fibers: stacks and the context switch
//   2. the block scheduler: schedules, barriers, deadlock reports
//   3. what kernels call: __syncthreads, warp operations (shuffle, ballot, mma), shared memory
//   4. the kernel registry, the worker pool and simclr_emu_launch
//
// Error handling: a kernel that breaks a rule (partial warp mask, deadlock, ...) must not take
// the process down, so the failing fiber writes a message and switches back to its block's
// scheduler for good; the block's fibers are simply abandoned (kernels have no destructors, and
// their stacks are reused by the next block) and the launch returns the message.
#include "emu/emu.h"

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace simclr_emu {

constinit thread_local ThreadView* current_thread = nullptr;

// ============================================================================================
// 1. Fibers
// ============================================================================================

#if defined(__x86_64__)
// A suspended context is only its stack pointer: its callee-saved registers are on its stack.
struct Context {
    void* sp;
};

// simclr_emu_switch(from, to) pushes the callee-saved registers (rbp, rbx, r12-r15) on the
// current stack, saves the stack pointer in from->sp, loads to->sp, pops the other context's
// registers and returns into it. Caller-saved registers need no saving: the compiler already
// assumes a call clobbers them. MXCSR and the x87 control word are not saved (kernels never
// change them): that keeps a switch at a few nanoseconds, where ucontext needs a syscall.
extern "C" void simclr_emu_switch(Context* from, const Context* to);
asm(R"(
    .pushsection .text
    .p2align 4
    .globl simclr_emu_switch
    .hidden simclr_emu_switch
    .type simclr_emu_switch, @function
simclr_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq (%rsi), %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size simclr_emu_switch, .-simclr_emu_switch
    .popsection
)");

static void switch_context(Context* from, const Context* to) { simclr_emu_switch(from, to); }

// A new fiber's stack is made to look like one suspended inside simclr_emu_switch: six zeroed
// registers, then `entry` as the return address. After the `ret`, rsp = top - 8, which is what
// a function expects on entry (16-byte aligned before its caller's `call` pushed 8 bytes).
static void make_context(Context* ctx, char* stack_lo, size_t stack_size, void (*entry)()) {
    void** sp = reinterpret_cast<void**>(stack_lo + stack_size);  // page aligned
    *--sp = nullptr;                         // return address of entry, which never returns
    *--sp = reinterpret_cast<void*>(entry);  // popped by `ret`
    for (int i = 0; i < 6; i++) *--sp = nullptr;  // rbp (0 ends debugger backtraces), rbx, r12-r15
    ctx->sp = sp;
}
#else
// Other architectures: ucontext, slower (swapcontext saves the signal mask with a syscall).
struct Context {
    ucontext_t uc;
};

static void switch_context(Context* from, const Context* to) { swapcontext(&from->uc, &to->uc); }

static void make_context(Context* ctx, char* stack_lo, size_t stack_size, void (*entry)()) {
    getcontext(&ctx->uc);
    ctx->uc.uc_stack.ss_sp = stack_lo;
    ctx->uc.uc_stack.ss_size = stack_size;
    ctx->uc.uc_link = nullptr;
    makecontext(&ctx->uc, entry, 0);
}
#endif

// Fiber stack size: SIMCLR_EMU_STACK_KB (default 64 KiB), whole pages.
static size_t stack_bytes() {
    static const size_t bytes = [] {
        size_t kb = 64;
        if (const char* s = getenv("SIMCLR_EMU_STACK_KB")) {
            long v = atol(s);
            if (v >= 16) kb = (size_t)v;
            else fprintf(stderr, "simclr emulator: ignoring SIMCLR_EMU_STACK_KB=%s (want >= 16)\n", s);
        }
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        return (kb * 1024 + page - 1) / page * page;
    }();
    return bytes;
}

// mmap'd with one PROT_NONE guard page below it: a kernel that overflows its stack faults at
// once instead of silently writing into the neighbouring fiber's stack. nullptr when out of memory.
static char* map_stack(size_t size) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* base = mmap(nullptr, size + page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    mprotect(base, page, PROT_NONE);
    return static_cast<char*>(base) + page;
}

// ============================================================================================
// 2. The block scheduler
// ============================================================================================

enum class State : uint8_t {
    Runnable,
    AtBlockBarrier,  // in __syncthreads
    AtWarpOp,        // in a shuffle, ballot, __syncwarp or mma, waiting for its warp
    Exited,          // returned from the kernel
    Failed,          // broke a rule; the block is abandoned
};

// A cp.async in flight: its bytes, read at issue, land in dst when its group is waited for.
struct PendingCopy {
    void* dst;
    int size;
    int group;  // -1 until committed
    unsigned char bytes[16];
};

struct Fiber {
    ThreadView view;  // what threadIdx & co. read while this fiber runs
    unsigned tid;     // linear index in the block: x + y·bx + z·bx·by (lane = tid % 32)
    State state;
    Site site;        // the barrier / warp operation it waits at
    Context context;
    char* stack;      // lowest usable byte; the stack is stack_bytes() long
    std::vector<PendingCopy> copies;  // cp.async not yet waited for
    int groups;                       // cp.async groups committed
};

// The exchange through which a warp's lanes see each other's values. Lane l writes its words
// to exchange[generation % 2][l], waits until all 32 lanes have arrived, then reads. Two halves,
// because a fast lane may already write its next operation's words while slower lanes still
// read this one's; it cannot get two operations ahead, as the next one needs all lanes.
struct Warp {
    unsigned generation;           // completed warp operations
    uint32_t exchange[2][32][10];  // 10 words per lane: mma's a[4], b[2], c[4]
    unsigned loaded;               // the generation whose ldmatrix has read shared memory
};

struct Launch;

// One per pool thread: the block it runs and the fibers it runs it with.
struct Worker {
    std::vector<Fiber> fibers;  // grown to the largest block seen; stacks are reused
    std::vector<Warp> warps;
    unsigned char* dynamic_shared = nullptr;
    size_t dynamic_shared_capacity = 0;
    Context scheduler;  // the worker's own stack, where run_block runs
    Fiber* running = nullptr;
    const Launch* launch = nullptr;
    uint3 block_idx{};
    unsigned nthreads = 0;
    // Written by a failing fiber: a fixed buffer, since nothing allocated on a fiber stack we
    // abandon would ever be freed.
    char error[768];
};

static thread_local Worker* current_worker = nullptr;

// Everything a worker needs to know about the launch (read-only while blocks run).
struct Launch {
    const char* kernel;
    Launcher launcher;
    void** params;
    uint3 grid, block;
    unsigned dynamic_shared_bytes;
    int schedule;
    unsigned threads_per_block;
    uint64_t blocks;
    std::atomic<uint64_t> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    std::string error;  // the first failure
};

static const char* basename_of(const char* path) {
    const char* slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

// Two macro expansions at the same line usually share their string literals, so the pointer
// comparisons settle almost every call.
static bool same_site(const Site& a, const Site& b) {
    return a.line == b.line && (a.file == b.file || strcmp(a.file, b.file) == 0) &&
           (a.what == b.what || strcmp(a.what, b.what) == 0);
}

// Every fiber starts here, on its own stack.
[[noreturn]] static void fiber_main() {
    Worker& w = *current_worker;  // fibers never change OS thread, so this stays valid
    w.launch->launcher(w.launch->params);
    w.running->state = State::Exited;
    switch_context(&w.running->context, &w.scheduler);
    __builtin_unreachable();  // an exited fiber is never resumed
}

// Called on a fiber: park it in `state` and let the scheduler run the others.
static void wait_at(State state, Site site) {
    Worker& w = *current_worker;
    Fiber& f = *w.running;
    f.state = state;
    f.site = site;
    switch_context(&f.context, &w.scheduler);
}

// Called on a fiber that broke a rule: record the message and leave the block for good.
[[noreturn]] __attribute__((format(printf, 1, 2))) static void fail(const char* format, ...) {
    Worker& w = *current_worker;
    Fiber& f = *w.running;
    if (w.error[0] == 0) {
        const ThreadView& v = f.view;
        int n = snprintf(w.error, sizeof w.error, "kernel '%s' block (%u,%u,%u) thread (%u,%u,%u): ",
                         w.launch->kernel, v.block_idx.x, v.block_idx.y, v.block_idx.z,
                         v.thread_idx.x, v.thread_idx.y, v.thread_idx.z);
        if (n > 0 && (size_t)n < sizeof w.error) {
            va_list args;
            va_start(args, format);
            vsnprintf(w.error + n, sizeof w.error - (size_t)n, format, args);
            va_end(args);
        }
    }
    f.state = State::Failed;
    switch_context(&f.context, &w.scheduler);
    __builtin_unreachable();
}

// Runs each runnable fiber of tids [first, first + count) once, until it blocks or exits, in
// increasing or decreasing tid order. False when one failed.
static bool run_pass(Worker& w, unsigned first, unsigned count, bool reverse) {
    for (unsigned k = 0; k < count; k++) {
        Fiber& f = w.fibers[reverse ? first + count - 1 - k : first + k];
        if (f.state != State::Runnable) continue;
        w.running = &f;
        current_thread = &f.view;
        switch_context(&w.scheduler, &f.context);
        if (f.state == State::Failed) return false;
    }
    return true;
}

// Releases warp `wi` if all 32 lanes wait at the same warp operation.
static bool try_release_warp(Worker& w, unsigned wi) {
    if (32 * wi + 32 > w.nthreads) return false;  // partial warps fail at their first warp op
    Fiber* lanes = &w.fibers[32 * wi];
    for (unsigned l = 0; l < 32; l++)
        if (lanes[l].state != State::AtWarpOp || !same_site(lanes[l].site, lanes[0].site)) return false;
    w.warps[wi].generation++;
    for (unsigned l = 0; l < 32; l++) lanes[l].state = State::Runnable;
    return true;
}

// Releases the block barrier if every thread waits at the same __syncthreads. A thread that
// has exited never arrives, so then the others wait forever: a deadlock.
static bool try_release_block(Worker& w) {
    for (unsigned t = 0; t < w.nthreads; t++)
        if (w.fibers[t].state != State::AtBlockBarrier || !same_site(w.fibers[t].site, w.fibers[0].site))
            return false;
    for (unsigned t = 0; t < w.nthreads; t++) w.fibers[t].state = State::Runnable;
    return true;
}

// No thread can run and the block has not finished: says who waits where, e.g.
// "deadlock in kernel 'k' block (0,0,0) of 64 threads: threads 0-31 wait at __syncthreads
// (selftest.cu:40); threads 32-63 exited".
static void describe_deadlock(Worker& w) {
    struct Group {
        State state;
        Site site;
        unsigned first, last;  // the current run of consecutive tids
        std::string tids;
    };
    auto close_run = [](Group& g) {
        if (g.tids.size() > 60) {
            if (g.tids.back() != '.') g.tids += ",...";
            return;
        }
        if (!g.tids.empty()) g.tids += ",";
        g.tids += std::to_string(g.first);
        if (g.last != g.first) g.tids += "-" + std::to_string(g.last);
    };
    std::vector<Group> groups;
    for (unsigned t = 0; t < w.nthreads; t++) {
        const Fiber& f = w.fibers[t];
        Group* g = nullptr;
        for (Group& h : groups)
            if (h.state == f.state && (f.state == State::Exited || same_site(h.site, f.site))) g = &h;
        if (!g) {
            groups.push_back(Group{f.state, f.site, t, t, ""});
        } else if (t == g->last + 1) {
            g->last = t;
        } else {
            close_run(*g);
            g->first = g->last = t;
        }
    }
    std::string message = "deadlock in kernel '" + std::string(w.launch->kernel) + "' block (" +
                          std::to_string(w.block_idx.x) + "," + std::to_string(w.block_idx.y) + "," +
                          std::to_string(w.block_idx.z) + ") of " + std::to_string(w.nthreads) +
                          " threads:";
    for (size_t i = 0; i < groups.size(); i++) {
        Group& g = groups[i];
        close_run(g);
        message += (i ? "; threads " : " threads ") + g.tids;
        if (g.state == State::Exited) {
            message += " exited";
        } else {
            message += " wait at " + std::string(g.site.what) + " (" + basename_of(g.site.file) + ":" +
                       std::to_string(g.site.line) + ")";
        }
    }
    message += " (all threads of a block must reach the same __syncthreads, all lanes of a warp "
               "the same warp operation)";
    snprintf(w.error, sizeof w.error, "%s", message.c_str());
}

// Runs block w.block_idx to completion. False (with w.error set) on failure or deadlock.
//
// Schedules: a fiber always runs until it blocks. rr resumes the threads in tid order, one
// pass over the block at a time, so warps interleave at every warp operation; warp runs one
// warp until all its lanes wait at __syncthreads (or exited) before starting the next. The
// reversed variants visit tids (and warps) from the top. Running rr and warp makes the order
// of memory accesses between barriers differ enough to expose missing barriers.
static bool run_block(Worker& w) {
    const Launch& launch = *w.launch;
    const unsigned n = w.nthreads, nwarps = (n + 31) / 32;
    const uint3 bd = launch.block;
    for (unsigned t = 0; t < n; t++) {
        Fiber& f = w.fibers[t];
        f.view.thread_idx = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
        f.view.block_idx = w.block_idx;
        f.view.block_dim = launch.block;
        f.view.grid_dim = launch.grid;
        f.tid = t;
        f.state = State::Runnable;
        f.copies.clear();
        f.groups = 0;
        make_context(&f.context, f.stack, stack_bytes(), fiber_main);
    }
    for (unsigned wi = 0; wi < nwarps; wi++) w.warps[wi].generation = w.warps[wi].loaded = 0;
    // Stale reads of dynamic shared memory then show as NaN (and as -1 for integers).
    if (launch.dynamic_shared_bytes) memset(w.dynamic_shared, 0xFF, launch.dynamic_shared_bytes);
    w.error[0] = 0;

    const bool warp_major = launch.schedule & 1, reverse = launch.schedule & 2;
    for (;;) {
        bool released = false;
        if (warp_major) {
            for (unsigned k = 0; k < nwarps; k++) {
                unsigned wi = reverse ? nwarps - 1 - k : k;
                unsigned lanes = n - 32 * wi < 32 ? n - 32 * wi : 32;
                do {
                    if (!run_pass(w, 32 * wi, lanes, reverse)) return false;
                } while (try_release_warp(w, wi));
            }
        } else {
            if (!run_pass(w, 0, n, reverse)) return false;
            for (unsigned wi = 0; wi < nwarps; wi++) released |= try_release_warp(w, wi);
        }
        if (released) continue;
        bool all_exited = true;
        for (unsigned t = 0; t < n; t++) all_exited &= w.fibers[t].state == State::Exited;
        if (all_exited) return true;
        if (try_release_block(w)) continue;
        describe_deadlock(w);
        return false;
    }
}

// ============================================================================================
// 3. What kernels call
// ============================================================================================

void syncthreads(Site site) { wait_at(State::AtBlockBarrier, site); }

// Checks shared by all warp operations; returns the caller's warp and lane.
static Warp& enter_warp_op(Site site, unsigned mask, unsigned* lane) {
    Worker& w = *current_worker;
    const Fiber& f = *w.running;
    if (mask != 0xffffffffu)
        fail("%s (%s:%d) with mask 0x%08x: the emulator supports only the full warp mask 0xffffffff",
             site.what, basename_of(site.file), site.line, mask);
    unsigned wi = f.tid / 32;
    if (32 * wi + 32 > w.nthreads)
        fail("%s (%s:%d) in the partial last warp of a %u-thread block: warp operations need all 32 "
             "lanes (make the block size a multiple of 32)",
             site.what, basename_of(site.file), site.line, w.nthreads);
    *lane = f.tid % 32;
    return w.warps[wi];
}

void syncwarp(Site site, unsigned mask) {
    unsigned lane;
    enter_warp_op(site, mask, &lane);
    wait_at(State::AtWarpOp, site);
}

// The source lane follows the PTX ISA's shfl.sync definition, with the `c` operand CUDA's
// intrinsics pass: c = ((32 - width) << 8) | 31, or (32 - width) << 8 for __shfl_up_sync. So
// the warp is split into segments of `width` lanes; a source outside the caller's segment
// (up: below it, down and xor: above it) yields the caller's own value, and idx wraps
// srcLane modulo width within the segment.
uint32_t shfl_bits(ShflMode mode, Site site, unsigned mask, uint32_t bits, int lane_or_delta, int width) {
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail("%s (%s:%d) with width %d: width must be a power of two from 1 to 32", site.what,
             basename_of(site.file), site.line, width);
    unsigned lane;
    Warp& warp = enter_warp_op(site, mask, &lane);
    const unsigned half = warp.generation % 2;
    warp.exchange[half][lane][0] = bits;
    wait_at(State::AtWarpOp, site);

    const unsigned segmask = 32u - (unsigned)width;  // c[12:8]
    const unsigned clamp = mode == ShflMode::Up ? 0u : 31u;  // c[4:0]
    const unsigned b = (unsigned)lane_or_delta & 31u;
    const int min_lane = (int)(lane & segmask);
    const int max_lane = (int)((lane & segmask) | (clamp & ~segmask));
    int j = 0;
    bool in_range = false;
    switch (mode) {
        case ShflMode::Up: j = (int)lane - (int)b; in_range = j >= max_lane; break;
        case ShflMode::Down: j = (int)(lane + b); in_range = j <= max_lane; break;
        case ShflMode::Xor: j = (int)(lane ^ b); in_range = j <= max_lane; break;
        case ShflMode::Idx: j = min_lane | (int)(b & ~segmask); in_range = j <= max_lane; break;
    }
    if (!in_range) j = (int)lane;
    return warp.exchange[half][j][0];
}

unsigned ballot(Site site, unsigned mask, int predicate) {
    unsigned lane;
    Warp& warp = enter_warp_op(site, mask, &lane);
    const unsigned half = warp.generation % 2;
    warp.exchange[half][lane][0] = predicate != 0;
    wait_at(State::AtWarpOp, site);
    unsigned votes = 0;
    for (unsigned l = 0; l < 32; l++)
        if (warp.exchange[half][l][0]) votes |= 1u << l;
    return votes;
}

// Element `index` (0 or 1) of a register holding two bf16, as f32 (bf16 is f32's top half).
static float bf16_half(uint32_t reg, unsigned index) {
    uint32_t bits = (reg >> (16 * index)) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// The inverse of the PTX ISA's fragment layouts for mma.m16n8k16 .bf16 (see common.cuh), over
// the warp's exchange: words 0-3 of a lane are its a[0..3], 4-5 its b[0..1], 6-9 its c[0..3].
// A[row][k] is held by lane (row % 8)·4 + (k % 8)/2, register a[row/8 + 2·(k/8)], half k % 2.
static float mma_a(const uint32_t (*x)[10], unsigned row, unsigned k) {
    return bf16_half(x[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)], k % 2);
}
// B[k][col] is held by lane col·4 + (k % 8)/2, register b[k/8], half k % 2.
static float mma_b(const uint32_t (*x)[10], unsigned k, unsigned col) {
    return bf16_half(x[col * 4 + (k % 8) / 2][4 + k / 8], k % 2);
}

// Each lane computes its own D fragment: d[i] = C[row][col] + Σ_k A[row][k]·B[k][col] with
// row = lane/4 (+8 for i >= 2), col = 2·(lane % 4) + i % 2. Products of two bf16 are exact in
// f32, so only the order of the f32 additions (k ascending here) differs from the hardware.
void mma_bf16_m16n8k16(Site site, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    unsigned lane;
    Warp& warp = enter_warp_op(site, 0xffffffffu, &lane);
    const unsigned half = warp.generation % 2;
    uint32_t* mine = warp.exchange[half][lane];
    for (int i = 0; i < 4; i++) mine[i] = a[i];
    mine[4] = b[0];
    mine[5] = b[1];
    memcpy(&mine[6], c, 4 * sizeof(float));
    wait_at(State::AtWarpOp, site);

    const uint32_t(*x)[10] = warp.exchange[half];
    float out[4];  // d may alias c: read all of c (from the exchange) before writing d
    for (unsigned i = 0; i < 4; i++) {
        unsigned row = lane / 4 + 8 * (i / 2), col = 2 * (lane % 4) + i % 2;
        float acc;
        memcpy(&acc, &x[lane][6 + i], 4);
        for (unsigned k = 0; k < 16; k++) acc += mma_a(x, row, k) * mma_b(x, k, col);
        out[i] = acc;
    }
    for (int i = 0; i < 4; i++) d[i] = out[i];
}

void* dynamic_shared() {
    Worker& w = *current_worker;
    return w.launch->dynamic_shared_bytes ? w.dynamic_shared : nullptr;
}

static void check_aligned(Site site, const void* p, unsigned align, const char* what) {
    if (reinterpret_cast<uintptr_t>(p) % align != 0)
        fail("%s (%s:%d): misaligned %s address %p: it must be a multiple of %u (a GPU faults)",
             site.what, basename_of(site.file), site.line, what, p, align);
}

uint4 load_16B(Site site, const void* p) {
    check_aligned(site, p, 16, "16-byte load");
    uint4 v;
    memcpy(&v, p, 16);
    return v;
}

void store_16B(Site site, void* p, uint4 v) {
    check_aligned(site, p, 16, "16-byte store");
    memcpy(p, &v, 16);
}

// Element (row, col) of the 8×8 b16 matrix whose rows start at rows[0..7].
static uint16_t matrix_element(void* const* rows, unsigned row, unsigned col) {
    uint16_t v;
    memcpy(&v, static_cast<const unsigned char*>(rows[row]) + 2 * col, 2);
    return v;
}

// The warp reads shared memory once, at the instruction, as the hardware does: the first lane
// to resume computes every lane's registers (words 2.. of its exchange slot, after the row
// address in words 0-1) before any lane can run on and write to the rows.
void ldmatrix(Site site, int count, bool trans, uint32_t* r, const void* row) {
    unsigned lane;
    Warp& warp = enter_warp_op(site, 0xffffffffu, &lane);
    if (lane < 8u * (unsigned)count) check_aligned(site, row, 16, "ldmatrix row");
    const unsigned generation = warp.generation, half = generation % 2;
    memcpy(warp.exchange[half][lane], &row, sizeof row);
    wait_at(State::AtWarpOp, site);

    uint32_t(*x)[10] = warp.exchange[half];
    if (warp.loaded != generation + 1) {
        warp.loaded = generation + 1;
        void* rows[4][8];
        for (int i = 0; i < count; i++)
            for (unsigned k = 0; k < 8; k++) memcpy(&rows[i][k], x[8 * i + k], sizeof rows[i][k]);
        for (unsigned l = 0; l < 32; l++) {
            const unsigned r0 = l / 4, c0 = 2 * (l % 4);
            for (int i = 0; i < count; i++) {
                uint16_t lo = trans ? matrix_element(rows[i], c0, r0) : matrix_element(rows[i], r0, c0);
                uint16_t hi = trans ? matrix_element(rows[i], c0 + 1, r0) : matrix_element(rows[i], r0, c0 + 1);
                x[l][2 + i] = (uint32_t)lo | ((uint32_t)hi << 16);
            }
        }
    }
    for (int i = 0; i < count; i++) r[i] = x[lane][2 + i];
}

void cp_async(Site site, void* dst, const void* src, int size, int src_bytes) {
    if (size != 4 && size != 8 && size != 16)
        fail("%s (%s:%d): copies of %d bytes; cp.async copies 4, 8 or 16", site.what,
             basename_of(site.file), site.line, size);
    if (src_bytes < 0 || src_bytes > size)
        fail("%s (%s:%d): %d source bytes for a %d-byte copy", site.what, basename_of(site.file),
             site.line, src_bytes, size);
    check_aligned(site, dst, (unsigned)size, "cp.async destination");
    check_aligned(site, src, (unsigned)size, "cp.async source");
    PendingCopy copy{dst, size, -1, {}};
    memcpy(copy.bytes, src, (size_t)src_bytes);  // the rest stays zero: the zero-fill
    current_worker->running->copies.push_back(copy);
    memset(dst, 0xFF, (size_t)size);  // poison until waited for
}

void cp_async_commit() {
    Fiber& f = *current_worker->running;
    for (PendingCopy& c : f.copies)
        if (c.group < 0) c.group = f.groups;
    f.groups++;
}

void cp_async_wait(int pending) {
    Fiber& f = *current_worker->running;
    const int complete_below = f.groups - pending;  // groups [0, complete_below) are done
    size_t kept = 0;
    for (PendingCopy& c : f.copies) {
        if (c.group >= 0 && c.group < complete_below) memcpy(c.dst, c.bytes, (size_t)c.size);
        else f.copies[kept++] = c;
    }
    f.copies.resize(kept);
}

// ============================================================================================
// 4. Registry, worker pool, launch
// ============================================================================================

// A function-local static: the registrars run during static initialisation, in any order
// relative to this file's globals.
static std::map<std::string, Launcher>& registry() {
    static std::map<std::string, Launcher> kernels;
    return kernels;
}

Registrar::Registrar(const char* name, Launcher launcher) { registry().emplace(name, launcher); }

// Sizes the worker's fibers, warps and dynamic shared memory for the launch. False when out of
// memory.
static bool prepare_worker(Worker& w, const Launch& launch) {
    while (w.fibers.size() < launch.threads_per_block) {
        char* stack = map_stack(stack_bytes());
        if (!stack) return false;
        w.fibers.push_back(Fiber{});
        w.fibers.back().stack = stack;
    }
    w.warps.resize(w.fibers.size() / 32 + 1);
    if (w.dynamic_shared_capacity < launch.dynamic_shared_bytes) {
        free(w.dynamic_shared);
        // Rounded up to a multiple of the alignment, as aligned_alloc requires.
        size_t bytes = (launch.dynamic_shared_bytes + 127) / 128 * 128;
        w.dynamic_shared = static_cast<unsigned char*>(aligned_alloc(128, bytes));
        if (!w.dynamic_shared) {
            w.dynamic_shared_capacity = 0;
            return false;
        }
        w.dynamic_shared_capacity = bytes;
    }
    return true;
}

static void record_error(Launch& launch, const char* message) {
    std::lock_guard<std::mutex> lock(launch.error_mutex);
    if (launch.error.empty()) launch.error = message;
    launch.failed.store(true);
}

// A worker's share of a launch: blocks are handed out one at a time, in blockIdx order.
static void run_blocks(Worker& w, Launch& launch) {
    if (!prepare_worker(w, launch)) {
        record_error(launch, "the emulator is out of memory for fiber stacks or dynamic shared memory");
        return;
    }
    w.launch = &launch;
    w.nthreads = launch.threads_per_block;
    const uint64_t gx = launch.grid.x, gy = launch.grid.y;
    while (!launch.failed.load(std::memory_order_relaxed)) {
        uint64_t b = launch.next_block.fetch_add(1);
        if (b >= launch.blocks) return;
        w.block_idx = uint3{(unsigned)(b % gx), (unsigned)(b / gx % gy), (unsigned)(b / (gx * gy))};
        if (!run_block(w)) record_error(launch, w.error);
    }
}

// OS threads that live as long as the process, each with its Worker (fiber stacks are kept
// between launches). A launch bumps `generation`, and waits until `busy` drops to zero.
struct Pool {
    std::mutex mutex;
    std::condition_variable wake, done;
    Launch* launch = nullptr;
    uint64_t generation = 0;
    unsigned size = 0, busy = 0;
};

static void worker_main(Pool* pool) {
    Worker worker;
    current_worker = &worker;
    uint64_t seen = 0;
    for (;;) {
        Launch* launch;
        {
            std::unique_lock<std::mutex> lock(pool->mutex);
            pool->wake.wait(lock, [&] { return pool->generation != seen; });
            seen = pool->generation;
            launch = pool->launch;
        }
        run_blocks(worker, *launch);
        std::lock_guard<std::mutex> lock(pool->mutex);
        if (--pool->busy == 0) pool->done.notify_one();
    }
}

// SIMCLR_EMU_THREADS threads (default: the cores this process may run on). Never destroyed:
// the threads block on a condition variable until the process exits.
static Pool& pool() {
    static Pool* instance = [] {
        cpu_set_t cpus;
        unsigned n = std::thread::hardware_concurrency();
        if (sched_getaffinity(0, sizeof cpus, &cpus) == 0) n = (unsigned)CPU_COUNT(&cpus);
        if (const char* s = getenv("SIMCLR_EMU_THREADS")) {
            long v = atol(s);
            if (v >= 1) n = (unsigned)v;
            else fprintf(stderr, "simclr emulator: ignoring SIMCLR_EMU_THREADS=%s\n", s);
        }
        Pool* p = new Pool;
        p->size = n < 1 ? 1 : n;
        for (unsigned i = 0; i < p->size; i++) std::thread(worker_main, p).detach();
        return p;
    }();
    return *instance;
}

// Dynamic shared memory a block may use without opting in, and the most it may opt in to.
static constexpr unsigned DEFAULT_DYNAMIC_SHARED = 48 * 1024, MAX_DYNAMIC_SHARED = 163 * 1024;

// The kernels that opted in to more dynamic shared memory, and how much.
static std::mutex opt_in_mutex;
static std::map<std::string, unsigned>& opt_ins() {
    static std::map<std::string, unsigned> kernels;
    return kernels;
}

static unsigned dynamic_shared_limit(const char* kernel) {
    std::lock_guard<std::mutex> lock(opt_in_mutex);
    auto it = opt_ins().find(kernel);
    return it == opt_ins().end() ? DEFAULT_DYNAMIC_SHARED : it->second;
}

// The launch-shape limits of the GPUs we target (sm_80 / sm_90): a shape the GPU would refuse
// fails here too. Returns nullptr when fine.
static const char* check_shape(const unsigned grid[3], const unsigned block[3], unsigned shared_bytes,
                               unsigned shared_limit) {
    if (!grid[0] || !grid[1] || !grid[2] || !block[0] || !block[1] || !block[2])
        return "a zero grid or block dimension";
    if (grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535)
        return "grid dimensions above (2^31-1, 65535, 65535)";
    if (block[0] > 1024 || block[1] > 1024 || block[2] > 64) return "block dimensions above (1024, 1024, 64)";
    if ((uint64_t)block[0] * block[1] * block[2] > 1024) return "more than 1024 threads per block";
    // Above 48 KiB a real GPU needs the kernel's opt-in (cuFuncSetAttribute).
    if (shared_bytes > shared_limit)
        return shared_limit == DEFAULT_DYNAMIC_SHARED
                   ? "more than 48 KiB of dynamic shared memory without the kernel's opt-in "
                     "(Gpu::allow_dynamic_shared)"
                   : "more dynamic shared memory than the kernel opted in to";
    return nullptr;
}

static std::string dims(const unsigned v[3]) {
    return std::to_string(v[0]) + "x" + std::to_string(v[1]) + "x" + std::to_string(v[2]);
}

}  // namespace simclr_emu

extern "C" int simclr_emu_launch(const char* kernel, const unsigned grid[3], const unsigned block[3],
                                 unsigned dynamic_shared_bytes, void** params, int schedule,
                                 char* err, size_t err_len) {
    using namespace simclr_emu;
    auto failure = [&](const std::string& message) {
        if (err_len) snprintf(err, err_len, "%s", message.c_str());
        return 1;
    };
    auto found = registry().find(kernel);
    if (found == registry().end())
        return failure("unknown kernel '" + std::string(kernel) +
                       "': not registered with the emulator (REGISTER_KERNEL missing?)");
    if (const char* problem = check_shape(grid, block, dynamic_shared_bytes, dynamic_shared_limit(kernel)))
        return failure("kernel '" + std::string(kernel) + "' launched with " + problem + " (grid " +
                       dims(grid) + ", block " + dims(block) + ", " + std::to_string(dynamic_shared_bytes) +
                       " bytes of dynamic shared memory)");
    if (schedule < 0 || schedule > 3)
        return failure("kernel '" + std::string(kernel) + "': unknown schedule " + std::to_string(schedule));

    // One launch at a time: the pool's workers serve a single launch.
    static std::mutex serial;
    std::lock_guard<std::mutex> one_at_a_time(serial);
    Launch launch;
    launch.kernel = kernel;
    launch.launcher = found->second;
    launch.params = params;
    launch.grid = uint3{grid[0], grid[1], grid[2]};
    launch.block = uint3{block[0], block[1], block[2]};
    launch.dynamic_shared_bytes = dynamic_shared_bytes;
    launch.schedule = schedule;
    launch.threads_per_block = block[0] * block[1] * block[2];
    launch.blocks = (uint64_t)grid[0] * grid[1] * grid[2];

    Pool& p = pool();
    {
        std::lock_guard<std::mutex> lock(p.mutex);
        p.launch = &launch;
        p.busy = p.size;
        p.generation++;
    }
    p.wake.notify_all();
    {
        std::unique_lock<std::mutex> lock(p.mutex);
        p.done.wait(lock, [&] { return p.busy == 0; });
    }
    if (launch.failed.load()) return failure(launch.error);
    if (err_len) err[0] = 0;
    return 0;
}

extern "C" int simclr_emu_set_max_dynamic_shared(const char* kernel, unsigned bytes, char* err,
                                                 size_t err_len) {
    using namespace simclr_emu;
    auto failure = [&](const std::string& message) {
        if (err_len) snprintf(err, err_len, "%s", message.c_str());
        return 1;
    };
    if (registry().find(kernel) == registry().end())
        return failure("unknown kernel '" + std::string(kernel) + "'");
    if (bytes > MAX_DYNAMIC_SHARED)
        return failure("kernel '" + std::string(kernel) + "': " + std::to_string(bytes) +
                       " bytes of dynamic shared memory, above the " +
                       std::to_string(MAX_DYNAMIC_SHARED) + " an sm_80 GPU allows");
    std::lock_guard<std::mutex> lock(opt_in_mutex);
    opt_ins()[kernel] = bytes < DEFAULT_DYNAMIC_SHARED ? DEFAULT_DYNAMIC_SHARED : bytes;
    if (err_len) err[0] = 0;
    return 0;
}
