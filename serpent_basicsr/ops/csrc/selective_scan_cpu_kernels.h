// Selective scan kernels, included three times by selective_scan_cpu_tasks.h: in namespace `generic`
// (portable SSE2 code), in namespace `avx2` under `#pragma GCC target("avx2,fma")` and in namespace
// `avx512` (float vectors of 16 lanes: vf, vi32, vu32 and VecT are that namespace's), so the same
// source compiles to each instruction set and the choice is made at run time. SS_AVX2 / SS_AVX512
// tell which. No include guard (on purpose) and no #include: everything it needs comes from the
// tasks header.

// Broadcast. Defined here, not in the .cpp, so that it is compiled for each instruction set: GCC
// lowers 32-byte vector code of a function compiled without AVX into 16-byte halves before
// inlining, and a splat from the .cpp became 8 vinsertps + vinsertf128 inside the AVX2 kernels
// (a third of the forward's recursion); here it is one vbroadcastss / vbroadcastsd.
template <typename V, typename T> SS_INLINE V vsplat(T x);
#if SS_AVX512
template <> SS_INLINE vf vsplat<vf, float>(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
#else
template <> SS_INLINE vf vsplat<vf, float>(float x) { return vf{x, x, x, x, x, x, x, x}; }
#endif
template <> SS_INLINE vd vsplat<vd, double>(double x) { return vd{x, x, x, x}; }

// max / min: GCC compiles the `a > b ? a : b` form to compare + blend; the AVX2 build uses vmaxps.
// Like vmaxps / vminps, a NaN in either operand returns the second: put x second to keep NaN.
#if SS_AVX512  // (the last two arguments: no mask, the current rounding mode)
SS_INLINE vf vmax(vf a, vf b) { return __builtin_ia32_maxps512_mask(a, b, a, -1, 4); }
SS_INLINE vf vmin(vf a, vf b) { return __builtin_ia32_minps512_mask(a, b, a, -1, 4); }
#elif SS_AVX2
SS_INLINE vf vmax(vf a, vf b) { return __builtin_ia32_maxps256(a, b); }
SS_INLINE vf vmin(vf a, vf b) { return __builtin_ia32_minps256(a, b); }
#else
SS_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
SS_INLINE vf vmin(vf a, vf b) { return a < b ? a : b; }
#endif

// The elementwise math below works on K vectors at once, one statement for all K before the next
// (`for (int i = 0; i < K; ++i)` loops the compiler unrolls): the K dependency chains are then
// interleaved in program order and the out-of-order core overlaps them, where one long chain per
// vector (an exp is ~40 cycles of latency) would leave the FP units idle.
#define SS_EACH for (int i = 0; i < K; ++i)

// exp off the hot loop (softplus, sigmoid): double per lane by std::exp; float after the decay's
// helpers below.
template <int K> SS_INLINE void vexp_k(vd* x) {
  SS_EACH for (int l = 0; l < 4; ++l) x[i][l] = std::exp(x[i][l]);
}

// The decay exp(delta * A) of the hot loop. float: A is pre-scaled by log2(e) (kDecayScale), so the
// argument y is already in base 2: 2^y = 2^round(y) * 2^f with f = y - round(y) in [-1/2, 1/2]
// exact, 2^f by a degree-5 minimax polynomial (rel. error 7e-8, ~2e-7 after float rounding).
// Adding 1.5 * 2^23 rounds y and leaves round(y) in the low mantissa bits (two's complement, mod
// 2^23), so adding them shifted into the exponent field multiplies by 2^round(y). That is exact
// while y is in [-126, 127]; kClamp clamps y there first (NaN stays NaN), otherwise the caller has
// checked the range. double: std::exp (the exact path).
// In two halves, so that the hot loop can start step t + 1's decay while it finishes step t's
// (decay_front: the range reduction and the first three Horner steps; decay_back: the rest).
// AVX-512: f = y - floor(y) in [0, 1) in one instruction (vreduceps), 2^f by a degree-5 minimax
// polynomial for that interval (rel. error 8e-8, 1.6e-7 after float rounding) and vscalefps
// multiplies by 2^floor(y) (it floors its second operand: k is y itself), exactly, and also right
// outside [-126, 127] (0 / inf): 8 vector operations with the multiply by A, where the rounding
// constant and the exponent-bits add take 10.
template <bool kClamp> SS_INLINE void decay_front(vf y, vf& k, vf& f, vf& p) {
  if (kClamp) y = vmin(vsplat<vf>(127.0f), vmax(vsplat<vf>(-126.0f), y));
#if SS_AVX512
  k = y;
  f = __builtin_ia32_reduceps512_mask(y, 9 /* floor, no precision exception */, vsplat<vf>(0.0f), -1);
  p = 1.8671005964279175e-3f * f + 9.017092175781727e-3f;
  p = p * f + 5.579986795783043e-2f;
  p = p * f + 2.4016445875167847e-1f;
#else
  const vf magic = vsplat<vf>(12582912.0f);  // 1.5 * 2^23
  k = y + magic;
  f = y - (k - magic);
  p = 1.327645848505199e-3f * f + 9.675540961325169e-3f;
  p = p * f + 5.550713464617729e-2f;
  p = p * f + 2.4022120237350464e-1f;
#endif
}
SS_INLINE vf decay_back(vf k, vf f, vf p) {
#if SS_AVX512
  p = p * f + 6.931512951850891e-1f;
  p = p * f + 1.0f;
  return __builtin_ia32_scalefps512_mask(p, k, p, -1, 4);
#else
  p = p * f + 6.931469440460205e-1f;
  p = p * f + 1.0000001192092896f;
  return (vf)((vu32)p + ((vu32)k << 23));
#endif
}
// exp for float lanes (softplus, sigmoid). AVX-512: x clamped to [-104, 88], 2^(x log2 e) as the
// decay computes 2^y (vreduceps, its polynomial, vscalefps) with y's rounding error put back:
// e = x log2 e - y exactly by an FMA (plus x times log2 e's own tail), 2^(y + e) = 2^y (1 + e ln 2)
// (|e| <= 2^-16 after the clamp); 13 vector operations instead of 17 (forward 3-9%, backward ~5%
// faster in the harness), max rel. error 2.0e-7 over [-87, 88] instead of 8.5e-8. Otherwise: x
// clamped to [-87, 88] (result stays a normal float), k = round(x / ln2) by the 1.5 * 2^23 trick,
// r = x - k ln2 in two parts, exp(r) by a degree-7 polynomial (cephes-style coefficients), times 2^k
// built in the exponent bits.
template <int K> SS_INLINE void vexp_k(vf* x) {
#if SS_AVX512
  vf y[K], e[K], f[K], p[K];
  SS_EACH x[i] = vmin(vsplat<vf>(88.0f), vmax(vsplat<vf>(-104.0f), x[i]));
  // (kDecayScale<float> is log2 e rounded to float; 1.925963e-8 is what the rounding dropped)
  SS_EACH y[i] = x[i] * kDecayScale<float>;
  SS_EACH e[i] = __builtin_ia32_vfmaddps512_mask(x[i], vsplat<vf>(kDecayScale<float>), -y[i], -1, 4);
  SS_EACH e[i] = (e[i] + x[i] * 1.925963033500011e-8f) * 0.693147180559945309f;
  SS_EACH {
    vf k;
    decay_front<false>(y[i], k, f[i], p[i]);
    p[i] = decay_back(k, f[i], p[i]);  // 2^y
    x[i] = p[i] * e[i] + p[i];
  }
#else
  const vf magic = vsplat<vf>(12582912.0f);
  vf k[K], r[K], p[K];
  SS_EACH x[i] = vmin(vsplat<vf>(88.0f), vmax(vsplat<vf>(-87.0f), x[i]));
  SS_EACH k[i] = x[i] * 1.44269504088896341f + magic;
  SS_EACH r[i] = x[i] - (k[i] - magic) * 0.693359375f;
  SS_EACH r[i] = r[i] - (k[i] - magic) * -2.12194440e-4f;
  SS_EACH p[i] = 1.9875691500e-4f * r[i] + 1.3981999507e-3f;
  SS_EACH p[i] = p[i] * r[i] + 8.3334519073e-3f;
  SS_EACH p[i] = p[i] * r[i] + 4.1665795894e-2f;
  SS_EACH p[i] = p[i] * r[i] + 1.6666665459e-1f;
  SS_EACH p[i] = p[i] * r[i] + 5.0000001201e-1f;
  SS_EACH p[i] = p[i] * (r[i] * r[i]) + r[i] + 1.0f;
  SS_EACH x[i] = p[i] * (vf)(((vu32)k[i] << 23) + (127u << 23));
#endif
}
template <int K, bool kClamp> SS_INLINE void vdecay_k(vf* y) {
  vf k[K], f[K], p[K];
  SS_EACH decay_front<kClamp>(y[i], k[i], f[i], p[i]);
  SS_EACH y[i] = decay_back(k[i], f[i], p[i]);
}
template <int K, bool kClamp> SS_INLINE void vdecay_k(vd* y) { vexp_k<K>(y); }
// Largest |y| the unclamped float decay takes.
constexpr float kDecayArgMax = 126.0f;

// 1 / d. AVX-512: the 14-bit reciprocal estimate and one Newton step (rel. error ~2^-23, the
// float's own rounding): a 16-lane division has a throughput of one per ~16 cycles, and the
// softplus and sigmoid of a chunk had 8 of them per channel (~1 cycle per step each).
SS_INLINE vf vrecip(vf d) {
#if SS_AVX512
  const vf r = __builtin_ia32_rcp14ps512_mask(d, vsplat<vf>(0.0f), -1);
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}
SS_INLINE vd vrecip(vd d) { return 1.0 / d; }

// softplus with torch's threshold (x > 20 -> x). float: max(x, 0) + log1p(exp(-|x|)), with
// log1p(e) = 2 atanh(e / (2 + e)) by its series (e in (0, 1], so s <= 1/3): no cancellation for
// tiny e; AVX-512, where every lane of the K vectors is in [kSoftplusPiecesLo, ...): the polynomial
// pieces of softplus_pieces.h instead (19 vector operations per vector instead of 34, which were ~15%
// of the lane forward; max rel. error 1.7e-7, the exp + log1p path's 4.1e-7).
// double: log1p(exp(x)) exactly as torch computes it. With dsp, also the derivative: sigmoid(x) (1
// past the threshold), in float from the same e = exp(-|x|) (no second exp).
template <int K, typename V> SS_INLINE void vsigmoid_k(V* x);
// e = exp(-|x|) and, with dsp, softplus'(x) from it.
template <int K> SS_INLINE void softplus_exp_k(const vf* x, vf* e, vf* dsp) {
  SS_EACH e[i] = x[i] < 0.0f ? x[i] : -x[i];  // -|x|
  vexp_k<K>(e);
  if (dsp) SS_EACH dsp[i] = x[i] > 20.0f ? vsplat<vf>(1.0f) : (x[i] < 0.0f ? e[i] : vsplat<vf>(1.0f)) * vrecip(1.0f + e[i]);
}
#if SS_AVX512
// The pieces: piece (round(x) + 16) mod 32 (x + 1.5 * 2^23 + 16 leaves round(x) + 16 in the low
// mantissa bits; a two-register permute reads its index mod 32) at r = x - round(x) (vreduceps,
// exact), Horner; x itself past kSoftplusPiecesHi. False (x untouched) if a lane is below the
// pieces or NaN.
template <int K> SS_INLINE bool softplus_pieces_k(vf* x, vf* dsp) {
  unsigned in = 0xFFFF;
  SS_EACH in &= __builtin_ia32_cmpps512_mask(x[i], vsplat<vf>(kSoftplusPiecesLo), 29 /* GE, ordered */, -1, 4);
  if (in != 0xFFFF) return false;
  if (dsp) {
    vf e[K];
    softplus_exp_k<K>(x, e, dsp);
  }
  const auto coef = [](int k, vi32 j) {
    return __builtin_shuffle(vload<vf>(kSoftplusPieces[k]), vload<vf>(kSoftplusPieces[k] + 16), j);
  };
  vi32 j[K];
  vf r[K], p[K];
  SS_EACH {
    j[i] = (vi32)(x[i] + 12582928.0f);  // 1.5 * 2^23 + 16
    r[i] = __builtin_ia32_reduceps512_mask(x[i], 8 /* nearest, no precision exception */, vsplat<vf>(0.0f), -1);
    p[i] = coef(kSoftplusDegree, j[i]);
  }
  for (int k = kSoftplusDegree - 1; k >= 0; --k) SS_EACH p[i] = p[i] * r[i] + coef(k, j[i]);
  SS_EACH x[i] = x[i] < kSoftplusPiecesHi ? p[i] : x[i];
  return true;
}
#endif
template <int K> SS_INLINE void vsoftplus_k(vf* x, vf* dsp = nullptr) {
#if SS_AVX512
  if (softplus_pieces_k<K>(x, dsp)) return;
#endif
  vf e[K], s[K], s2[K], q[K];
  softplus_exp_k<K>(x, e, dsp);
  SS_EACH s[i] = e[i] * vrecip(e[i] + 2.0f);
  SS_EACH s2[i] = s[i] * s[i];
  SS_EACH q[i] = (1.0f / 13.0f) * s2[i] + 1.0f / 11.0f;
  SS_EACH q[i] = q[i] * s2[i] + 1.0f / 9.0f;
  SS_EACH q[i] = q[i] * s2[i] + 1.0f / 7.0f;
  SS_EACH q[i] = q[i] * s2[i] + 1.0f / 5.0f;
  SS_EACH q[i] = q[i] * s2[i] + 1.0f / 3.0f;
  SS_EACH q[i] = q[i] * s2[i] + 1.0f;
  SS_EACH q[i] = vmax(x[i], vsplat<vf>(0.0f)) + 2.0f * s[i] * q[i];
  SS_EACH x[i] = x[i] > 20.0f ? x[i] : q[i];
}
template <int K> SS_INLINE void vsoftplus_k(vd* x, vd* dsp = nullptr) {
  if (dsp) {
    SS_EACH dsp[i] = x[i];
    vsigmoid_k<K>(dsp);
    SS_EACH dsp[i] = x[i] > 20.0 ? vsplat<vd>(1.0) : dsp[i];
  }
  SS_EACH for (int l = 0; l < 4; ++l) x[i][l] = x[i][l] > 20.0 ? x[i][l] : std::log1p(std::exp(x[i][l]));
}
template <int K, typename V> SS_INLINE void vsigmoid_k(V* x) {
  SS_EACH x[i] = -x[i];
  vexp_k<K>(x);
  SS_EACH x[i] = vrecip(1 + x[i]);
}

// K vectors loaded from / stored to consecutive addresses.
template <int K, typename V, typename T> SS_INLINE void vload_k(V* v, const T* p) {
  SS_EACH v[i] = vload<V>(p + i * VecT<T>::lanes);
}
template <int K, typename V, typename T> SS_INLINE void vstore_k(T* p, const V* v) {
  SS_EACH vstore(p + i * VecT<T>::lanes, v[i]);
}
constexpr int kInterleave = 4;  // K for the math over time steps (4 vectors: 32 float / 16 double steps)

// Row sums of a (rows, W) block (W = SIMD lanes): out[i] = sum of row i. Instead of one horizontal
// sum per row (a shuffle/add chain per time step), W rows at a time are transposed and added with
// two-operand shuffles: 7 adds and 14 shuffles per 8 float rows. Rows past `rows` must be readable.
SS_INLINE vf8 sum_rows8(const float* p) {
  typedef vi32x8 vi32;
  vf8 v[8];
  for (int i = 0; i < 8; ++i) v[i] = vload<vf8>(p + 8 * i);
  vf8 s[4], q[2];
  for (int i = 0; i < 4; ++i)
    s[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], vi32{0, 8, 2, 10, 4, 12, 6, 14}) +
           __builtin_shuffle(v[2 * i], v[2 * i + 1], vi32{1, 9, 3, 11, 5, 13, 7, 15});
  for (int i = 0; i < 2; ++i)
    q[i] = __builtin_shuffle(s[2 * i], s[2 * i + 1], vi32{0, 1, 8, 9, 4, 5, 12, 13}) +
           __builtin_shuffle(s[2 * i], s[2 * i + 1], vi32{2, 3, 10, 11, 6, 7, 14, 15});
  return __builtin_shuffle(q[0], q[1], vi32{0, 1, 2, 3, 8, 9, 10, 11}) +
         __builtin_shuffle(q[0], q[1], vi32{4, 5, 6, 7, 12, 13, 14, 15});
}
#if SS_AVX512
// The same for 16 rows of 16 lanes: four rounds (pairs of lanes, 4- and 8-lane groups, halves),
// 15 adds and 30 shuffles per 16 rows.
SS_INLINE vf sum_rows16(const float* p) {
  vf v[16], s[8], q[4], o[2];
  for (int i = 0; i < 16; ++i) v[i] = vload<vf>(p + 16 * i);
  for (int i = 0; i < 8; ++i)
    s[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], vi32{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}) +
           __builtin_shuffle(v[2 * i], v[2 * i + 1], vi32{1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31});
  for (int i = 0; i < 4; ++i)
    q[i] = __builtin_shuffle(s[2 * i], s[2 * i + 1], vi32{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}) +
           __builtin_shuffle(s[2 * i], s[2 * i + 1], vi32{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31});
  for (int i = 0; i < 2; ++i)
    o[i] = __builtin_shuffle(q[2 * i], q[2 * i + 1], vi32{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27}) +
           __builtin_shuffle(q[2 * i], q[2 * i + 1], vi32{4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31});
  return __builtin_shuffle(o[0], o[1], vi32{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}) +
         __builtin_shuffle(o[0], o[1], vi32{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
}
#endif
SS_INLINE vd sum_rows4(const double* p) {
  vd v[4];
  for (int i = 0; i < 4; ++i) v[i] = vload<vd>(p + 4 * i);
  const vd s0 = __builtin_shuffle(v[0], v[1], vi64{0, 4, 2, 6}) + __builtin_shuffle(v[0], v[1], vi64{1, 5, 3, 7});
  const vd s1 = __builtin_shuffle(v[2], v[3], vi64{0, 4, 2, 6}) + __builtin_shuffle(v[2], v[3], vi64{1, 5, 3, 7});
  return __builtin_shuffle(s0, s1, vi64{0, 1, 4, 5}) + __builtin_shuffle(s0, s1, vi64{2, 3, 6, 7});
}
SS_INLINE void row_sums(const float* rows, int n, float* out) {
#if SS_AVX512
  for (int t = 0; t < n; t += 16) vstore(out + t, sum_rows16(rows + t * 16));
#else
  for (int t = 0; t < n; t += 8) vstore(out + t, sum_rows8(rows + t * 8));
#endif
}
SS_INLINE void row_sums(const double* rows, int n, double* out) {
  for (int t = 0; t < n; t += 4) vstore(out + t, sum_rows4(rows + t * 4));
}

// Position (in the stored sequence) of step t of a chunk: idx[t] with a permutation, else t0 + t.
SS_INLINE int64_t pos_of(const int32_t* idx, int64_t t0, int t) { return idx ? int64_t(idx[t]) : t0 + t; }

// 8 x 8 float transpose in registers: c[j] = column j of the rows r[0..7]. Three rounds of
// two-operand shuffles (unpack, 64-bit pairs, 128-bit halves).
SS_INLINE void transpose8_regs(const vf8* r, vf8* c) {
  typedef vi32x8 vi32;
  vf8 t[8], q[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], vi32{0, 8, 1, 9, 4, 12, 5, 13});
    t[2 * i + 1] = __builtin_shuffle(r[2 * i], r[2 * i + 1], vi32{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int h = 0; h < 2; ++h)    // rows 4h .. 4h + 3
    for (int i = 0; i < 2; ++i) {  // t[4h + i] with t[4h + 2 + i]
      q[4 * h + 2 * i] = __builtin_shuffle(t[4 * h + i], t[4 * h + 2 + i], vi32{0, 1, 8, 9, 4, 5, 12, 13});
      q[4 * h + 2 * i + 1] = __builtin_shuffle(t[4 * h + i], t[4 * h + 2 + i], vi32{2, 3, 10, 11, 6, 7, 14, 15});
    }
  // q[0..3] hold columns (0|4), (1|5), (2|6), (3|7) of rows 0-3; q[4..7] the same of rows 4-7
  for (int j = 0; j < 4; ++j) {
    c[j] = __builtin_shuffle(q[j], q[4 + j], vi32{0, 1, 2, 3, 8, 9, 10, 11});
    c[j + 4] = __builtin_shuffle(q[j], q[4 + j], vi32{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// 8 x 8 float transpose: row i of src (8 floats at src + i * ss) becomes column i of dst (row j at
// dst + j * ds).
SS_INLINE void transpose8(const float* src, int64_t ss, float* dst, int64_t ds) {
  vf8 r[8], c[8];
  for (int i = 0; i < 8; ++i) r[i] = vload<vf8>(src + i * ss);
  transpose8_regs(r, c);
  for (int j = 0; j < 8; ++j) vstore(dst + j * ds, c[j]);
}

// Copies an (n, t) block of a feature-major array (feature f, step t at src[f * fs + t]) to the
// (t, n) layout of the chunk buffers (dst[t * Np + f]) or back (to_buffer false), over features
// [0, N) and steps [0, nt): 8 x 8 transposes where whole, element by element at the edges.
template <typename T>
SS_INLINE void copy_feature_major(T* buf, T* arr, int64_t fs, int64_t N, int64_t Np, int nt, bool to_buffer) {
  int64_t n8 = 0, t8 = 0;
  if constexpr (std::is_same<T, float>::value) {
    n8 = N / 8 * 8;
    t8 = nt / 8 * 8;
    float* b = reinterpret_cast<float*>(buf);
    float* a = reinterpret_cast<float*>(arr);
    for (int64_t n = 0; n < n8; n += 8)
      for (int64_t t = 0; t < t8; t += 8) {
        if (to_buffer) transpose8(a + n * fs + t, fs, b + t * Np + n, Np);
        else transpose8(b + t * Np + n, Np, a + n * fs + t, fs);
      }
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = n < n8 ? t8 : 0; t < nt; ++t) {
      if (to_buffer) buf[t * Np + n] = arr[n * fs + t];
      else arr[n * fs + t] = buf[t * Np + n];
    }
}

// Cross mode: the chunk's values of channels [0, n) of a channels-last tensor (step t's n values
// contiguous at base + pos(t) * ps) to the rows of an (n, kChunk) buffer (rows[i * kChunk + t], zero
// past nt), or back (to_rows false; written, or added with add), in 8 x 8 transposes where whole.
// Channel by channel, each gather re-read the chunk's lines of every step (permuted positions, L2 or
// memory): ~20% of the cross-mode backward in perf samples.
template <typename T>
SS_INLINE void move_columns(T* base, int64_t ps, const int32_t* idx, int64_t t0, int nt, int64_t n, T* rows,
                            bool to_rows, bool add) {
  int64_t n8 = 0;
  int t8 = 0;
  if constexpr (std::is_same<T, float>::value) {
    n8 = n / 8 * 8;
    t8 = nt / 8 * 8;
    for (int t = 0; t < t8; t += 8) {
      float* col[8];
      for (int k = 0; k < 8; ++k) col[k] = base + pos_of(idx, t0, t + k) * ps;
      for (int64_t i = 0; i < n8; i += 8) {
        vf8 r[8], c[8];
        if (to_rows) {
          for (int k = 0; k < 8; ++k) r[k] = vload<vf8>(col[k] + i);
          transpose8_regs(r, c);
          for (int j = 0; j < 8; ++j) vstore(rows + (i + j) * kChunk + t, c[j]);
        } else {
          for (int j = 0; j < 8; ++j) r[j] = vload<vf8>(rows + (i + j) * kChunk + t);
          transpose8_regs(r, c);
          for (int k = 0; k < 8; ++k) vstore(col[k] + i, add ? vload<vf8>(col[k] + i) + c[k] : c[k]);
        }
      }
    }
  }
  for (int t = 0; t < nt; ++t) {
    T* col = base + pos_of(idx, t0, t) * ps;
    for (int64_t i = t < t8 ? n8 : 0; i < n; ++i) {
      if (to_rows) rows[i * kChunk + t] = col[i];
      else col[i] = add ? col[i] + rows[i * kChunk + t] : rows[i * kChunk + t];
    }
  }
  if (to_rows)
    for (int64_t i = 0; i < n; ++i) std::fill(rows + i * kChunk + nt, rows + (i + 1) * kChunk, T(0));
}

// Moves the chunk's rows of one (batch, group) between the tensor and the chunk buffers (kToBuffer:
// into them, for the forward and the recomputation; else back out, for the gradients). Per step, R dt
// inputs, N B values and N C values at dtp / Bp / Cp + position * ps + feature * fs (cross mode: one
// (.., L, R + 2N) tensor, fs = 1; plain mode: B and C as mamba's (.., N, L), ps = 1, fs = L). B and C
// sit in (kChunk, Np) buffers (row t = the state vector at step t; lanes past N stay zero from the
// buffers' allocation; rows past nt are never read), the R dt inputs in an (R, kChunk) buffer (time
// contiguous, so the projection vectorises over time; loading zero-fills it past nt).
template <bool kToBuffer, typename T>
SS_INLINE void move_rows(T* dtp, T* Bp, T* Cp, int64_t ps, int64_t fs, int64_t R, int64_t N, int64_t Np,
                         const int32_t* idx, int64_t t0, int nt, T* bufB, T* bufC, T* bufDt) {
  // one element: tensor value x <-> buffer value y, in the direction of the move
  auto move = [](T& x, T& y) { if (kToBuffer) y = x; else x = y; };
  auto move_n = [](T* x, T* y, int64_t n) {
    if (kToBuffer) std::memcpy(y, x, sizeof(T) * n);
    else std::memcpy(x, y, sizeof(T) * n);
  };
  if (fs == 1) {
    for (int t = 0; t < nt; ++t) {
      const int64_t off = pos_of(idx, t0, t) * ps;
      for (int64_t r = 0; r < R; ++r) move(dtp[off + r], bufDt[r * kChunk + t]);
      move_n(Bp + off, bufB + t * Np, N);
      move_n(Cp + off, bufC + t * Np, N);
    }
  } else if (!idx && ps == 1) {  // feature-major in step order (plain mode): transposed in blocks
    for (int64_t r = 0; r < R; ++r) move_n(dtp + r * fs + t0, bufDt + r * kChunk, nt);
    copy_feature_major(bufB, Bp + t0, fs, N, Np, nt, kToBuffer);
    copy_feature_major(bufC, Cp + t0, fs, N, Np, nt, kToBuffer);
  } else {  // feature-major, any order
    for (int64_t r = 0; r < R; ++r)
      for (int t = 0; t < nt; ++t) move(dtp[r * fs + pos_of(idx, t0, t) * ps], bufDt[r * kChunk + t]);
    for (int64_t n = 0; n < N; ++n)
      for (int t = 0; t < nt; ++t) {
        const int64_t off = pos_of(idx, t0, t) * ps + n * fs;
        move(Bp[off], bufB[t * Np + n]);
        move(Cp[off], bufC[t * Np + n]);
      }
  }
  if (kToBuffer)
    for (int64_t r = 0; r < R; ++r) std::fill(bufDt + r * kChunk + nt, bufDt + (r + 1) * kChunk, T(0));
}

// delta of one channel over the chunk from the rows' dt inputs: xb[t] = sum_r w[r] dts[r, t]
// (zeros past nt: the inputs are), the dt projection fused into the scan.
template <typename T>
SS_INLINE void project_dt(const T* dts, const T* w, int64_t R, T* xb) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  for (int t = 0; t < kChunk; t += W) {
    V acc = V{};
    for (int64_t r = 0; r < R; ++r) acc += vsplat<V>(w[r]) * vload<V>(dts + r * kChunk + t);
    vstore(xb + t, acc);
  }
}

// Backward of project_dt for one channel: ddts[r, t] += g[t] w[r] (summed over the block's channels
// by the caller's buffer) and dw[r] += sum_t g[t] dts[r, t], dw kept as W lane sums per r (summed
// across lanes once per group, lane_sum: a horizontal sum per r and chunk was ~5% of the cross
// backward). g is zero past the chunk's end.
template <typename T>
SS_INLINE void project_dt_grad(const T* dts, const T* w, int64_t R, const T* g, T* ddts, T* dw) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  for (int64_t r = 0; r < R; ++r) {
    const V wr = vsplat<V>(w[r]);
    V acc = V{};
    for (int t = 0; t < kChunk; t += W) {
      const V gv = vload<V>(g + t);
      vstore(ddts + r * kChunk + t, vload<V>(ddts + r * kChunk + t) + gv * wr);
      acc += gv * vload<V>(dts + r * kChunk + t);
    }
    vstore(dw + r * W, vload<V>(dw + r * W) + acc);
  }
}

// The sum of the W lanes at v.
template <typename T> SS_INLINE T lane_sum(const T* v) {
  T r = 0;
  for (int l = 0; l < VecT<T>::lanes; ++l) r += v[l];
  return r;
}

// n contiguous values: a whole chunk as 32-byte vector moves unrolled at compile time (a libc
// memcpy call per 256 bytes cost ~4% of the backward), else memcpy.
template <typename T> SS_INLINE void copy_run(T* dst, const T* src, int n) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  if (n == kChunk) {
#pragma GCC unroll 16
    for (int t = 0; t < kChunk; t += W) vstore(dst + t, vload<V>(src + t));
  } else {
    std::memcpy(dst, src, sizeof(T) * n);
  }
}

// The sum over the chunk of a[t] * b[t] (b null: of a[t]) added to the W lane sums at acc (summed
// across lanes once per group, lane_sum); a and b zero past the chunk's end, so whole vectors are
// summed (W partial sums in parallel instead of one serial chain of adds).
template <typename T> SS_INLINE void chunk_sum(const T* a, const T* b, T* acc_lanes) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  V acc[2] = {V{}, V{}};
  for (int t = 0; t < kChunk; t += 2 * W)
    for (int i = 0; i < 2; ++i)
      acc[i] += b ? vload<V>(a + t + i * W) * vload<V>(b + t + i * W) : vload<V>(a + t + i * W);
  vstore(acc_lanes, vload<V>(acc_lanes) + acc[0] + acc[1]);
}

// dst[0, nt) = src[pos(t) * stride], zeros up to kChunk.
template <typename T>
SS_INLINE void gather(const T* src, int64_t stride, const int32_t* idx, int64_t t0, int nt, T* dst) {
  if (!idx && stride == 1) {
    copy_run(dst, src + t0, nt);
  } else {
    for (int t = 0; t < nt; ++t) dst[t] = src[pos_of(idx, t0, t) * stride];
  }
  std::fill(dst + nt, dst + kChunk, T(0));
}

// A whole chunk to a cache-line-aligned run of dst with streaming (non-temporal) stores: the lines
// go to memory without first being read into the cache (a plain store to a line not in cache
// reads it first). For outputs too large to stay cached for their consumer anyway: in the
// harness the backward's du / ddelta writes cost ~0.5 ns per (channel, step) with plain stores,
// ~6% of the backward. Returns false (nothing written) where it does not apply. The task ends
// with stream_fence().
template <typename T> SS_INLINE bool stream_chunk(T* dst, const T* src, int nt) {
#if SS_AVX2
  if constexpr (std::is_same_v<T, float>) {
    constexpr int W = VecT<T>::lanes;
    if (nt != kChunk || (reinterpret_cast<uintptr_t>(dst) & (sizeof(vf) - 1)) != 0) return false;
    for (int t = 0; t < kChunk; t += W) {
#if SS_AVX512
      __builtin_ia32_movntps512(dst + t, vload<vf>(src + t));
#else
      __builtin_ia32_movntps256(dst + t, vload<vf>(src + t));
#endif
    }
    return true;
  }
#endif
  (void)dst; (void)src; (void)nt;
  return false;
}
SS_INLINE void stream_fence(bool streamed) {
#if SS_AVX2
  if (streamed) __builtin_ia32_sfence();
#endif
  (void)streamed;
}

// dst[pos(t) * stride] = (or +=, with add) src[t] for t < nt; with stream, streaming stores where
// they apply (a contiguous whole chunk).
template <typename T>
SS_INLINE void scatter(T* dst, int64_t stride, const int32_t* idx, int64_t t0, int nt, const T* src, bool add,
                       bool stream = false) {
  if (!idx && stride == 1 && !add) {
    if (!(stream && stream_chunk(dst + t0, src, nt))) copy_run(dst + t0, src, nt);
  } else if (add) {
    for (int t = 0; t < nt; ++t) dst[pos_of(idx, t0, t) * stride] += src[t];
  } else {
    for (int t = 0; t < nt; ++t) dst[pos_of(idx, t0, t) * stride] = src[t];
  }
}

// A channel's slice of a (batch, dim, L) tensor for one chunk is a few cache lines, L floats away
// from the next channel's: a pattern the hardware prefetcher misses, so without help every slice
// is a cache miss. The tasks ask for the next channel's slices while they compute this one.
SS_INLINE void prefetch_span(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 3);
}
SS_INLINE void prefetch_span_w(void* p, int64_t bytes) {
  char* c = static_cast<char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 1, 3);
}

