// Selective scan (S6) forward and backward on the CPU.
//
// Layout: u, delta, z, y: (batch, dim, L); A: (dim, N); B, C: (batch, G, N, L); D, bias: (dim,).
// Channel d reads group d / (dim / G).
//
// Work is split into tasks (batch, group, block of the group's channels), run with
// at::parallel_for (OpenMP). Inside a task, time is walked in chunks of kChunk steps and, for each
// chunk, every channel of the block: the chunk's B/C rows are transposed once into a small
// (kChunk, Np) buffer (state contiguous, zero-padded to Np, a multiple of the SIMD width) that stays
// in L1 across the block's channels. The state of one channel lives in registers as NB SIMD vectors.
//
// The forward optionally stores the state at the start of every chunk ("checkpoints", a kChunk-th
// of the (batch, dim, L, N) states). The backward walks the chunks in reverse: it recomputes the
// chunk's states from its checkpoint into an L1 buffer, then runs the adjoint recursion backwards
// in time. Softplus, delta_bias, the D skip, z gating, dD / d(delta_bias) sums and the B/C layout
// change are fused in. dB/dC are sums over the group's channels: each task owns a private
// (kChunk, Np) accumulator per chunk, written to its own slice of a (P, batch, G, N, L) buffer
// (P = channel blocks per group), summed over P at the end when P > 1.
//
// Per channel and chunk the state recursion runs in passes (selective_scan_cpu_kernels.h):
// the decays exp(dt A) of all steps first (independent, so the core overlaps them), then the
// recursion itself with one FMA per state vector on its critical path, then the sums over the state
// for W steps at once (a transpose-add instead of a horizontal sum per step). The next channel's
// u/delta/z/y slices are prefetched (L floats apart: the hardware prefetcher misses them).
//
// SIMD: the kernels use GCC vector extensions (32-byte vectors) and live in
// selective_scan_cpu_kernels.h, compiled twice: SSE2 (namespace generic) and AVX2+FMA (namespace
// avx2, `#pragma GCC target`); the choice is made at run time (no -march=native needed). float uses
// polynomial exps that vectorise (the decay in base 2 with A pre-scaled by log2(e), rel. error
// ~2e-7); double calls std::exp per lane (float64 is the exact-test path, not a speed path).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

#define SS_INLINE inline __attribute__((always_inline))

constexpr int kChunk = 64;    // time steps per chunk: checkpoint interval and L1 buffer length
constexpr int kMaxNB = 64;    // max SIMD vectors per channel state (512 float / 256 double states)

typedef float vf __attribute__((vector_size(32)));
typedef double vd __attribute__((vector_size(32)));
typedef int32_t vi32 __attribute__((vector_size(32)));
typedef uint32_t vu32 __attribute__((vector_size(32)));
typedef int64_t vi64 __attribute__((vector_size(32)));

template <typename T> struct VecT;
template <> struct VecT<float> { typedef vf type; static constexpr int lanes = 8; };
template <> struct VecT<double> { typedef vd type; static constexpr int lanes = 4; };

