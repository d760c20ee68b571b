// Everything of the CPU selective scan that does not need torch: the SIMD types, the kernels'
// arguments (Args), the kernels compiled for three instruction sets (selective_scan_cpu_kernels.h,
// namespaces generic, avx2 and avx512), the per-task entry points fwd_/bwd_{generic,avx2,avx512} and
// pick_task, which chooses one by state size and instruction set.
// Included by selective_scan_cpu.cpp (the torch extension) and by bench/scan/kernel_harness.cpp
// (the kernels alone, built with a plain g++, to time and check changes to them).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "softplus_pieces.h"

namespace {

#define SS_INLINE inline __attribute__((always_inline))

constexpr int kChunk = 64;    // time steps per chunk: checkpoint interval and L1 buffer length
constexpr int kMaxNB = 64;    // max SIMD vectors per channel state (512 float / 256 double states)
constexpr int kLaneWidth = 16;  // the lane-layout forward: AVX-512 float lanes = its state count

typedef float vf __attribute__((vector_size(32)));
typedef double vd __attribute__((vector_size(32)));
typedef int32_t vi32 __attribute__((vector_size(32)));
typedef uint32_t vu32 __attribute__((vector_size(32)));
typedef int64_t vi64 __attribute__((vector_size(32)));
// 8 float lanes whatever the kernels' width (the 8 x 8 transposes of B/C blocks use them)
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi32x8 __attribute__((vector_size(32)));

template <typename T> struct VecT;
template <> struct VecT<float> { typedef vf type; static constexpr int lanes = 8; };
template <> struct VecT<double> { typedef vd type; static constexpr int lanes = 4; };

// The kernels' scratch buffers, aligned to a cache line: std::vector's memory is 16-byte aligned, so
// every 64-byte vector access to it straddled two cache lines (and half of the 32-byte ones); on
// AVX-512 the aligned buffers made the forward ~10% and the backward ~16% faster in the harness.
constexpr size_t kBufAlign = 64;
template <typename T> struct CacheLineAlloc {
  typedef T value_type;
  CacheLineAlloc() = default;
  template <typename U> CacheLineAlloc(const CacheLineAlloc<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kBufAlign))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(kBufAlign)); }
  template <typename U> bool operator==(const CacheLineAlloc<U>&) const { return true; }
  template <typename U> bool operator!=(const CacheLineAlloc<U>&) const { return false; }
};
template <typename T> using Buf = std::vector<T, CacheLineAlloc<T>>;