// sg = sigmoid(x) over n values (a multiple of kInterleave vectors; default a whole chunk), K
// vectors at a time.
template <typename T> SS_INLINE void chunk_sigmoid(const T* x, T* sg, int n = kChunk) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes, K = kInterleave;
  for (int t = 0; t < n; t += K * W) {
    V v[K];
    vload_k<K>(v, x + t);
    vsigmoid_k<K>(v);
    vstore_k<K>(sg + t, v);
  }
}

// Prologue over n values (a multiple of kInterleave vectors): on entry ub = u and xb = delta (zero
// padded); xb += bias (the same vector added to each of xb's vectors), dtb = softplus(xb) (or xb),
// bub = dtb * ub; with softplus and dsp given (the backward), dsp = softplus'(xb).
template <typename T, typename V>
SS_INLINE void prologue_run(const Args<T>& a, V bias, int n, T* dtb, const T* ub, T* bub, T* xb, T* dsp = nullptr) {
  constexpr int W = VecT<T>::lanes, K = kInterleave;
  for (int t = 0; t < n; t += K * W) {
    V x[K], uv[K];
    vload_k<K>(x, xb + t);
    SS_EACH x[i] += bias;
    vstore_k<K>(xb + t, x);
    vload_k<K>(uv, ub + t);
    if (a.softplus) {
      if (dsp) {
        V ds[K];
        vsoftplus_k<K>(x, ds);
        vstore_k<K>(dsp + t, ds);
      } else {
        vsoftplus_k<K>(x);
      }
    }
    vstore_k<K>(dtb + t, x);
    SS_EACH uv[i] *= x[i];
    vstore_k<K>(bub + t, uv);
  }
}
// Per-chunk prologue of one channel d, vectorised over time (the state layout).
template <typename T>
SS_INLINE void chunk_prologue(const Args<T>& a, int64_t d, T* dtb, const T* ub, T* bub, T* xb, T* dsp = nullptr) {
  typedef typename VecT<T>::type V;
  prologue_run(a, vsplat<V>(a.bias ? a.bias[d] : T(0)), kChunk, dtb, ub, bub, xb, dsp);
}