template <typename V, typename T> SS_INLINE V vload(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V, typename T> SS_INLINE void vstore(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
template <typename V, typename T> SS_INLINE V vsplat(T x) {  // (`V{} + x` would add 0.0 first)
  V v;
  for (unsigned i = 0; i < sizeof(V) / sizeof(T); ++i) v[i] = x;
  return v;
}

// The decay exp(delta * A) is computed in base 2 in float: A is pre-scaled by log2(e).
template <typename T> constexpr T kDecayScale = T(1);
template <> constexpr float kDecayScale<float> = 1.44269504088896341f;

template <typename T> struct Args {
  // inputs
  const T* u; const T* delta; const T* A; const T* B; const T* C;
  const T* D; const T* z; const T* bias;
  // forward outputs (may be null)
  T* y; T* last; T* ckpt;
  // backward inputs / outputs
  const T* dout; const T* dlast;
  T* du; T* ddelta; T* dz;
  T* dA_part;   // (batch, dim, N)
  T* dD_part;   // (batch, dim)
  T* dbias_part;  // (batch, dim)
  T* dB_part; T* dC_part;  // (P, batch, G, N, L)
  int64_t batch, dim, L, N, Np, G, cpg, P, nchunks;
  bool softplus;
};

namespace generic {
#define SS_AVX2 0
#include "selective_scan_cpu_kernels.h"
#undef SS_AVX2
}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define SS_AVX2 1
#include "selective_scan_cpu_kernels.h"
#undef SS_AVX2
}  // namespace avx2
#pragma GCC pop_options

// ---- ISA dispatch ---------------------------------------------------------------------------
template <typename T, int NB> __attribute__((target("avx2,fma"))) void fwd_avx2(const Args<T>& a, int64_t t) { avx2::fwd_task<T, NB>(a, t); }
template <typename T, int NB> __attribute__((target("avx2,fma"))) void bwd_avx2(const Args<T>& a, int64_t t) { avx2::bwd_task<T, NB>(a, t); }
template <typename T, int NB> void fwd_generic(const Args<T>& a, int64_t t) { generic::fwd_task<T, NB>(a, t); }
template <typename T, int NB> void bwd_generic(const Args<T>& a, int64_t t) { generic::bwd_task<T, NB>(a, t); }

template <typename T> using TaskFn = void (*)(const Args<T>&, int64_t);

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
std::string g_isa = "auto";  // "auto", "avx2" or "generic" (tests force the portable path)

bool use_avx2() {
  if (g_isa == "generic") return false;
  return cpu_has_avx2();
}

template <typename T>
TaskFn<T> pick(bool fwd, int nb) {
  const bool v = use_avx2();
#define SS_CASE(K) \
  case K: return fwd ? (v ? fwd_avx2<T, K> : fwd_generic<T, K>) : (v ? bwd_avx2<T, K> : bwd_generic<T, K>);
  switch (nb) {
    SS_CASE(1) SS_CASE(2) SS_CASE(3) SS_CASE(4)
    default: return fwd ? (v ? fwd_avx2<T, 0> : fwd_generic<T, 0>) : (v ? bwd_avx2<T, 0> : bwd_generic<T, 0>);
  }
#undef SS_CASE
}

// ---- host side ------------------------------------------------------------------------------
bool opt_ptr_check(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                  const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(u.device().is_cpu(), "selective_scan cpu backend: tensors must be on the CPU");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "selective_scan cpu backend: float32 or float64 expected, got ", u.scalar_type());
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan: u and delta must be (batch, dim, L)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), "selective_scan: A must be (dim, N)");
  TORCH_CHECK(B.dim() == 4 && B.size(0) == u.size(0) && B.size(2) == A.size(1) && B.size(3) == u.size(2),
              "selective_scan: B must be (batch, groups, N, L)");
  TORCH_CHECK(C.sizes() == B.sizes(), "selective_scan: C must have B's shape");
  TORCH_CHECK(u.size(1) % B.size(1) == 0, "selective_scan: dim must be divisible by groups");
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == u.scalar_type(),
                "selective_scan cpu backend: inputs must be contiguous and of one dtype");
  }
  for (const c10::optional<at::Tensor>* t : {&D, &bias}) {
    if (opt_ptr_check(*t)) {
      TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == u.size(1) && (*t)->is_contiguous() &&
                      (*t)->scalar_type() == u.scalar_type(), "selective_scan: D and delta_bias must be (dim,)");
    }
  }
  if (opt_ptr_check(z))
    TORCH_CHECK(z->sizes() == u.sizes() && z->is_contiguous() && z->scalar_type() == u.scalar_type(),
                "selective_scan: z must be (batch, dim, L) like u");
}

template <typename T> const T* opt_data(const c10::optional<at::Tensor>& t) {
  return opt_ptr_check(t) ? t->data_ptr<T>() : nullptr;
}

