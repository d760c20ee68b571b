// Selective scan (S6) forward and backward on the CPU.
//
// Two layouts share the kernels.
// Plain (mamba-ssm's op): u, delta, z, y: (batch, dim, L); A: (dim, N); B, C: (batch, G, N, L) as
// mamba-ssm has them (read in place, no transposed copy; their gradients come back in that layout);
// D, bias: (dim,). Channel d = g * (dim / G) + c reads group g.
// Cross (SS2D, Wdt given): u and y are channels-last (batch, L, dim / G), u shared by the G groups
// (scan directions) and y summed over them; there is no delta tensor: rows are (batch, G, L, R + 2N)
// = [dt inputs (R), B, C] and delta = Wdt (dim, R) times the dt inputs, computed per chunk.
// An optional permutation perm (G, L) gives, per group, the stored position of each step: the scan
// of group g runs over positions perm[g, 0], perm[g, 1], ... and writes its outputs back there.
// With one permutation per direction this is SS2D's cross-scan / dt projection / scan / cross-merge
// in one pass (no copies). Rows may also be stored as a transposed (batch, L, G, R + 2N) tensor.
//
// Work is split into tasks (batch, block of channel indices c), run on the kernel's own threads
// (task_pool.h; chosen when OpenMP's threads sleep) or with at::parallel_for (OpenMP).
// In cross mode a task runs its block in every group, so sums over groups (du of a shared u, the
// merged y) have a single writer; in plain mode a task takes one group (tasks (batch, group, block)),
// so with one block per group it also writes that group's dB/dC alone. Inside a task, time is
// walked in chunks of kChunk steps and, for each chunk, every channel of the block: the chunk's B/C
// rows are copied once into small (kChunk, Np) buffers (state contiguous, zero-padded to Np, a
// multiple of the SIMD width) that stay in L1 across the block's channels. The state of one
// channel lives in registers as NB SIMD vectors.
//
// The forward optionally stores the state at the start of every chunk ("checkpoints", a kChunk-th
// of the (batch, dim, L, N) states). The backward walks the chunks in reverse: it recomputes the
// chunk's states from its checkpoint into an L1 buffer, then runs the adjoint recursion backwards
// in time. Softplus, delta_bias, the D skip, z gating, dD / d(delta_bias) sums are fused in. The
// rows' gradients (dB, dC and, in cross mode, d(dt inputs)) are sums over a group's channels: each
// task owns a private (kChunk, Np) accumulator per chunk, written to its own copy of the rows'
// layout (P copies, P = channel blocks), summed over P at the end when P > 1. Outputs of
// kStreamBytes and more are written with streaming stores.
//
// Per channel and chunk the state recursion (selective_scan_cpu_kernels.h) computes each step's
// decays exp(dt A) in the same loop as the recursion (they do not depend on the state, so the core
// overlaps them with its FMA chain), then the sums over the state for W steps at once (a
// transpose-add instead of a horizontal sum per step). The next channel's u/delta/z/y slices are
// prefetched (L floats apart: the hardware prefetcher misses them).
//
// Forwards that can (AVX-512, float, d_state 16, a multiple of 16 channels per group, the cross
// layout or the plain one in step order) take a second layout instead (selective_scan_cpu_lanes.h): 16 channels of a
// group in the lanes of a vector, one vector per state, so y needs no sums across lanes; the
// backward keeps the state layout and continues from the same checkpoints.
//
// SIMD: the kernels use GCC vector extensions and live in selective_scan_cpu_kernels.h, compiled
// three times: SSE2 (namespace generic, 32-byte vectors), AVX2+FMA (namespace avx2) and AVX-512
// (namespace avx512: 64-byte float vectors, used for float states in whole 16-lane vectors), each
// under `#pragma GCC target`; the choice is made at run time (no -march=native needed). float uses
// polynomial exps that vectorise (the decay in base 2 with A pre-scaled by log2(e), rel. error
// ~2e-7); double calls std::exp per lane (float64 is the exact-test path, not a speed path).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <string>

#include "output_pool.h"
#include "selective_scan_cpu_tasks.h"
#include "task_pool.h"