// Whether all lanes of v are true (v: a lane comparison's result, -1 / 0 per lane). One mask test
// with AVX2 / AVX-512 (a lane-by-lane loop cost ~10% of the forward), a loop otherwise.
template <typename V> SS_INLINE bool all_lanes(V v) {
#if SS_AVX512
  if constexpr (sizeof(v[0]) == 4 && sizeof(V) == 64)
    return __builtin_ia32_cmpd512_mask((vi32)v, vi32{}, 4 /* NE */, -1) == 0xFFFF;
#endif
#if SS_AVX2
  if constexpr (sizeof(V) == 32) return __builtin_ia32_movmskps256((vf8)v) == 0xFF;  // sign bits
#endif
  bool ok = true;
  for (size_t l = 0; l < sizeof(V) / sizeof(v[0]); ++l) ok = ok && v[l] != 0;
  return ok;
}

// Whether the chunk's decay arguments stay in the unclamped exp's range: max |dt| * amax <= 126
// and no dt NaN or infinite (padded rows included: only makes the test more conservative; a NaN
// amax, from a NaN in A, fails it too). Over n values (default a chunk of one channel: amax the
// same in every lane; the lane layout passes each lane's channel's amax).
template <typename T, typename V> SS_INLINE bool decay_args_in_range(const T* dtb, V amax, int n = kChunk) {
  constexpr int W = VecT<T>::lanes;
  constexpr int K = 4;  // independent max / add chains (n: a multiple of K vectors)
  V m[K] = {}, bad[K] = {};
  for (int t = 0; t < n; t += K * W)
    SS_EACH {
      const V x = vload<V>(dtb + t + i * W);
      const V ax = x < T(0) ? -x : x;
      m[i] = ax > m[i] ? ax : m[i];
      bad[i] += x - x;  // 0, or NaN for NaN / inf
    }
  for (int i = 1; i < K; ++i) m[0] = m[i] > m[0] ? m[i] : m[0];
  return all_lanes(m[0] * amax + (bad[0] + bad[1] + bad[2] + bad[3]) <= T(kDecayArgMax));  // (NaN compares false)
}

