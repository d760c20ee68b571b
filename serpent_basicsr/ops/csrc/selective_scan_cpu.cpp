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
// SIMD: the hot loops use GCC vector extensions (32-byte vectors), so one template body compiles to
// AVX2+FMA code inside functions marked target("avx2,fma") and to SSE2 code in the default build;
// the choice is made at run time (no -march=native needed). float uses a polynomial exp
// (Cody-Waite reduction, rel. error ~1e-7) that vectorises; double calls std::exp per lane
// (float64 is the exact-test path, not a speed path).
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
template <typename V, typename T> SS_INLINE V vsplat(T x) { return V{} + x; }

SS_INLINE float hsum(vf v) {
  v += __builtin_shuffle(v, vi32{4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, vi32{2, 3, 0, 1, 6, 7, 4, 5});
  v += __builtin_shuffle(v, vi32{1, 0, 3, 2, 5, 4, 7, 6});
  return v[0];
}
SS_INLINE double hsum(vd v) {
  v += __builtin_shuffle(v, vi64{2, 3, 0, 1});
  v += __builtin_shuffle(v, vi64{1, 0, 3, 2});
  return v[0];
}

// exp for float lanes: x clamped to [-87, 88] (result stays a normal float), k = round(x / ln2)
// by the 1.5 * 2^23 trick, r = x - k ln2 in two parts, exp(r) by a degree-7 polynomial
// (cephes-style coefficients), times 2^k built in the exponent bits.
SS_INLINE vf vexp(vf x) {
  x = x > -87.0f ? x : vsplat<vf>(-87.0f);  // the a > b ? a : b form compiles to vmaxps / vminps
  x = x < 88.0f ? x : vsplat<vf>(88.0f);
  const vf magic = vsplat<vf>(12582912.0f);
  vf k = x * 1.44269504088896341f + magic;
  vf kf = k - magic;
  vf r = x - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  vf p = vsplat<vf>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  vu32 bits = ((vu32)k << 23) + (127u << 23);
  return p * (vf)bits;
}
SS_INLINE vd vexp(vd x) {
  vd r;
  for (int i = 0; i < 4; ++i) r[i] = std::exp(x[i]);
  return r;
}

// softplus with torch's threshold (x > 20 -> x). float: max(x, 0) + log1p(exp(-|x|)), with
// log1p(e) = 2 atanh(e / (2 + e)) by its series (e in (0, 1], so s <= 1/3): no cancellation for
// tiny e. double: log1p(exp(x)) exactly as torch computes it.
SS_INLINE vf vsoftplus(vf x) {
  vf ax = x < 0.0f ? -x : x;
  vf e = vexp(-ax);
  vf s = e / (e + 2.0f);
  vf s2 = s * s;
  vf q = vsplat<vf>(1.0f / 13.0f);
  q = q * s2 + 1.0f / 11.0f;
  q = q * s2 + 1.0f / 9.0f;
  q = q * s2 + 1.0f / 7.0f;
  q = q * s2 + 1.0f / 5.0f;
  q = q * s2 + 1.0f / 3.0f;
  q = q * s2 + 1.0f;
  vf sp = (x > 0.0f ? x : vsplat<vf>(0.0f)) + 2.0f * s * q;
  return x > 20.0f ? x : sp;
}
SS_INLINE vd vsoftplus(vd x) {
  vd r;
  for (int i = 0; i < 4; ++i) r[i] = x[i] > 20.0 ? x[i] : std::log1p(std::exp(x[i]));
  return r;
}
SS_INLINE vd vsigmoid(vd x) { return 1.0 / (1.0 + vexp(-x)); }
SS_INLINE vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

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

// Copies rows [t0, t0 + T) of a (N, L) matrix into a (kChunk, Np) buffer, zero-padded.
template <typename T>
SS_INLINE void load_chunk_T(const T* src, int64_t L, int64_t N, int64_t Np, int64_t t0, int nt, T* dst) {
  std::fill(dst, dst + kChunk * Np, T(0));
  for (int64_t n = 0; n < N; ++n) {
    const T* s = src + n * L + t0;
    for (int t = 0; t < nt; ++t) dst[t * Np + n] = s[t];
  }
}

// Per-chunk scalar prologue, vectorised over time: dt = softplus(delta + bias), bu = dt * u.
template <typename T>
SS_INLINE void chunk_prologue(const Args<T>& a, int64_t bd, int64_t d, int64_t t0, int nt,
                              T* dtb, T* ub, T* bub, T* xb) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  const T* dl = a.delta + bd * a.L + t0;
  const T* uu = a.u + bd * a.L + t0;
  const T bias = a.bias ? a.bias[d] : T(0);
  for (int t = 0; t < nt; ++t) { xb[t] = dl[t] + bias; ub[t] = uu[t]; }
  for (int t = nt; t < kChunk; ++t) { xb[t] = 0; ub[t] = 0; }
  for (int t = 0; t < kChunk; t += W) {
    V x = vload<V>(xb + t);
    V dt = a.softplus ? vsoftplus(x) : x;
    vstore(dtb + t, dt);
    vstore(bub + t, dt * vload<V>(ub + t));
  }
}