namespace {

// The widest instruction set allowed: "auto" (= avx512), "avx512", "avx2" or "generic" (tests and
// benchmarks force the narrower paths); best_isa caps it at what the CPU has.
Isa g_isa = Isa::avx512;

template <typename T> TaskFn<T> pick(bool fwd, int64_t Np) { return pick_task<T>(fwd, Np, best_isa(g_isa)); }

// Whether forwards take the lane-layout kernel where it applies (pick_lanes_fwd); off: always the
// state layout (tests and benchmarks compare the two).
bool g_lane_fwd = true;
std::atomic<bool> g_last_fwd_lanes{false};  // what the last forward ran (for the tests)

// Where parallel calls run: the scan's own threads (task_pool.h; the Python side picks them when
// OpenMP's threads sleep, OMP_WAIT_POLICY=PASSIVE) or OpenMP's, through at::parallel_for (the
// default: with spinning OpenMP threads, the pool's would compete with them for the cores).
bool g_task_pool = false;

// ---- host side ------------------------------------------------------------------------------
bool opt_ptr_check(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// Cross mode: the rows (batch, G, L, R + 2N) are stored either contiguously or as a (batch, L, G, R + 2N)
// tensor transposed (what a projection of channels-last pixels gives); rows themselves contiguous.
bool rows_dense(const at::Tensor& rows) {
  return rows.stride(3) == 1 && (rows.is_contiguous() || rows.transpose(1, 2).is_contiguous());
}

// Sequence length: the rows are (batch, G, L, R + 2N) in cross mode (Wdt given), else mamba's B
// (batch, G, N, L).
int64_t seq_len(const at::Tensor& rows, bool cross) { return rows.size(cross ? 2 : 3); }

// Shapes of the kernel's two layouts (see the top of this file); raises naming the argument.
// Plain: u, delta (batch, dim, L), B and C (batch, G, N, L). Cross (Wdt given): u (batch, L, dim / G),
// no delta, rows = B (batch, G, L, R + 2N) with R = Wdt.size(1), no C, no z.
void check_inputs(const at::Tensor& u, const c10::optional<at::Tensor>& delta, const at::Tensor& A,
                  const at::Tensor& rows, const c10::optional<at::Tensor>& C, const c10::optional<at::Tensor>& D,
                  const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& perm, const c10::optional<at::Tensor>& Wdt) {
  TORCH_CHECK(u.device().is_cpu(), "selective_scan cpu backend: tensors must be on the CPU");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "selective_scan cpu backend: float32 or float64 expected, got ", u.scalar_type());
  TORCH_CHECK(A.dim() == 2, "selective_scan: A must be (dim, N)");
  const int64_t dim = A.size(0), N = A.size(1);
  const bool cross = opt_ptr_check(Wdt);
  const int64_t R = cross ? Wdt->size(1) : 0;
  TORCH_CHECK(rows.dim() == 4, "selective_scan cpu kernel: B must be 4-dimensional");
  if (cross) {
    TORCH_CHECK(rows.size(3) == R + 2 * N, "selective_scan cpu kernel: rows must be (batch, groups, L, R + 2N) with R = ", R);
    TORCH_CHECK(rows.scalar_type() == u.scalar_type() && rows_dense(rows),
                "selective_scan cpu kernel: rows must have contiguous rows and be (batch, groups, L, R + 2N) or "
                "(batch, L, groups, R + 2N) in memory");
  } else {
    TORCH_CHECK(rows.size(2) == N && opt_ptr_check(C) && C->sizes() == rows.sizes(),
                "selective_scan cpu kernel: B and C must be (batch, groups, N, L)");
    for (const at::Tensor* t : {&rows, &C.value()})
      TORCH_CHECK(t->is_contiguous() && t->scalar_type() == u.scalar_type(),
                  "selective_scan cpu backend: inputs must be contiguous and of one dtype");
  }
  const int64_t batch = rows.size(0), G = rows.size(1), L = seq_len(rows, cross);
  TORCH_CHECK(G > 0 && dim % G == 0, "selective_scan: dim must be divisible by groups");
  if (cross) {
    TORCH_CHECK(!opt_ptr_check(delta) && !opt_ptr_check(z) && !opt_ptr_check(C),
                "selective_scan cpu kernel: cross mode takes no delta, C, z");
    TORCH_CHECK(Wdt->dim() == 2 && Wdt->size(0) == dim && Wdt->is_contiguous() && Wdt->scalar_type() == u.scalar_type(),
                "selective_scan cpu kernel: Wdt must be (dim, R)");
    TORCH_CHECK(u.dim() == 3 && u.size(0) == batch && u.size(1) == L && u.size(2) * G == dim,
                "selective_scan cpu kernel: u must be (batch, L, dim / groups) in cross mode");
  } else {
    TORCH_CHECK(opt_ptr_check(delta) && delta->dim() == 3 && delta->size(0) == batch && delta->size(1) == dim &&
                    delta->size(2) == L, "selective_scan: delta must be (batch, dim, L)");
    TORCH_CHECK(delta->is_contiguous() && delta->scalar_type() == u.scalar_type(),
                "selective_scan cpu backend: inputs must be contiguous and of one dtype");
    TORCH_CHECK(u.sizes() == delta->sizes(), "selective_scan: u must be (batch, dim, L) like delta");
  }
  for (const at::Tensor* t : {&u, &A}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == u.scalar_type(),
                "selective_scan cpu backend: inputs must be contiguous and of one dtype");
  }
  for (const c10::optional<at::Tensor>* t : {&D, &bias}) {
    if (opt_ptr_check(*t)) {
      TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == dim && (*t)->is_contiguous() &&
                      (*t)->scalar_type() == u.scalar_type(), "selective_scan: D and delta_bias must be (dim,)");
    }
  }
  if (opt_ptr_check(z))
    TORCH_CHECK(z->sizes() == u.sizes() && z->is_contiguous() && z->scalar_type() == u.scalar_type(),
                "selective_scan: z must be (batch, dim, L) like u");
  if (opt_ptr_check(perm)) {
    TORCH_CHECK(perm->scalar_type() == at::kInt && perm->dim() == 2 && perm->size(0) == G && perm->size(1) == L &&
                    perm->is_contiguous(), "selective_scan cpu kernel: perm must be int32 (groups, L)");
    TORCH_CHECK(L == 0 || (perm->min().item<int32_t>() >= 0 && perm->max().item<int32_t>() < L),
                "selective_scan cpu kernel: perm values must be positions in [0, L)");
  }
}