// Per-channel scratch of one chunk, (kChunk, Np) rows unless noted; lives in L1.
template <typename T> struct ChunkBufs {
  Buf<T> decay, hs, rowsum1, rowsum2;  // rowsum*: (kChunk, W)
  explicit ChunkBufs(int64_t Np)
      : decay(kChunk * Np), hs((kChunk + 1) * Np),
        rowsum1(kChunk * VecT<T>::lanes, T(0)), rowsum2(kChunk * VecT<T>::lanes, T(0)) {}
};

// decay[t, :] = exp(dt_t A) for t < nt, for a runtime-sized state (compile-time sizes compute them
// inside the recursion: fused_states). Rows are Np = nb * W wide, so vector v of the chunk is step
// v / nb, state block v % nb; K vectors at a time (rounded up: padded rows are readable, unused).
template <typename T, bool kClamp>
SS_INLINE void decay_pass(int nt, int nb, const T* dtb, const typename VecT<T>::type* Av, T* dec) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes, K = kInterleave;
  for (int v0 = 0; v0 < nt * nb; v0 += K) {
    V y[K];
    SS_EACH y[i] = vsplat<V>(dtb[unsigned(v0 + i) / unsigned(nb)]) * Av[unsigned(v0 + i) % unsigned(nb)];
    vdecay_k<K, kClamp>(y);
    vstore_k<K>(dec + v0 * W, y);
  }
}