template <typename T, int NB>
SS_INLINE void fwd_task(const Args<T>& a, int64_t task) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  const int64_t nblk = a.P;
  const int64_t blk = task % nblk, bg = task / nblk, g = bg % a.G, b = bg / a.G;
  const int64_t per = (a.cpg + nblk - 1) / nblk;
  const int64_t c_lo = g * a.cpg + std::min(a.cpg, blk * per), c_hi = g * a.cpg + std::min(a.cpg, (blk + 1) * per);
  const int64_t nch = c_hi - c_lo;
  if (nch <= 0) return;
  const int nb = NB > 0 ? NB : int(a.Np / W);
  const int64_t Np = a.Np;

  std::vector<T> bufB(kChunk * Np), bufC(kChunk * Np), hs(nch * Np, T(0)), Ap(nch * Np, T(0));
  alignas(64) T dtb[kChunk], ub[kChunk], bub[kChunk], xb[kChunk], yb[kChunk];
  for (int64_t i = 0; i < nch; ++i)
    for (int64_t n = 0; n < a.N; ++n) Ap[i * Np + n] = a.A[(c_lo + i) * a.N + n];
  const T* Bsrc = a.B + (b * a.G + g) * a.N * a.L;
  const T* Csrc = a.C + (b * a.G + g) * a.N * a.L;

  for (int64_t c = 0; c < a.nchunks; ++c) {
    const int64_t t0 = c * kChunk;
    const int T_ = int(std::min<int64_t>(kChunk, a.L - t0));
    load_chunk_T(Bsrc, a.L, a.N, Np, t0, T_, bufB.data());
    load_chunk_T(Csrc, a.L, a.N, Np, t0, T_, bufC.data());
    for (int64_t i = 0; i < nch; ++i) {
      const int64_t d = c_lo + i, bd = b * a.dim + d;
      chunk_prologue(a, bd, d, t0, T_, dtb, ub, bub, xb);
      V h[NB > 0 ? NB : kMaxNB], Av[NB > 0 ? NB : kMaxNB];
      for (int j = 0; j < nb; ++j) {
        h[j] = vload<V>(&hs[i * Np + j * W]);
        Av[j] = vload<V>(&Ap[i * Np + j * W]);
      }
      if (a.ckpt) {
        T* ck = a.ckpt + (bd * a.nchunks + c) * Np;
        for (int j = 0; j < nb; ++j) vstore(ck + j * W, h[j]);
      }
      for (int t = 0; t < T_; ++t) {
        const V dtv = vsplat<V>(dtb[t]), buv = vsplat<V>(bub[t]);
        const T* Br = &bufB[t * Np];
        const T* Cr = &bufC[t * Np];
        V acc = V{};
        for (int j = 0; j < nb; ++j) {
          h[j] = vexp(dtv * Av[j]) * h[j] + buv * vload<V>(Br + j * W);
          acc += h[j] * vload<V>(Cr + j * W);
        }
        yb[t] = hsum(acc);
      }
      for (int j = 0; j < nb; ++j) vstore(&hs[i * Np + j * W], h[j]);
      // epilogue: D skip and z gating, vectorised over time
      for (int t = T_; t < kChunk; ++t) yb[t] = 0;
      const T Dd = a.D ? a.D[d] : T(0);
      T* yo = a.y + bd * a.L + t0;
      if (a.z) {
        const T* zz = a.z + bd * a.L + t0;
        alignas(64) T zb[kChunk];
        for (int t = 0; t < T_; ++t) zb[t] = zz[t];
        for (int t = T_; t < kChunk; ++t) zb[t] = 0;
        for (int t = 0; t < kChunk; t += W) {
          V zv = vload<V>(zb + t);
          V yv = vload<V>(yb + t) + Dd * vload<V>(ub + t);
          vstore(yb + t, yv * zv * vsigmoid(zv));
        }
      } else if (a.D) {
        for (int t = 0; t < kChunk; t += W) vstore(yb + t, vload<V>(yb + t) + Dd * vload<V>(ub + t));
      }
      std::memcpy(yo, yb, sizeof(T) * T_);
    }
  }
  if (a.last)
    for (int64_t i = 0; i < nch; ++i)
      std::memcpy(a.last + (b * a.dim + c_lo + i) * a.N, &hs[i * Np], sizeof(T) * a.N);
}