template <typename T> const T* opt_data(const c10::optional<at::Tensor>& t) {
  return opt_ptr_check(t) ? t->data_ptr<T>() : nullptr;
}

// Below this many (batch, channel, step, state) elements a call runs on the calling thread. With
// OpenMP's threads (2^22, ~0.6 ms of forward on one core here): on a busy machine, waking the OpenMP
// team and waiting at its barrier cost more. The task pool hands work over for ~1 us (a polling
// worker) to ~50 us (a sleeping one): 2^20 (~0.15 ms); set_serial_work overrides it.
constexpr int64_t kSerialWorkOpenMP = int64_t(1) << 22, kSerialWorkPool = int64_t(1) << 20;
int64_t g_serial_work = kSerialWorkOpenMP;  // follows g_task_pool (set_threads)
// The call's (batch, channel, step, padded state) elements, the measure g_serial_work and the block
// counts use.
template <typename T> int64_t call_work(const Args<T>& a) { return a.batch * a.dim * a.L * a.Np; }

// Channel blocks per task unit (a (batch, group) in plain mode, a batch element in cross mode):
// about two tasks per thread in all, never more than a group's channels; one block when the call
// runs serially or there are units enough (then dB/dC need no partial sums: a plain-mode task owns
// its group's rows). Few, large blocks: each task loads a chunk's B/C rows once for all its
// channels, and each block beyond the first adds a partial dB/dC the size of B and C (dynamic
// scheduling still evens out a busy machine).
int64_t channel_blocks(int64_t units, int64_t cpg, int64_t work) {
  if (work < g_serial_work || at::get_num_threads() <= 1) return 1;
  const int64_t want = 2 * int64_t(at::get_num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(cpg, (want + units - 1) / units));
}