// The recursion with the decays computed in the same loop: the exps of later steps do not depend
// on the state, so the out-of-order core runs them while the recursion's FMA chain waits (a
// separate pass over the chunk stored them and read them back). kStore (the backward's
// recomputation) also keeps the decays and states for the adjoint; prod, if given, receives the
// per-lane products h_t * C_t.
template <typename T, int NB, bool kClamp, bool kStore>
SS_INLINE void fused_states(int nt, const T* dtb, const T* bub, const T* Bc, const T* Cc,
                            const typename VecT<T>::type* Av, typename VecT<T>::type* h_io, T* dec, T* hs, T* prod) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes, Np = NB * W;
  // The state in locals: through the pointer, the compiler must assume the stores below may alias
  // it and keeps it in memory, which puts a store-to-load forward on the recursion's chain.
  V h[NB];
  for (int j = 0; j < NB; ++j) h[j] = h_io[j];
  auto step = [&](int t, const V* a) {
    const V buv = vsplat<V>(bub[t]);
    V acc = V{};
    for (int j = 0; j < NB; ++j) {
      h[j] = a[j] * h[j] + buv * vload<V>(Bc + t * Np + j * W);
      if (kStore) {
        vstore(dec + t * Np + j * W, a[j]);
        vstore(hs + (t + 1) * Np + j * W, h[j]);
      }
      if (prod) acc += h[j] * vload<V>(Cc + t * Np + j * W);
    }
    if (prod) vstore(prod + t * W, acc);
  };
  if constexpr (std::is_same_v<T, float>) {
    // float: the exp is software-pipelined over two iterations, step t + 1's front half next to
    // step t's back half, so no iteration waits on a whole ~40-cycle exp chain (a few % faster
    // in the kernel harness; the loop is still about twice its FMA-pipe bound)
    V k[NB], f[NB], p[NB];
    auto front = [&](int t) {
      const V dtv = vsplat<V>(dtb[t]);
      for (int j = 0; j < NB; ++j) decay_front<kClamp>(dtv * Av[j], k[j], f[j], p[j]);
    };
    front(0);
    for (int t = 0; t < nt; ++t) {
      V a[NB];
      for (int j = 0; j < NB; ++j) a[j] = decay_back(k[j], f[j], p[j]);
      front(t + 1 < nt ? t + 1 : t);
      step(t, a);
    }
  } else {
    for (int t = 0; t < nt; ++t) {
      V a[NB];
      const V dtv = vsplat<V>(dtb[t]);
      for (int j = 0; j < NB; ++j) a[j] = dtv * Av[j];
      vdecay_k<NB, kClamp>(a);
      step(t, a);
    }
  }
  for (int j = 0; j < NB; ++j) h_io[j] = h[j];
}