// Below this many (channel, step, state) elements (a few ms on one core) a call runs on the calling
// thread: on a busy machine, waking the OpenMP team and waiting at its barrier costs more.
constexpr int64_t kSerialWork = int64_t(1) << 22;

// Channel blocks per group: about 8 tasks per thread (balance), never more than the group's
// channels; one block when the call runs serially (then dB/dC need no partial sums).
int64_t blocks_per_group(int64_t batch, int64_t G, int64_t cpg, int64_t work) {
  if (work < kSerialWork || at::get_num_threads() <= 1) return 1;
  const int64_t want = 8 * int64_t(at::get_num_threads());
  const int64_t have = batch * G;
  return std::max<int64_t>(1, std::min<int64_t>(cpg, (want + have - 1) / have));
}

// Runs every (batch, group, block) task. Threads take tasks from a shared counter (dynamic
// scheduling: on a busy machine a preempted thread does not hold up a fixed share of the work).
template <typename T>
void run_tasks(const Args<T>& a, TaskFn<T> fn) {
  const int64_t ntask = a.batch * a.G * a.P;
  const int64_t work = a.batch * a.dim * a.L * a.Np;
  const int64_t workers = work < kSerialWork ? 1 : std::min<int64_t>(at::get_num_threads(), ntask);
  if (workers <= 1) {
    for (int64_t t = 0; t < ntask; ++t) fn(a, t);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < ntask; t = next.fetch_add(1)) fn(a, t);
  });
}

template <typename T>
void fill_common(Args<T>& a, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                 const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                 const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias, bool softplus) {
  std::memset(&a, 0, sizeof(a));
  constexpr int W = VecT<T>::lanes;
  a.u = u.data_ptr<T>(); a.delta = delta.data_ptr<T>(); a.A = A.data_ptr<T>();
  a.B = B.data_ptr<T>(); a.C = C.data_ptr<T>();
  a.D = opt_data<T>(D); a.z = opt_data<T>(z); a.bias = opt_data<T>(bias);
  a.batch = u.size(0); a.dim = u.size(1); a.L = u.size(2); a.N = A.size(1); a.G = B.size(1);
  a.Np = (a.N + W - 1) / W * W;
  a.cpg = a.dim / a.G;
  a.nchunks = (a.L + kChunk - 1) / kChunk;
  a.softplus = softplus;
  a.P = blocks_per_group(a.batch, a.G, a.cpg, a.batch * a.dim * a.L * a.Np);
}

std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                 const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                 bool softplus, bool want_ckpt) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1);
  at::Tensor y = at::empty_like(u);
  at::Tensor last = L == 0 ? at::zeros({batch, dim, N}, u.options()) : at::empty({batch, dim, N}, u.options());
  at::Tensor ckpt;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_fwd", [&] {
    Args<scalar_t> a;
    fill_common<scalar_t>(a, u, delta, A, B, C, D, z, bias, softplus);
    TORCH_CHECK(a.Np / VecT<scalar_t>::lanes <= kMaxNB, "selective_scan cpu backend: d_state too large (max ",
                kMaxNB * VecT<scalar_t>::lanes, ")");
    ckpt = want_ckpt ? at::empty({batch, dim, a.nchunks, a.Np}, u.options()) : at::empty({0}, u.options());
    if (L == 0) return;
    a.y = y.data_ptr<scalar_t>(); a.last = last.data_ptr<scalar_t>();
    a.ckpt = want_ckpt ? ckpt.data_ptr<scalar_t>() : nullptr;
    run_tasks(a, pick<scalar_t>(true, int(a.Np / VecT<scalar_t>::lanes)));
  });
  return {y, last, ckpt};
}