// Channel blocks per task unit for the lane-layout forward: whole lane groups in equal blocks (a
// divisor of the lane groups per group), the fewest that give each thread about two tasks with a task
// count the threads divide (SS2D's 96 channels as 3 blocks of 2 lane groups on 2 threads left one
// thread idle a third of the forward); else one lane group per block.
int64_t lane_blocks(int64_t units, int64_t lane_groups, int64_t work) {
  const int64_t threads = at::get_num_threads();
  if (work < g_serial_work || threads <= 1) return 1;
  for (int64_t p = 1; p <= lane_groups; ++p)
    if (lane_groups % p == 0 && units * p % threads == 0 && units * p >= 2 * threads) return p;
  return lane_groups;
}

// Runs every (batch, block) task. Threads take tasks from a shared counter (dynamic
// scheduling: on a busy machine a preempted thread does not hold up a fixed share of the work), on
// the task pool or with at::parallel_for (the pool busy with another thread's call falls back to it).
template <typename T>
void run_tasks(const Args<T>& a, TaskFn<T> fn) {
  const int64_t ntask = task_count(a);
  const int64_t work = call_work(a);
  const int64_t workers = work < g_serial_work ? 1 : std::min<int64_t>(at::get_num_threads(), ntask);
  if (workers <= 1) {
    for (int64_t t = 0; t < ntask; ++t) fn(a, t);
    return;
  }
  if (g_task_pool) {
    struct Ctx { const Args<T>* a; TaskFn<T> fn; } ctx{&a, fn};
    auto call = [](const void* c, int64_t t) {
      const Ctx* x = static_cast<const Ctx*>(c);
      x->fn(*x->a, t);
    };
    if (serpent_tasks::TaskPool::get().run(call, &ctx, uint32_t(ntask), int(workers - 1))) return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < ntask; t = next.fetch_add(1)) fn(a, t);
  });
}

template <typename T>
void fill_common(Args<T>& a, const at::Tensor& u, const c10::optional<at::Tensor>& delta, const at::Tensor& A,
                 const at::Tensor& rows, const c10::optional<at::Tensor>& C, const c10::optional<at::Tensor>& D,
                 const c10::optional<at::Tensor>& z,
                 const c10::optional<at::Tensor>& bias, bool softplus, const c10::optional<at::Tensor>& perm,
                 const c10::optional<at::Tensor>& Wdt) {
  std::memset(&a, 0, sizeof(a));
  constexpr int W = VecT<T>::lanes;
  a.u = u.data_ptr<T>(); a.delta = opt_data<T>(delta); a.A = A.data_ptr<T>();
  a.D = opt_data<T>(D); a.z = opt_data<T>(z); a.bias = opt_data<T>(bias);
  a.perm = opt_ptr_check(perm) ? perm->data_ptr<int32_t>() : nullptr;
  a.cross = opt_ptr_check(Wdt);
  a.Wdt = opt_data<T>(Wdt);
  a.R = a.cross ? Wdt->size(1) : 0;
  a.batch = rows.size(0); a.dim = A.size(0); a.N = A.size(1); a.G = rows.size(1);
  a.rows_bs = rows.stride(0); a.rows_gs = rows.stride(1);
  a.L = seq_len(rows, a.cross);
  if (a.cross) {  // [dt inputs, B, C] in each row
    a.rows_ps = rows.stride(2); a.rows_fs = 1;
    a.rows_dt = rows.data_ptr<T>(); a.rows_B = a.rows_dt + a.R; a.rows_C = a.rows_B + a.N;
  } else {  // mamba's (batch, G, N, L) B and C
    a.rows_ps = 1; a.rows_fs = rows.stride(2);
    a.rows_dt = nullptr; a.rows_B = rows.data_ptr<T>(); a.rows_C = C->data_ptr<T>();
  }
  a.Np = (a.N + W - 1) / W * W;
  a.cpg = a.dim / a.G;
  a.nchunks = (a.L + kChunk - 1) / kChunk;
  a.softplus = softplus;
  a.stream = stream_outputs(a);
  // plain mode: a task per (batch, group) first (each owns its group's dB / dC), channel blocks
  // only when there are too few of those for the threads
  a.GT = a.cross ? 1 : a.G;
  a.P = channel_blocks(a.batch * a.GT, a.cpg, call_work(a));
}