// The state recursion of one channel over one chunk, shared by the forward and the backward's
// recomputation (so both produce bit-identical states): h_t = a_t h_{t-1} + dt_t u_t B_t with
// a_t = exp(dt_t A) and the state in registers (one FMA per vector on the critical path);
// optionally stores a_t and h_t (store_states: the backward) and y_t = sum of h_t * C_t over the
// state, summed W steps at a time from per-lane products (no per-step horizontal sum).
// With a compile-time state size (NB > 0) the decays are computed inside the recursion's loop
// (fused_states); otherwise in a pass of their own first (decay_pass), then the recursion.
// Av holds A * kDecayScale; amax = max |Av|.
template <typename T, int NB>
SS_INLINE void chunk_states(int nt, int nb, int64_t Np, const T* dtb, const T* bub, const T* Bc, const T* Cc,
                            const typename VecT<T>::type* Av, T amax, typename VecT<T>::type* h,
                            ChunkBufs<T>& s, bool store_states, T* y) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  T* dec = s.decay.data();
  T* hs = s.hs.data();
  T* prod = y ? s.rowsum1.data() : nullptr;
  const bool clamp = !decay_args_in_range(dtb, vsplat<V>(amax));
  if (store_states)
    for (int j = 0; j < nb; ++j) vstore(hs + j * W, h[j]);
  if constexpr (NB > 0) {
    auto run = [&](auto kStore) {
      if (clamp) fused_states<T, NB, true, decltype(kStore)::value>(nt, dtb, bub, Bc, Cc, Av, h, dec, hs, prod);
      else fused_states<T, NB, false, decltype(kStore)::value>(nt, dtb, bub, Bc, Cc, Av, h, dec, hs, prod);
    };
    if (store_states) run(std::true_type{});
    else run(std::false_type{});
  } else {
    if (clamp) decay_pass<T, true>(nt, nb, dtb, Av, dec);
    else decay_pass<T, false>(nt, nb, dtb, Av, dec);
    for (int t = 0; t < nt; ++t) {
      const V buv = vsplat<V>(bub[t]);
      V acc = V{};
      for (int j = 0; j < nb; ++j) {
        h[j] = vload<V>(dec + t * Np + j * W) * h[j] + buv * vload<V>(Bc + t * Np + j * W);
        if (store_states) vstore(hs + (t + 1) * Np + j * W, h[j]);
        if (prod) acc += h[j] * vload<V>(Cc + t * Np + j * W);
      }
      if (prod) vstore(prod + t * W, acc);
    }
  }
  if (y) {
    for (int t = nt; t < kChunk; ++t) vstore(prod + t * W, V{});
    row_sums(prod, kChunk, y);
  }
}


// The forward's epilogue over n values (a multiple of kInterleave vectors): y += D u (Dv: D of each
// lane's channel), then, with zb given, y *= z sigmoid(z) (sgb: scratch).
template <typename T, typename V>
SS_INLINE void skip_and_gate(const Args<T>& a, V Dv, int n, T* yb, const T* ub, const T* zb, T* sgb) {
  constexpr int W = VecT<T>::lanes;
  if (zb) {
    chunk_sigmoid(zb, sgb, n);
    for (int t = 0; t < n; t += W)
      vstore(yb + t, (vload<V>(yb + t) + Dv * vload<V>(ub + t)) * vload<V>(zb + t) * vload<V>(sgb + t));
  } else if (a.D) {
    for (int t = 0; t < n; t += W) vstore(yb + t, vload<V>(yb + t) + Dv * vload<V>(ub + t));
  }
}

// ---- tasks ------------------------------------------------------------------------------------
// A task is (batch b, groups [g_lo, g_hi), block of channel indices [c_lo, c_hi) within a group);
// it runs that block in each of its groups (channel d = g * cpg + c). Cross mode: every group
// (GT = 1), so outputs summed over groups (a shared u's du, the channels-last y) are written by one
// task only. Plain mode: one group per task (GT = G), so with one block (P = 1) a task owns its
// group's dB / dC outright and no partial copies are needed. Per group, time is walked in chunks;
// per chunk, the B/C rows are loaded once and every channel of the block runs its recursion over
// them.
struct Block { int64_t b, blk, g_lo, g_hi, c_lo, c_hi; };
template <typename T> SS_INLINE Block block_of(const Args<T>& a, int64_t task) {
  Block k;
  const int64_t gt = group_tasks(a);
  k.blk = task % a.P;
  const int64_t bg = task / a.P;
  k.b = bg / gt;
  k.g_lo = gt == 1 ? 0 : bg % gt;
  k.g_hi = gt == 1 ? a.G : k.g_lo + 1;
  int64_t per = (a.cpg + a.P - 1) / a.P;
  if (a.blk_align > 1) per = (per + a.blk_align - 1) / a.blk_align * a.blk_align;
  k.c_lo = std::min(a.cpg, k.blk * per);
  k.c_hi = std::min(a.cpg, (k.blk + 1) * per);
  return k;
}

// Where a channel's u, du, y and dout values live: a (batch, dim, L) row, or with `cross` a column of
// a (batch, L, cpg) channels-last tensor shared by the groups (u, du) or summed over them (y).
template <typename T> SS_INLINE int64_t chan_off(const Args<T>& a, int64_t b, int64_t g, int64_t c) {
  return a.cross ? b * a.L * a.cpg + c : (b * a.dim + g * a.cpg + c) * a.L;
}
template <typename T> SS_INLINE int64_t chan_ps(const Args<T>& a) { return a.cross ? a.cpg : 1; }

// Prefetch the next channel's slices when the chunk is a contiguous run (identity or a reversed
// row): prefetch_span over [lo, lo + nt). Strided chunks (column-major scans) are left to the
// hardware's stride prefetcher.
SS_INLINE bool contiguous_run(const int32_t* idx, int64_t t0, int nt, int64_t* lo) {
  if (!idx) { *lo = t0; return true; }
  const int64_t first = idx[0], last = idx[nt - 1];
  *lo = std::min(first, last);
  return std::abs(last - first) == nt - 1;
}

// Chunk c of a group's sequence: its first step t0, length nt, the stored positions of its steps
// (idx, null for the identity) and whether they form a contiguous run starting at lo.
struct ChunkSpan {
  int64_t t0, lo;
  int nt;
  const int32_t* idx;
  bool run;
};
SS_INLINE ChunkSpan chunk_span(const int32_t* perm, int64_t L, int64_t c) {
  ChunkSpan s;
  s.t0 = c * kChunk;
  s.nt = int(std::min<int64_t>(kChunk, L - s.t0));
  s.idx = perm ? perm + s.t0 : nullptr;
  s.run = contiguous_run(s.idx, s.t0, s.nt, &s.lo);
  return s;
}

// The chunk's rows of group offset goff into the buffers (move_rows only reads the tensor side).
template <typename T>
SS_INLINE void load_rows(const Args<T>& a, int64_t goff, int64_t Np, const ChunkSpan& sp, T* bufB, T* bufC, T* bufDt) {
  move_rows<true>(a.rows_dt ? const_cast<T*>(a.rows_dt) + goff : nullptr, const_cast<T*>(a.rows_B) + goff, const_cast<T*>(a.rows_C) + goff,
                  a.rows_ps, a.rows_fs, a.R, a.N, Np, sp.idx, sp.t0, sp.nt, bufB, bufC, bufDt);
}