template <typename V, typename T> SS_INLINE V vload(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V, typename T> SS_INLINE void vstore(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }

// The decay exp(delta * A) is computed in base 2 in float: A is pre-scaled by log2(e).
template <typename T> constexpr T kDecayScale = T(1);
template <> constexpr float kDecayScale<float> = 1.44269504088896341f;

template <typename T> struct Args {
  // inputs
  const T* u; const T* delta; const T* A;
  // the rows: per (batch, group, step) R dt inputs, N B and N C values at base + batch * rows_bs +
  // group * rows_gs + step * rows_ps + feature * rows_fs (cross: one tensor, rows_fs = 1; plain: B
  // and C tensors (batch, G, N, L), rows_ps = 1, rows_fs = L, R = 0, rows_dt null)
  const T* rows_dt; const T* rows_B; const T* rows_C;
  const T* D; const T* z; const T* bias;
  const int32_t* perm;  // (G, L): stored position of step t in group g; null = identity
  // forward outputs (may be null)
  T* y; T* last; T* ckpt;
  // backward inputs / outputs
  const T* dout; const T* dlast;
  T* du; T* ddelta; T* dz;
  T* dA_part;   // (batch, dim, N)
  T* dD_part;   // (batch, dim)
  T* dbias_part;  // (batch, dim)
  T* ddt_part; T* dB_part; T* dC_part;  // P copies of the rows' layout (their strides), part_size apart
  int64_t rows_bs, rows_gs, rows_ps, rows_fs, part_size;
  int64_t batch, dim, L, N, Np, G, cpg, P, nchunks;
  int64_t GT;  // tasks per batch element over the groups: G (one group each; plain mode) or 0 / 1 (all)
  // cross mode (SS2D): u / du / y / dout are channels-last (batch, L, cpg), u shared by the groups
  // and y summed over them; delta = Wdt (dim, R) times the rows' first R values (no delta tensor)
  bool cross;
  int64_t R;
  const T* Wdt;
  T* dWdt_part;  // (batch, dim, R)
  bool softplus;
  // write the (batch, dim, L) outputs (plain y, du, ddelta, dz) with streaming stores: set for
  // outputs too large to stay in cache for their consumer (kStreamBytes)
  bool stream;
  // channel blocks start at multiples of this (0 / 1: anywhere; the lane-layout forward: its width)
  int64_t blk_align;
};
constexpr int64_t kStreamBytes = int64_t(4) << 20;
// Whether the call's (batch, dim, L) outputs are that large (a.stream's value).
template <typename T> bool stream_outputs(const Args<T>& a) {
  return a.batch * a.dim * a.L * int64_t(sizeof(T)) >= kStreamBytes;
}

// Tasks per batch element over the groups (see the tasks section of the kernels) and in all.
template <typename T> SS_INLINE int64_t group_tasks(const Args<T>& a) { return a.GT > 1 ? a.GT : 1; }
template <typename T> SS_INLINE int64_t task_count(const Args<T>& a) { return a.batch * group_tasks(a) * a.P; }

namespace generic {
#define SS_AVX2 0
#define SS_AVX512 0
#include "selective_scan_cpu_kernels.h"
#undef SS_AVX512
#undef SS_AVX2
}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define SS_AVX2 1
#define SS_AVX512 0
#include "selective_scan_cpu_kernels.h"
#undef SS_AVX512
#undef SS_AVX2
}  // namespace avx2
#pragma GCC pop_options

// AVX-512: float vectors of 16 lanes (one vector holds Serpent's 16 states: half the instructions
// of the AVX2 kernels per step). These names shadow the global 8-lane ones inside the namespace;
// double keeps the 4-lane vectors (float64 is the exact-test path, not a speed path).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
namespace avx512 {
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi32 __attribute__((vector_size(64)));
typedef uint32_t vu32 __attribute__((vector_size(64)));
template <typename T> struct VecT;
template <> struct VecT<float> { typedef vf type; static constexpr int lanes = 16; };
template <> struct VecT<double> { typedef vd type; static constexpr int lanes = 4; };
#define SS_AVX2 1
#define SS_AVX512 1
#include "selective_scan_cpu_kernels.h"
#undef SS_AVX512
#undef SS_AVX2
}  // namespace avx512
#pragma GCC pop_options

// ---- ISA dispatch ---------------------------------------------------------------------------
enum class Isa { generic, avx2, avx512 };

template <typename T, int NB> __attribute__((target("avx2,fma"))) void fwd_avx2(const Args<T>& a, int64_t t) { avx2::fwd_task<T, NB>(a, t); }
template <typename T, int NB> __attribute__((target("avx2,fma"))) void bwd_avx2(const Args<T>& a, int64_t t) { avx2::bwd_task<T, NB>(a, t); }
template <int NB> __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void fwd_avx512(const Args<float>& a, int64_t t) { avx512::fwd_task<float, NB>(a, t); }
template <int NB> __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void bwd_avx512(const Args<float>& a, int64_t t) { avx512::bwd_task<float, NB>(a, t); }
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void fwd_lanes_avx512(const Args<float>& a, int64_t t) { avx512::fwd_lanes_task(a, t); }
template <typename T, int NB> void fwd_generic(const Args<T>& a, int64_t t) { generic::fwd_task<T, NB>(a, t); }
template <typename T, int NB> void bwd_generic(const Args<T>& a, int64_t t) { generic::bwd_task<T, NB>(a, t); }