// y: (batch, dim, L), or (batch, L, dim / G) in cross mode.
std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const c10::optional<at::Tensor>& delta, const at::Tensor& A,
                                 const at::Tensor& rows, const c10::optional<at::Tensor>& C,
                                 const c10::optional<at::Tensor>& D,
                                 const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                 bool softplus, bool want_ckpt, const c10::optional<at::Tensor>& perm,
                                 const c10::optional<at::Tensor>& Wdt) {
  check_inputs(u, delta, A, rows, C, D, z, bias, perm, Wdt);
  const int64_t batch = rows.size(0), dim = A.size(0), N = A.size(1);
  const int64_t L = seq_len(rows, opt_ptr_check(Wdt));
  at::Tensor y = L == 0 ? at::zeros_like(u) : serpent_pool::empty(u.sizes(), u.options());
  at::Tensor last = L == 0 ? at::zeros({batch, dim, N}, u.options()) : at::empty({batch, dim, N}, u.options());
  at::Tensor ckpt;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_fwd", [&] {
    Args<scalar_t> a;
    fill_common<scalar_t>(a, u, delta, A, rows, C, D, z, bias, softplus, perm, Wdt);
    TORCH_CHECK(a.Np / VecT<scalar_t>::lanes <= kMaxNB, "selective_scan cpu backend: d_state too large (max ",
                kMaxNB * VecT<scalar_t>::lanes, ")");
    ckpt = want_ckpt ? serpent_pool::empty({batch, dim, a.nchunks, a.Np}, u.options()) : at::empty({0}, u.options());
    if (L == 0) return;
    a.y = y.data_ptr<scalar_t>(); a.last = last.data_ptr<scalar_t>();
    a.ckpt = want_ckpt ? ckpt.data_ptr<scalar_t>() : nullptr;
    TaskFn<scalar_t> fn = g_lane_fwd ? pick_lanes_fwd(a, best_isa(g_isa)) : nullptr;
    if (fn) {  // its blocks: whole lane groups
      a.blk_align = kLaneWidth;
      a.P = lane_blocks(a.batch * group_tasks(a), a.cpg / kLaneWidth, call_work(a));
    }
    g_last_fwd_lanes = fn != nullptr;
    run_tasks(a, fn ? fn : pick<scalar_t>(true, a.Np));
  });
  return {y, last, ckpt};
}