template <typename T, int NB>
SS_INLINE void fwd_task(const Args<T>& a, int64_t task) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  const Block k = block_of(a, task);
  const int64_t nch = k.c_hi - k.c_lo, b = k.b, L = a.L, N = a.N, Np = a.Np;
  if (nch <= 0) return;
  const int nb = NB > 0 ? NB : int(Np / W);

  Buf<T> bufB(kChunk * Np, T(0)), bufC(kChunk * Np, T(0)), hs(nch * Np), Ap(nch * Np, T(0));
  Buf<T> dtsb(kChunk * a.R + 1);
  ChunkBufs<T> scratch(Np);
  alignas(64) T dtb[kChunk], ub[kChunk], bub[kChunk], xb[kChunk], yb[kChunk];
  Buf<T> amax(nch);
  const int64_t ps = chan_ps(a);
  Buf<T> colU(a.cross ? nch * kChunk : 0), colY(a.cross ? nch * kChunk : 0);  // cross: see move_columns
  for (int64_t g = k.g_lo; g < k.g_hi; ++g) {
    std::fill(hs.begin(), hs.end(), T(0));
    for (int64_t i = 0; i < nch; ++i) {
      amax[i] = 0;
      for (int64_t n = 0; n < N; ++n) {
        Ap[i * Np + n] = a.A[(g * a.cpg + k.c_lo + i) * N + n] * kDecayScale<T>;
        amax[i] = std::max(amax[i], std::abs(Ap[i * Np + n]));
      }
    }
    const int64_t goff = b * a.rows_bs + g * a.rows_gs;  // this (batch, group)'s rows
    const int32_t* perm = a.perm ? a.perm + g * L : nullptr;
    const bool accumulate_y = a.cross && g > 0;
    for (int64_t c = 0; c < a.nchunks; ++c) {
      const ChunkSpan sp = chunk_span(perm, L, c);
      load_rows(a, goff, Np, sp, bufB.data(), bufC.data(), dtsb.data());
      if (a.cross)
        move_columns(const_cast<T*>(a.u) + chan_off(a, b, 0, k.c_lo), ps, sp.idx, sp.t0, sp.nt, nch, colU.data(), true,
                     false);
      for (int64_t i = 0; i < nch; ++i) {
        const int64_t cc = k.c_lo + i, d = g * a.cpg + cc, bd = b * a.dim + d;
        // (cross mode reads the block's columns, moved to colU above)
        if (!a.cross && sp.run && i + 1 < nch) {
          const int64_t bytes = sizeof(T) * sp.nt;
          prefetch_span(a.u + chan_off(a, b, g, cc + 1) + sp.lo, bytes);
          prefetch_span(a.delta + (bd + 1) * L + sp.lo, bytes);
          if (a.z) prefetch_span(a.z + (bd + 1) * L + sp.lo, bytes);
          if (!a.stream) prefetch_span_w(a.y + chan_off(a, b, g, cc + 1) + sp.lo, bytes);
        }
        if (a.cross) copy_run(ub, &colU[i * kChunk], kChunk);
        else gather(a.u + chan_off(a, b, g, cc), ps, sp.idx, sp.t0, sp.nt, ub);
        if (a.R > 0) project_dt(dtsb.data(), a.Wdt + d * a.R, a.R, xb);
        else gather(a.delta + bd * L, 1, sp.idx, sp.t0, sp.nt, xb);
        chunk_prologue(a, d, dtb, ub, bub, xb);
        V h[NB > 0 ? NB : kMaxNB], Av[NB > 0 ? NB : kMaxNB];
        for (int j = 0; j < nb; ++j) {
          h[j] = vload<V>(&hs[i * Np + j * W]);
          Av[j] = vload<V>(&Ap[i * Np + j * W]);
        }
        if (a.ckpt) {
          T* ck = a.ckpt + (bd * a.nchunks + c) * Np;
          for (int j = 0; j < nb; ++j) vstore(ck + j * W, h[j]);
        }
        chunk_states<T, NB>(sp.nt, nb, Np, dtb, bub, bufB.data(), bufC.data(), Av, amax[i], h, scratch, false, yb);
        for (int j = 0; j < nb; ++j) vstore(&hs[i * Np + j * W], h[j]);
        // epilogue: D skip and z gating, vectorised over time
        alignas(64) T zb[kChunk], sgb[kChunk];
        if (a.z) gather(a.z + bd * L, 1, sp.idx, sp.t0, sp.nt, zb);
        skip_and_gate(a, vsplat<V>(a.D ? a.D[d] : T(0)), kChunk, yb, ub, a.z ? zb : nullptr, sgb);
        if (a.cross) copy_run(&colY[i * kChunk], yb, kChunk);
        else scatter(a.y + chan_off(a, b, g, cc), ps, sp.idx, sp.t0, sp.nt, yb, accumulate_y, a.stream);
      }
      if (a.cross)
        move_columns(a.y + chan_off(a, b, 0, k.c_lo), ps, sp.idx, sp.t0, sp.nt, nch, colY.data(), false, accumulate_y);
    }
    if (a.last)
      for (int64_t i = 0; i < nch; ++i)
        std::memcpy(a.last + (b * a.dim + g * a.cpg + k.c_lo + i) * N, &hs[i * Np], sizeof(T) * N);
  }
  stream_fence(a.stream);
}