template <typename T> using TaskFn = void (*)(const Args<T>&, int64_t);

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
// (libgcc's feature bits for AVX-512 include the OS's XSAVE support of the zmm state)
bool cpu_has_avx512() {
  static const bool ok = cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return ok;
}

bool cpu_has(Isa isa) { return isa == Isa::generic || (isa == Isa::avx2 ? cpu_has_avx2() : cpu_has_avx512()); }

// Names of the instruction sets, as the extension's set_isa / has_isa and the harness's --isa take them.
const char* isa_label(Isa isa) { return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "generic"; }
bool parse_isa(const std::string& name, Isa* isa) {
  for (Isa i : {Isa::generic, Isa::avx2, Isa::avx512})
    if (name == isa_label(i)) { *isa = i; return true; }
  return false;
}

// The best instruction set of this CPU, capped by `want` (tests and benchmarks force a lower one).
Isa best_isa(Isa want) {
  if (want == Isa::avx512 && cpu_has_avx512()) return Isa::avx512;
  if (want != Isa::generic && cpu_has_avx2()) return Isa::avx2;
  return Isa::generic;
}

// The instruction set a call with Np padded states (a multiple of VecT<T>::lanes = 8 float / 4
// double) runs on: AVX-512 only for float states that fill whole 16-lane vectors (Np % 16 == 0:
// 16 states, Serpent's default, or 32, ...), where it halves the work; otherwise AVX2.
template <typename T> Isa isa_for(Isa isa, int64_t Np) {
  if (isa == Isa::avx512 && !(std::is_same<T, float>::value && Np % 16 == 0)) return Isa::avx2;
  return isa;
}

// The task function for Np padded states and an instruction set returned by isa_for: 1-4 SIMD
// vectors compiled for that size, else the runtime-sized kernels.
template <typename T>
TaskFn<T> pick_task(bool fwd, int64_t Np, Isa isa) {
  isa = isa_for<T>(isa, Np);
  if constexpr (std::is_same<T, float>::value) {
    if (isa == Isa::avx512) {
#define SS_CASE(K) case K: return fwd ? fwd_avx512<K> : bwd_avx512<K>;
      switch (Np / 16) {
        SS_CASE(1) SS_CASE(2) SS_CASE(3) SS_CASE(4)
        default: return fwd ? fwd_avx512<0> : bwd_avx512<0>;
      }
#undef SS_CASE
    }
  }
  const bool avx = isa == Isa::avx2;
#define SS_CASE(K) \
  case K: return fwd ? (avx ? fwd_avx2<T, K> : fwd_generic<T, K>) : (avx ? bwd_avx2<T, K> : bwd_generic<T, K>);
  switch (Np / VecT<T>::lanes) {
    SS_CASE(1) SS_CASE(2) SS_CASE(3) SS_CASE(4)
    default: return fwd ? (avx ? fwd_avx2<T, 0> : fwd_generic<T, 0>) : (avx ? bwd_avx2<T, 0> : bwd_generic<T, 0>);
  }
#undef SS_CASE
}

// The lane-layout forward (selective_scan_cpu_lanes.h) for a call on instruction set isa (best_isa's
// answer), or null where it does not apply: float, AVX-512, 16 states, a multiple of 16 channels per
// group, the cross layout or the plain one in step order. A caller that takes it sets a.blk_align to
// kLaneWidth and a.P to lane_blocks' answer (its blocks are whole lane groups).
template <typename T> TaskFn<T> pick_lanes_fwd(const Args<T>& a, Isa isa) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::avx512 && (a.cross || !a.perm) && a.N == kLaneWidth && a.cpg % kLaneWidth == 0)
      return fwd_lanes_avx512;
  }
  return nullptr;
}

}  // namespace