template <typename T, int NB>
SS_INLINE void bwd_task(const Args<T>& a, int64_t task) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  constexpr int NBc = NB > 0 ? NB : kMaxNB;
  const int64_t nblk = a.P;
  const int64_t blk = task % nblk, bg = task / nblk, g = bg % a.G, b = bg / a.G;
  const int64_t per = (a.cpg + nblk - 1) / nblk;
  const int64_t c_lo = g * a.cpg + std::min(a.cpg, blk * per), c_hi = g * a.cpg + std::min(a.cpg, (blk + 1) * per);
  const int64_t nch = c_hi - c_lo;
  const int nb = NB > 0 ? NB : int(a.Np / W);
  const int64_t Np = a.Np, N = a.N, L = a.L;
  T* dBo = a.dB_part + ((blk * a.batch + b) * a.G + g) * N * L;
  T* dCo = a.dC_part + ((blk * a.batch + b) * a.G + g) * N * L;
  if (nch <= 0) {  // an empty block still owns its slice of the partial sums
    std::fill(dBo, dBo + N * L, T(0));
    std::fill(dCo, dCo + N * L, T(0));
    return;
  }

  std::vector<T> bufB(kChunk * Np), bufC(kChunk * Np), bufdB(kChunk * Np), bufdC(kChunk * Np);
  std::vector<T> Hbuf((kChunk + 1) * Np), Abuf(kChunk * Np);
  std::vector<T> rs(nch * Np, T(0)), dAs(nch * Np, T(0)), Ap(nch * Np, T(0));
  std::vector<T> dDs(nch, T(0)), dbs(nch, T(0));
  alignas(64) T dtb[kChunk], ub[kChunk], bub[kChunk], xb[kChunk], y0b[kChunk], dyb[kChunk],
      dub[kChunk], ddtb[kChunk], zb[kChunk];
  for (int64_t i = 0; i < nch; ++i) {
    const int64_t d = c_lo + i;
    for (int64_t n = 0; n < N; ++n) {
      Ap[i * Np + n] = a.A[d * N + n];
      if (a.dlast) rs[i * Np + n] = a.dlast[(b * a.dim + d) * N + n];
    }
  }
  const T* Bsrc = a.B + (b * a.G + g) * N * L;
  const T* Csrc = a.C + (b * a.G + g) * N * L;

  for (int64_t c = a.nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk;
    const int T_ = int(std::min<int64_t>(kChunk, L - t0));
    load_chunk_T(Bsrc, L, N, Np, t0, T_, bufB.data());
    load_chunk_T(Csrc, L, N, Np, t0, T_, bufC.data());
    std::fill(bufdB.begin(), bufdB.end(), T(0));
    std::fill(bufdC.begin(), bufdC.end(), T(0));
    for (int64_t i = 0; i < nch; ++i) {
      const int64_t d = c_lo + i, bd = b * a.dim + d;
      chunk_prologue(a, bd, d, t0, T_, dtb, ub, bub, xb);
      V Av[NBc], h[NBc];
      const T* ck = a.ckpt + (bd * a.nchunks + c) * Np;
      for (int j = 0; j < nb; ++j) {
        Av[j] = vload<V>(&Ap[i * Np + j * W]);
        h[j] = vload<V>(ck + j * W);
        vstore(&Hbuf[j * W], h[j]);
      }
      // recompute the chunk's states (bit-identical to the forward) and decays
      for (int t = 0; t < T_; ++t) {
        const V dtv = vsplat<V>(dtb[t]), buv = vsplat<V>(bub[t]);
        const T* Br = &bufB[t * Np];
        const T* Cr = &bufC[t * Np];
        V acc = V{};
        for (int j = 0; j < nb; ++j) {
          const V av = vexp(dtv * Av[j]);
          h[j] = av * h[j] + buv * vload<V>(Br + j * W);
          vstore(&Abuf[t * Np + j * W], av);
          vstore(&Hbuf[(t + 1) * Np + j * W], h[j]);
          if (a.z) acc += h[j] * vload<V>(Cr + j * W);
        }
        if (a.z) y0b[t] = hsum(acc);
      }
      // gradient reaching the scan output (before D skip and gating)
      const T* dout = a.dout + bd * L + t0;
      const T Dd = a.D ? a.D[d] : T(0);
      for (int t = 0; t < T_; ++t) dyb[t] = dout[t];
      for (int t = T_; t < kChunk; ++t) { dyb[t] = 0; y0b[t] = 0; zb[t] = 0; }
      if (a.z) {
        const T* zz = a.z + bd * L + t0;
        for (int t = 0; t < T_; ++t) zb[t] = zz[t];
        T* dzo = a.dz + bd * L + t0;
        alignas(64) T dzb[kChunk];
        for (int t = 0; t < kChunk; t += W) {
          const V zv = vload<V>(zb + t), sg = vsigmoid(zv), dov = vload<V>(dyb + t);
          const V yD = vload<V>(y0b + t) + Dd * vload<V>(ub + t);
          vstore(dzb + t, dov * yD * sg * (T(1) + zv * (T(1) - sg)));
          vstore(dyb + t, dov * zv * sg);
        }
        std::memcpy(dzo, dzb, sizeof(T) * T_);
      }
      // adjoint recursion backwards in time
      V r[NBc], dA[NBc];
      for (int j = 0; j < nb; ++j) {
        r[j] = vload<V>(&rs[i * Np + j * W]);
        dA[j] = vload<V>(&dAs[i * Np + j * W]);
      }
      for (int t = T_ - 1; t >= 0; --t) {
        const V dyv = vsplat<V>(dyb[t]), buv = vsplat<V>(bub[t]), dtv = vsplat<V>(dtb[t]);
        const T* Br = &bufB[t * Np];
        const T* Cr = &bufC[t * Np];
        T* dBr = &bufdB[t * Np];
        T* dCr = &bufdC[t * Np];
        const T* Hn = &Hbuf[(t + 1) * Np];
        const T* Hp = &Hbuf[t * Np];
        const T* Ar = &Abuf[t * Np];
        V s1 = V{}, s2 = V{};
        for (int j = 0; j < nb; ++j) {
          const V Bv = vload<V>(Br + j * W);
          const V gv = r[j] + dyv * vload<V>(Cr + j * W);
          vstore(dCr + j * W, vload<V>(dCr + j * W) + dyv * vload<V>(Hn + j * W));
          vstore(dBr + j * W, vload<V>(dBr + j * W) + gv * buv);
          s1 += gv * Bv;
          r[j] = vload<V>(Ar + j * W) * gv;          // a_t * g_t: carried to t - 1
          const V w = r[j] * vload<V>(Hp + j * W);   // g_t * a_t * h_{t-1}
          s2 += w * Av[j];
          dA[j] += w * dtv;
        }
        const T S1 = hsum(s1), S2 = hsum(s2);
        dub[t] = dtb[t] * S1 + Dd * dyb[t];
        ddtb[t] = S2 + ub[t] * S1;
      }
      for (int j = 0; j < nb; ++j) {
        vstore(&rs[i * Np + j * W], r[j]);
        vstore(&dAs[i * Np + j * W], dA[j]);
      }
      // delta gradient through softplus; dD and d(bias) sums
      for (int t = T_; t < kChunk; ++t) { dub[t] = 0; ddtb[t] = 0; }
      T dD = 0, db = 0;
      for (int t = 0; t < T_; ++t) dD += dyb[t] * ub[t];
      if (a.softplus) {
        for (int t = 0; t < kChunk; t += W) {
          const V x = vload<V>(xb + t);
          const V s = vsigmoid(x);
          vstore(ddtb + t, vload<V>(ddtb + t) * (x > T(20) ? vsplat<V>(T(1)) : s));
        }
      }
      for (int t = 0; t < T_; ++t) db += ddtb[t];
      dDs[i] += dD;
      dbs[i] += db;
      std::memcpy(a.du + bd * L + t0, dub, sizeof(T) * T_);
      std::memcpy(a.ddelta + bd * L + t0, ddtb, sizeof(T) * T_);
    }
    // this task's share of dB/dC for the chunk, back to (N, L) layout
    for (int64_t n = 0; n < N; ++n)
      for (int t = 0; t < T_; ++t) {
        dBo[n * L + t0 + t] = bufdB[t * Np + n];
        dCo[n * L + t0 + t] = bufdC[t * Np + n];
      }
  }
  for (int64_t i = 0; i < nch; ++i) {
    const int64_t bd = b * a.dim + c_lo + i;
    std::memcpy(a.dA_part + bd * N, &dAs[i * Np], sizeof(T) * N);
    a.dD_part[bd] = dDs[i];
    a.dbias_part[bd] = dbs[i];
  }
}

// ---- ISA dispatch ---------------------------------------------------------------------------
template <typename T, int NB> __attribute__((target("avx2,fma"))) void fwd_avx2(const Args<T>& a, int64_t t) { fwd_task<T, NB>(a, t); }
template <typename T, int NB> __attribute__((target("avx2,fma"))) void bwd_avx2(const Args<T>& a, int64_t t) { bwd_task<T, NB>(a, t); }
template <typename T, int NB> void fwd_generic(const Args<T>& a, int64_t t) { fwd_task<T, NB>(a, t); }
template <typename T, int NB> void bwd_generic(const Args<T>& a, int64_t t) { bwd_task<T, NB>(a, t); }

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