// Gradients in the inputs' layouts: du like u; plain: dB, dC like B, C and ddelta; cross: drows like
// the rows (in dB's place, dC undefined) and dWdt.
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const c10::optional<at::Tensor>& delta, const at::Tensor& A,
                                 const at::Tensor& rows, const c10::optional<at::Tensor>& C,
                                 const c10::optional<at::Tensor>& D,
                                 const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                 bool softplus, const at::Tensor& ckpt, const at::Tensor& dout,
                                 const c10::optional<at::Tensor>& dlast, const c10::optional<at::Tensor>& perm,
                                 const c10::optional<at::Tensor>& Wdt) {
  check_inputs(u, delta, A, rows, C, D, z, bias, perm, Wdt);
  const bool cross = opt_ptr_check(Wdt);
  const int64_t batch = rows.size(0), dim = A.size(0), L = seq_len(rows, cross), N = A.size(1);
  const int64_t G = rows.size(1);
  const int64_t R = cross ? Wdt->size(1) : 0;
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "selective_scan backward: dout must be contiguous, shaped like y");
  // the kernel writes every element of these (except when L == 0): no zero-fill needed
  auto alloc = [&](at::IntArrayRef size) {
    return L == 0 ? at::zeros(size, u.options()) : serpent_pool::empty(size, u.options());
  };
  at::Tensor du = alloc(u.sizes());
  at::Tensor ddelta = cross ? at::Tensor() : alloc(u.sizes());
  at::Tensor dz = opt_ptr_check(z) ? alloc(u.sizes()) : at::Tensor();
  at::Tensor dA_part = alloc({batch, dim, N});
  at::Tensor dD_part = alloc({batch, dim}), db_part = alloc({batch, dim});
  at::Tensor dW_part = cross ? alloc({batch, dim, R}) : at::Tensor();
  at::Tensor dB, dC;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_bwd", [&] {
    Args<scalar_t> a;
    fill_common<scalar_t>(a, u, delta, A, rows, C, D, z, bias, softplus, perm, Wdt);
    // partial sums laid out like the rows (their strides are the kernel's): P copies
    at::Tensor part, partC;
    if (cross) {
      part = rows.is_contiguous() ? alloc({a.P, batch, G, L, R + 2 * N})
                                  : alloc({a.P, batch, L, G, R + 2 * N}).transpose(2, 3);
      a.ddt_part = part.data_ptr<scalar_t>(); a.dB_part = a.ddt_part + R; a.dC_part = a.dB_part + N;
    } else {
      part = alloc({a.P, batch, G, N, L});
      partC = alloc({a.P, batch, G, N, L});
      a.ddt_part = nullptr; a.dB_part = part.data_ptr<scalar_t>(); a.dC_part = partC.data_ptr<scalar_t>();
    }
    a.part_size = part.stride(0);
    if (L > 0) {
      TORCH_CHECK(ckpt.sizes() == at::IntArrayRef({batch, dim, a.nchunks, a.Np}) && ckpt.is_contiguous(),
                  "selective_scan backward: checkpoints do not match the inputs");
      if (opt_ptr_check(dlast))
        TORCH_CHECK(dlast->sizes() == at::IntArrayRef({batch, dim, N}) && dlast->is_contiguous(),
                    "selective_scan backward: bad last-state gradient");
      a.ckpt = const_cast<scalar_t*>(ckpt.data_ptr<scalar_t>());
      a.dout = dout.data_ptr<scalar_t>();
      a.dlast = opt_data<scalar_t>(dlast);
      a.du = du.data_ptr<scalar_t>();
      a.ddelta = cross ? nullptr : ddelta.data_ptr<scalar_t>();
      a.dz = dz.defined() ? dz.data_ptr<scalar_t>() : nullptr;
      a.dA_part = dA_part.data_ptr<scalar_t>(); a.dD_part = dD_part.data_ptr<scalar_t>();
      a.dbias_part = db_part.data_ptr<scalar_t>();
      a.dWdt_part = cross ? dW_part.data_ptr<scalar_t>() : nullptr;
      run_tasks(a, pick<scalar_t>(false, a.Np));
    }
    dB = a.P == 1 ? part.squeeze(0) : part.sum(0);
    if (!cross) dC = a.P == 1 ? partC.squeeze(0) : partC.sum(0);
  });
  auto batch_sum = [&](const at::Tensor& t) { return batch == 1 ? t.squeeze(0) : t.sum(0); };
  at::Tensor dA = batch_sum(dA_part);
  at::Tensor dD = opt_ptr_check(D) ? batch_sum(dD_part) : at::Tensor();
  at::Tensor dbias = opt_ptr_check(bias) ? batch_sum(db_part) : at::Tensor();
  at::Tensor dWdt = cross ? batch_sum(dW_part) : at::Tensor();
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dWdt};
}

// The path float32 calls with d_state 16 take (what a Serpent model runs); with AVX-512, float
// states that do not fill 16-lane vectors and float64 run the AVX2 kernels.
std::string isa_name() {
  switch (best_isa(g_isa)) {
    case Isa::avx512:
      return std::string("avx512 (float, d_state a multiple of 16; else avx2+fma)") +
             (g_lane_fwd ? ", channels-in-lanes forward for d_state 16" : "");
    case Isa::avx2: return "avx2+fma";
    default: return "generic (sse2)";
  }
}