std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                 const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                 bool softplus, const at::Tensor& ckpt, const at::Tensor& dout,
                                 const c10::optional<at::Tensor>& dlast) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "selective_scan backward: dout must be contiguous like u");
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1), G = B.size(1);
  // the kernel writes every element of these (except when L == 0): no zero-fill needed
  auto alloc = [&](at::IntArrayRef size) { return L == 0 ? at::zeros(size, u.options()) : at::empty(size, u.options()); };
  at::Tensor du = alloc(u.sizes()), ddelta = alloc(u.sizes());
  at::Tensor dz = opt_ptr_check(z) ? alloc(u.sizes()) : at::Tensor();
  at::Tensor dA_part = alloc({batch, dim, N});
  at::Tensor dD_part = alloc({batch, dim}), db_part = alloc({batch, dim});
  at::Tensor dB, dC;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_bwd", [&] {
    Args<scalar_t> a;
    fill_common<scalar_t>(a, u, delta, A, B, C, D, z, bias, softplus);
    at::Tensor dBp = alloc({a.P, batch, G, N, L});
    at::Tensor dCp = alloc({a.P, batch, G, N, L});
    if (L > 0) {
      TORCH_CHECK(ckpt.sizes() == at::IntArrayRef({batch, dim, a.nchunks, a.Np}) && ckpt.is_contiguous(),
                  "selective_scan backward: checkpoints do not match the inputs");
      if (opt_ptr_check(dlast))
        TORCH_CHECK(dlast->sizes() == at::IntArrayRef({batch, dim, N}) && dlast->is_contiguous(),
                    "selective_scan backward: bad last-state gradient");
      a.ckpt = const_cast<scalar_t*>(ckpt.data_ptr<scalar_t>());
      a.dout = dout.data_ptr<scalar_t>();
      a.dlast = opt_data<scalar_t>(dlast);
      a.du = du.data_ptr<scalar_t>(); a.ddelta = ddelta.data_ptr<scalar_t>();
      a.dz = dz.defined() ? dz.data_ptr<scalar_t>() : nullptr;
      a.dA_part = dA_part.data_ptr<scalar_t>(); a.dD_part = dD_part.data_ptr<scalar_t>();
      a.dbias_part = db_part.data_ptr<scalar_t>();
      a.dB_part = dBp.data_ptr<scalar_t>(); a.dC_part = dCp.data_ptr<scalar_t>();
      run_tasks(a, pick<scalar_t>(false, int(a.Np / VecT<scalar_t>::lanes)));
    }
    dB = a.P == 1 ? dBp.squeeze(0) : dBp.sum(0);
    dC = a.P == 1 ? dCp.squeeze(0) : dCp.sum(0);
  });
  at::Tensor dA = batch == 1 ? dA_part.squeeze(0) : dA_part.sum(0);
  at::Tensor dD = opt_ptr_check(D) ? (batch == 1 ? dD_part.squeeze(0) : dD_part.sum(0)) : at::Tensor();
  at::Tensor dbias = opt_ptr_check(bias) ? (batch == 1 ? db_part.squeeze(0) : db_part.sum(0)) : at::Tensor();
  return {du, ddelta, dA, dB, dC, dD, dz, dbias};
}

std::string isa_name() { return use_avx2() ? "avx2+fma" : "generic (sse2)"; }

void set_isa(const std::string& isa) {
  TORCH_CHECK(isa == "auto" || isa == "generic" || isa == "avx2",
              "selective_scan cpu backend: isa must be 'auto', 'generic' or 'avx2', got '", isa, "'");
  TORCH_CHECK(isa != "avx2" || cpu_has_avx2(), "selective_scan cpu backend: this CPU lacks AVX2/FMA");
  g_isa = isa;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &scan_fwd, "selective scan forward: (y, last_state, checkpoints)");
  m.def("bwd", &scan_bwd, "selective scan backward: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)");
  m.def("isa", &isa_name, "SIMD code path in use");
  m.def("set_isa", &set_isa, "force the SIMD path: 'auto', 'avx2' or 'generic'");
  m.def("chunk_size", []() { return kChunk; }, "time steps between state checkpoints");
  m.def("num_threads", []() { return at::get_num_threads(); }, "threads at::parallel_for uses");
}