template <typename T, int NB>
SS_INLINE void bwd_task(const Args<T>& a, int64_t task) {
  typedef typename VecT<T>::type V;
  constexpr int W = VecT<T>::lanes;
  constexpr int NBc = NB > 0 ? NB : kMaxNB;
  const Block k = block_of(a, task);
  const int64_t nch = k.c_hi - k.c_lo, b = k.b, L = a.L, N = a.N, Np = a.Np;
  const int nb = NB > 0 ? NB : int(Np / W);
  // this task's slice of the partial sums of the rows' gradient: P copies laid out like the rows
  const int64_t R = a.R;
  const int64_t toff = k.blk * a.part_size + b * a.rows_bs;
  T* ddt_task = a.ddt_part ? a.ddt_part + toff : nullptr;
  T* dB_task = a.dB_part + toff;
  T* dC_task = a.dC_part + toff;
  if (nch <= 0) {  // an empty block still owns its slice of the partial sums
    Buf<T> zeros(std::max<int64_t>(R, 1) * kChunk + kChunk * Np, T(0));  // only read
    for (int64_t g = k.g_lo; g < k.g_hi; ++g)
      for (int64_t c = 0; c < a.nchunks; ++c) {
        const int64_t t0 = c * kChunk, go = g * a.rows_gs;
        move_rows<false>(ddt_task ? ddt_task + go : nullptr, dB_task + go, dC_task + go, a.rows_ps, a.rows_fs, R, N,
                         Np, nullptr, t0, int(std::min<int64_t>(kChunk, L - t0)), zeros.data(), zeros.data(),
                         zeros.data());
      }
    return;
  }

  Buf<T> bufB(kChunk * Np, T(0)), bufC(kChunk * Np, T(0)), bufdB(kChunk * Np), bufdC(kChunk * Np);
  Buf<T> dtsb(kChunk * R + 1), bufddts(kChunk * R + 1), dWs(nch * R * W + 1);  // (dWs, dDs, dbs: lane sums)
  ChunkBufs<T> scratch(Np);
  Buf<T> rs(nch * Np), dAs(nch * Np), Ap(nch * Np, T(0)), Araw(nch * Np, T(0));
  Buf<T> dDs(nch * W), dbs(nch * W), amax(nch);
  alignas(64) T dtb[kChunk], ub[kChunk], bub[kChunk], xb[kChunk], y0b[kChunk], dyb[kChunk],
      dub[kChunk], ddtb[kChunk], zb[kChunk], sgb[kChunk], S1b[kChunk], S2b[kChunk], dspb[kChunk];
  const T* Hbuf = scratch.hs.data();
  const T* Abuf = scratch.decay.data();
  T* s1b = scratch.rowsum1.data();
  T* s2b = scratch.rowsum2.data();
  const int64_t ps = chan_ps(a);
  // cross mode: the block's u, dout and du columns of the chunk as rows (move_columns)
  Buf<T> colU(a.cross ? nch * kChunk : 0), colDy(a.cross ? nch * kChunk : 0), colDu(a.cross ? nch * kChunk : 0);
  T* const u_cols = const_cast<T*>(a.u) + chan_off(a, b, 0, k.c_lo);

  for (int64_t g = k.g_lo; g < k.g_hi; ++g) {
    for (int64_t i = 0; i < nch; ++i) {
      const int64_t d = g * a.cpg + k.c_lo + i;
      amax[i] = 0;
      std::fill(&dDs[i * W], &dDs[(i + 1) * W], T(0));
      std::fill(&dbs[i * W], &dbs[(i + 1) * W], T(0));
      for (int64_t n = 0; n < Np; ++n) {
        const T An = n < N ? a.A[d * N + n] : T(0);
        Araw[i * Np + n] = An;
        Ap[i * Np + n] = An * kDecayScale<T>;
        amax[i] = std::max(amax[i], std::abs(Ap[i * Np + n]));
        rs[i * Np + n] = a.dlast && n < N ? a.dlast[(b * a.dim + d) * N + n] : T(0);
        dAs[i * Np + n] = 0;
      }
    }
    const int64_t goff = b * a.rows_bs + g * a.rows_gs, gpo = g * a.rows_gs;  // this (batch, group)'s rows
    const int32_t* perm = a.perm ? a.perm + g * L : nullptr;
    const bool accumulate_du = a.cross && g > 0;
    std::fill(dWs.begin(), dWs.end(), T(0));

    for (int64_t c = a.nchunks - 1; c >= 0; --c) {
      const ChunkSpan sp = chunk_span(perm, L, c);
      load_rows(a, goff, Np, sp, bufB.data(), bufC.data(), dtsb.data());
      std::fill(bufdB.begin(), bufdB.end(), T(0));
      std::fill(bufdC.begin(), bufdC.end(), T(0));
      std::fill(bufddts.begin(), bufddts.end(), T(0));
      if (a.cross) {
        move_columns(u_cols, ps, sp.idx, sp.t0, sp.nt, nch, colU.data(), true, false);
        move_columns(const_cast<T*>(a.dout) + chan_off(a, b, 0, k.c_lo), ps, sp.idx, sp.t0, sp.nt, nch, colDy.data(),
                     true, false);
      }
      for (int64_t i = 0; i < nch; ++i) {
        const int64_t cc = k.c_lo + i, d = g * a.cpg + cc, bd = b * a.dim + d;
        if (i + 1 < nch) {
          prefetch_span(a.ckpt + ((bd + 1) * a.nchunks + c) * Np, sizeof(T) * Np);
          if (sp.run && !a.cross) {
            const int64_t bytes = sizeof(T) * sp.nt;
            prefetch_span(a.u + chan_off(a, b, g, cc + 1) + sp.lo, bytes);
            prefetch_span(a.delta + (bd + 1) * L + sp.lo, bytes);
            prefetch_span(a.dout + chan_off(a, b, g, cc + 1) + sp.lo, bytes);
            if (!a.stream) prefetch_span_w(a.ddelta + (bd + 1) * L + sp.lo, bytes);
            if (a.z) {
              prefetch_span(a.z + (bd + 1) * L + sp.lo, bytes);
              if (!a.stream) prefetch_span_w(a.dz + (bd + 1) * L + sp.lo, bytes);
            }
          }
        }
        if (a.cross) copy_run(ub, &colU[i * kChunk], kChunk);
        else gather(a.u + chan_off(a, b, g, cc), ps, sp.idx, sp.t0, sp.nt, ub);
        if (R > 0) project_dt(dtsb.data(), a.Wdt + d * R, R, xb);
        else gather(a.delta + bd * L, 1, sp.idx, sp.t0, sp.nt, xb);
        chunk_prologue(a, d, dtb, ub, bub, xb, dspb);
        V Av[NBc], h[NBc], Ar[NBc];
        const T* ck = a.ckpt + (bd * a.nchunks + c) * Np;
        for (int j = 0; j < nb; ++j) {
          Av[j] = vload<V>(&Ap[i * Np + j * W]);
          Ar[j] = vload<V>(&Araw[i * Np + j * W]);
          h[j] = vload<V>(ck + j * W);
        }
        // recompute the chunk's states (bit-identical to the forward) and decays; y before gating if z
        chunk_states<T, NB>(sp.nt, nb, Np, dtb, bub, bufB.data(), bufC.data(), Av, amax[i], h, scratch, true,
                            a.z ? y0b : nullptr);
        // gradient reaching the scan output (before D skip and gating)
        const T Dd = a.D ? a.D[d] : T(0);
        if (a.cross) copy_run(dyb, &colDy[i * kChunk], kChunk);
        else gather(a.dout + chan_off(a, b, g, cc), ps, sp.idx, sp.t0, sp.nt, dyb);
        if (a.z) {  // y0b: all kChunk rows written by chunk_states (zeros past sp.nt)
          alignas(64) T dzb[kChunk];
          gather(a.z + bd * L, 1, sp.idx, sp.t0, sp.nt, zb);
          chunk_sigmoid(zb, sgb);
          for (int t = 0; t < kChunk; t += W) {
            const V zv = vload<V>(zb + t), sg = vload<V>(sgb + t), dov = vload<V>(dyb + t);
            const V yD = vload<V>(y0b + t) + Dd * vload<V>(ub + t);
            vstore(dzb + t, dov * yD * sg * (T(1) + zv * (T(1) - sg)));
            vstore(dyb + t, dov * zv * sg);
          }
          scatter(a.dz + bd * L, 1, sp.idx, sp.t0, sp.nt, dzb, false, a.stream);
        }
        // adjoint recursion backwards in time; the per-step sums over the state (S1 = sum g B,
        // S2 = sum g a h_{t-1} A) are kept as lane vectors and reduced W steps at a time afterwards
        V r[NBc], dA[NBc];
        for (int j = 0; j < nb; ++j) {
          r[j] = vload<V>(&rs[i * Np + j * W]);
          dA[j] = vload<V>(&dAs[i * Np + j * W]);
        }
        for (int t = sp.nt - 1; t >= 0; --t) {
          const V dyv = vsplat<V>(dyb[t]), buv = vsplat<V>(bub[t]), dtv = vsplat<V>(dtb[t]);
          const T* Br = &bufB[t * Np];
          const T* Cr = &bufC[t * Np];
          T* dBr = &bufdB[t * Np];
          T* dCr = &bufdC[t * Np];
          const T* Hn = &Hbuf[(t + 1) * Np];
          const T* Hp = &Hbuf[t * Np];
          const T* Arow = &Abuf[t * Np];
          V s1 = V{}, s2 = V{};
          for (int j = 0; j < nb; ++j) {
            const V Bv = vload<V>(Br + j * W);
            const V av = vload<V>(Arow + j * W);
            const V dyC = dyv * vload<V>(Cr + j * W);
            const V gv = r[j] + dyC;
            vstore(dCr + j * W, vload<V>(dCr + j * W) + dyv * vload<V>(Hn + j * W));
            vstore(dBr + j * W, vload<V>(dBr + j * W) + gv * buv);
            s1 += gv * Bv;
            // a_t g_t, carried to t - 1, as a_t r + a_t dy C: one FMA on the loop-carried chain
            // instead of an FMA and a multiply (AVX-512: the loop was bound by that chain's
            // latency; ~5% of the backward; no change on AVX2, whose two vectors are two chains)
            r[j] = av * r[j] + av * dyC;
            const V w = r[j] * vload<V>(Hp + j * W);   // g_t * a_t * h_{t-1}
            s2 += w * Ar[j];
            dA[j] += w * dtv;
          }
          vstore(s1b + t * W, s1);
          vstore(s2b + t * W, s2);
        }
        for (int j = 0; j < nb; ++j) {
          vstore(&rs[i * Np + j * W], r[j]);
          vstore(&dAs[i * Np + j * W], dA[j]);
        }
        for (int t = sp.nt; t < kChunk; ++t) { vstore(s1b + t * W, V{}); vstore(s2b + t * W, V{}); }
        row_sums(s1b, kChunk, S1b);
        row_sums(s2b, kChunk, S2b);
        // du = dt S1 + D dy; d(dt) = S2 + u S1, then through softplus; dD and d(bias) sums
        for (int t = 0; t < kChunk; t += W) {
          const V S1 = vload<V>(S1b + t);
          vstore(dub + t, vload<V>(dtb + t) * S1 + Dd * vload<V>(dyb + t));
          vstore(ddtb + t, vload<V>(S2b + t) + vload<V>(ub + t) * S1);
        }
        // (dyb, ub: zero past the chunk's end from the gathers)
        chunk_sum(dyb, ub, &dDs[i * W]);
        if (a.softplus)
          for (int t = 0; t < kChunk; t += W) vstore(ddtb + t, vload<V>(ddtb + t) * vload<V>(dspb + t));
        // ddtb is zero past the chunk's end: S1, S2 rows and ub are
        chunk_sum(ddtb, static_cast<const T*>(nullptr), &dbs[i * W]);
        if (a.cross) copy_run(&colDu[i * kChunk], dub, kChunk);
        else scatter(a.du + chan_off(a, b, g, cc), ps, sp.idx, sp.t0, sp.nt, dub, accumulate_du, a.stream);
        if (R > 0) {  // through the fused dt projection: d(dt inputs) summed over channels, d(weight)
          for (int t = sp.nt; t < kChunk; ++t) ddtb[t] = 0;
          project_dt_grad(dtsb.data(), a.Wdt + d * R, R, ddtb, bufddts.data(), &dWs[i * R * W]);
        } else {
          scatter(a.ddelta + bd * L, 1, sp.idx, sp.t0, sp.nt, ddtb, false, a.stream);
        }
      }
      if (a.cross)
        move_columns(a.du + chan_off(a, b, 0, k.c_lo), ps, sp.idx, sp.t0, sp.nt, nch, colDu.data(), false, accumulate_du);
      // this task's share of the rows' gradient for the chunk: [d(dt inputs), dB, dC]
      move_rows<false>(ddt_task ? ddt_task + gpo : nullptr, dB_task + gpo, dC_task + gpo, a.rows_ps, a.rows_fs, R, N,
                       Np, sp.idx, sp.t0, sp.nt, bufdB.data(), bufdC.data(), bufddts.data());
    }
    for (int64_t i = 0; i < nch; ++i) {
      const int64_t bd = b * a.dim + g * a.cpg + k.c_lo + i;
      std::memcpy(a.dA_part + bd * N, &dAs[i * Np], sizeof(T) * N);
      a.dD_part[bd] = lane_sum(&dDs[i * W]);
      a.dbias_part[bd] = lane_sum(&dbs[i * W]);
      for (int64_t r = 0; r < R; ++r) a.dWdt_part[bd * R + r] = lane_sum(&dWs[(i * R + r) * W]);
    }
  }
  stream_fence(a.stream);
}

#if SS_AVX512
#include "selective_scan_cpu_lanes.h"
#endif