void set_isa(const std::string& name) {
  Isa isa = Isa::avx512;  // "auto": the widest, capped at what the CPU has by best_isa
  TORCH_CHECK(name == "auto" || parse_isa(name, &isa),
              "selective_scan cpu backend: isa must be 'auto', 'avx512', 'avx2' or 'generic', got '", name, "'");
  TORCH_CHECK(name == "auto" || cpu_has(isa), "selective_scan cpu backend: this CPU lacks ",
              isa == Isa::avx2 ? "AVX2/FMA" : "AVX-512 (F, VL, DQ)");
  g_isa = isa;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &scan_fwd, "selective scan forward: (y, last_state, checkpoints)");
  m.def("bwd", &scan_bwd, "selective scan backward: (du, ddelta, dA, dB or drows, dC, dD, dz, ddelta_bias, dWdt)");
  m.def("isa", &isa_name, "SIMD code path in use");
  m.def("set_isa", &set_isa, "force the SIMD path: 'auto', 'avx512', 'avx2' or 'generic'");
  m.def("has_isa", [](const std::string& name) {
    Isa isa;
    return parse_isa(name, &isa) && cpu_has(isa);
  }, "whether this CPU can run that SIMD path");
  m.def("set_lane_forward", [](bool on) { g_lane_fwd = on; },
        "let float32 AVX-512 forwards with d_state 16 take the channels-in-lanes kernel (default on)");
  m.def("last_forward_layout", []() { return std::string(g_last_fwd_lanes ? "lanes" : "states"); },
        "the kernel layout the last forward call ran: 'lanes' or 'states'");
  m.def("set_output_pool_mb", [](int64_t mb) {
    TORCH_CHECK(mb >= 0, "selective_scan cpu backend: the output pool's cap must be >= 0 MB, got ", mb);
    serpent_pool::OutputPool::get().set_cap_bytes(size_t(mb) << 20);
  }, "keep up to this many MB of freed large outputs for reuse (0: no pool; default output_pool_cap_mb() at load)");
  m.def("output_pool_cap_mb", []() { return int64_t(serpent_pool::OutputPool::get().cap_bytes() >> 20); },
        "the output pool's cap in MB");
  m.def("output_pool_stats", []() { return serpent_pool::OutputPool::get().stats(); },
        "the output pool's [hits, misses, free blocks, free bytes]");
  m.def("set_threads", [](const std::string& mode) {
    TORCH_CHECK(mode == "pool" || mode == "openmp",
                "selective_scan cpu backend: threads must be 'pool' or 'openmp', got '", mode, "'");
    g_task_pool = mode == "pool";
    g_serial_work = g_task_pool ? kSerialWorkPool : kSerialWorkOpenMP;
  }, "run parallel calls on the scan's own thread pool ('pool') or OpenMP's ('openmp', the default); "
     "resets serial_work() to that mode's default");
  m.def("set_serial_work", [](int64_t n) {
    TORCH_CHECK(n >= 0, "selective_scan cpu backend: serial_work must be >= 0, got ", n);
    g_serial_work = n;
  }, "calls with fewer (batch, channel, step, padded state) elements run on the calling thread");
  m.def("serial_work", []() { return g_serial_work; },
        "calls with fewer (batch, channel, step, padded state) elements run on the calling thread");
  m.def("threads", []() { return std::string(g_task_pool ? "pool" : "openmp"); },
        "where parallel calls run: 'pool' or 'openmp'");
  m.def("set_pool_spin_us", [](int64_t us) {
    TORCH_CHECK(us >= 0 && us <= 100000, "selective_scan cpu backend: the pool's spin must be 0-100000 us, got ", us);
    serpent_tasks::TaskPool::get().set_spin_us(int(us));
  }, "how long a pool thread polls for the next call before it sleeps, in us");
  m.def("pool_spin_us", []() { return serpent_tasks::TaskPool::get().spin_us(); },
        "how long a pool thread polls for the next call before it sleeps, in us");
  m.def("chunk_size", []() { return kChunk; }, "time steps between state checkpoints");
  m.def("num_threads", []() { return at::get_num_threads(); }, "threads at::parallel_for uses");
}
