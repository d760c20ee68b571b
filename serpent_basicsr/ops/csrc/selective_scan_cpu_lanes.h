// The forward with channels in the SIMD lanes: AVX-512, float, 16 states, a multiple of 16 channels
// per group, mamba's plain layout in step order or SS2D's cross layout (what pick_lanes_fwd accepts).
// Included by selective_scan_cpu_kernels.h in namespace avx512 only; no include guard, no #include
// (like that header).
//
// The state-layout kernels hold one channel's 16 states in a vector, so each step's output
// y_t = sum_n h_n C_n is a sum across lanes (done 16 steps at a time by row_sums: with the per-step
// products' stores and loads about a fifth of the forward). Here a vector holds one state of W = 16
// consecutive channels of a group (they share the group's B and C): a lane group's 16 states are 16
// vectors in registers, y accumulates lane by lane and B_t, C_t enter as broadcasts from the chunk's
// (kChunk, 16) rows. Per chunk, the inputs come into (kChunk, W) lane buffers and y goes out: plain
// mode through 16 x 16 transposes of the (batch, dim, L) rows; cross mode as one vector per step (u and
// y are channels-last) and delta projected from the rows' dt inputs. Each lane does the state layout's
// arithmetic (the same decay, prologue and epilogue), so the checkpoints are the states the
// backward's recomputation (state layout) continues from.

constexpr int kLaneN = kLaneWidth;  // states: as many as lanes
static_assert(VecT<float>::lanes == kLaneWidth, "the lane-layout forward is for 16-lane float vectors");

// What the next lane group (or chunk) will read, asked for one piece per recursion step: a burst of
// prefetches per chunk, or none (the hardware prefetcher follows neither 32+ rows nor permuted step
// orders), left the loads of the inputs waiting on memory. Plain mode: W rows (row_bytes apart) of
// kChunk floats per array, one cache line of each per step. Cross mode: per step, the lines at that
// step's stored position (pos_of(idx, t0, t) * stride bytes past base) of each stream.
struct LanePrefetch {
  struct Stream {
    const char* base;
    int64_t stride;      // plain: bytes between the rows; cross: bytes per stored position
    const int32_t* idx;  // cross: the chunk's positions (null: t0 + t)
    int64_t t0;
    int nt, lines;       // cross: steps, cache lines per step
    bool write;
  };
  Stream s[4];
  int n = 0;
  bool rows = true;  // plain mode's row streams; false: cross mode's position streams
  void add(const void* base, int64_t stride, const int32_t* idx = nullptr, int64_t t0 = 0, int nt = 0, int lines = 1,
           bool write = false) {
    s[n++] = Stream{static_cast<const char*>(base), stride, idx, t0, nt, lines, write};
  }
  SS_INLINE void step(int t) const {
    constexpr int kLines = kChunk * int(sizeof(float)) / 64;  // per row and chunk
    for (int i = 0; i < n; ++i) {
      const Stream& q = s[i];
      if (rows) {
        __builtin_prefetch(q.base + (t / kLines) * q.stride + (t % kLines) * 64, 0, 3);
      } else if (t < q.nt) {
        const char* at = q.base + pos_of(q.idx, q.t0, t) * q.stride;
        for (int l = 0; l < q.lines; ++l) {
          if (q.write) __builtin_prefetch(at + 64 * l, 1, 3);
          else __builtin_prefetch(at + 64 * l, 0, 3);
        }
      }
    }
  }
};
static_assert(kChunk * sizeof(float) / 64 * kLaneWidth == kChunk, "one line per array and step covers a chunk");

// The recursion of one lane group over nt steps: h (N vectors) in and out, y_t to yl (a row of W
// lanes per step). Al: A * kDecayScale as N rows of W lanes.
template <bool kClamp>
SS_INLINE void lane_states(int nt, const float* dtl, const float* bul, const float* Bc, const float* Cc,
                           const float* Al, vf* h_io, float* yl, const LanePrefetch& pf) {
  constexpr int W = VecT<float>::lanes, N = kLaneN, K = 4;
  vf h[N];  // in locals: the compiler keeps them in registers (see fused_states)
  for (int n = 0; n < N; ++n) h[n] = h_io[n];
  for (int t = 0; t < nt; ++t) {
    pf.step(t);
    const vf dtv = vload<vf>(dtl + t * W), buv = vload<vf>(bul + t * W);
    vf acc[2] = {vf{}, vf{}};  // two chains of adds for y
#pragma GCC unroll 16  // (rolled, h would be indexed at run time: in memory)
    for (int n0 = 0; n0 < N; n0 += K) {  // K states' decays at a time (the 16 would spill)
      vf a[K];
      SS_EACH a[i] = dtv * vload<vf>(Al + (n0 + i) * W);
      vdecay_k<K, kClamp>(a);
      SS_EACH {
        h[n0 + i] = a[i] * h[n0 + i] + buv * vsplat<vf>(Bc[t * N + n0 + i]);
        acc[i & 1] += h[n0 + i] * vsplat<vf>(Cc[t * N + n0 + i]);
      }
    }
    vstore(yl + t * W, acc[0] + acc[1]);
  }
  for (int n = 0; n < N; ++n) h_io[n] = h[n];
}

// 16 x 16 float transpose in registers: c[j] = column j of the rows r[0..15]. Four rounds of 16
// two-operand shuffles (unpack, 64-bit pairs, then two of 128-bit lanes).
SS_INLINE void transpose16_regs(const vf* r, vf* c) {
  vf t[16], q[16];
  for (int i = 0; i < 8; ++i) {  // pairs of rows, within 128-bit lanes
    t[2 * i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], vi32{0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29});
    t[2 * i + 1] =
        __builtin_shuffle(r[2 * i], r[2 * i + 1], vi32{2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31});
  }
  for (int h = 0; h < 4; ++h)  // rows 4h .. 4h + 3: lane k of q[4h + j] is their column 4k + j
    for (int i = 0; i < 2; ++i) {
      q[4 * h + 2 * i] = __builtin_shuffle(t[4 * h + i], t[4 * h + 2 + i],
                                           vi32{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29});
      q[4 * h + 2 * i + 1] = __builtin_shuffle(t[4 * h + i], t[4 * h + 2 + i],
                                               vi32{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31});
    }
  for (int j = 0; j < 4; ++j) {  // lane k of the four row blocks: columns j, 4 + j, 8 + j, 12 + j
    const vi32 lo{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const vi32 hi{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const vi32 even{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const vi32 odd{4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    const vf u0 = __builtin_shuffle(q[j], q[4 + j], lo), u1 = __builtin_shuffle(q[j], q[4 + j], hi);
    const vf v0 = __builtin_shuffle(q[8 + j], q[12 + j], lo), v1 = __builtin_shuffle(q[8 + j], q[12 + j], hi);
    c[j] = __builtin_shuffle(u0, v0, even);
    c[4 + j] = __builtin_shuffle(u0, v0, odd);
    c[8 + j] = __builtin_shuffle(u1, v1, even);
    c[12 + j] = __builtin_shuffle(u1, v1, odd);
  }
}

// Rows (W channels, fs apart) of a chunk to a (kChunk, W) lane buffer (to_lanes; rows past nt zero)
// or back, 16 steps at a time, the last nt % 16 by copy_feature_major.
SS_INLINE void move_rows(float* rows, int64_t fs, int nt, float* lanes, bool to_lanes) {
  constexpr int W = VecT<float>::lanes;
  static_assert(W == 16, "16 x 16 transposes");
  const int t16 = nt / W * W;
  for (int t = 0; t < t16; t += W) {
    vf r[W], c[W];
    if (to_lanes) {
      for (int i = 0; i < W; ++i) r[i] = vload<vf>(rows + i * fs + t);
      transpose16_regs(r, c);
      for (int i = 0; i < W; ++i) vstore(lanes + (t + i) * W, c[i]);
    } else {
      for (int i = 0; i < W; ++i) r[i] = vload<vf>(lanes + (t + i) * W);
      transpose16_regs(r, c);
      for (int i = 0; i < W; ++i) vstore(rows + i * fs + t, c[i]);
    }
  }
  copy_feature_major(lanes + t16 * W, rows + t16, fs, W, W, nt - t16, to_lanes);
  if (to_lanes) std::fill(lanes + nt * W, lanes + kChunk * W, 0.0f);
}
SS_INLINE void rows_to_lanes(const float* src, int64_t fs, int nt, float* dst) {
  move_rows(const_cast<float*>(src), fs, nt, dst, true);
}

// Cross mode: the chunk's steps of W consecutive channels of a channels-last (.., L, ps) tensor (one
// vector per step, at its stored position) into a lane buffer, rows past nt zero; and back, y written
// or (add: a later group's share of the merged y) added.
SS_INLINE void columns_to_lanes(const float* base, int64_t ps, const int32_t* idx, int64_t t0, int nt, float* dst) {
  constexpr int W = VecT<float>::lanes;
  for (int t = 0; t < nt; ++t) vstore(dst + t * W, vload<vf>(base + pos_of(idx, t0, t) * ps));
  std::fill(dst + nt * W, dst + kChunk * W, 0.0f);
}
SS_INLINE void lanes_to_columns(float* base, int64_t ps, const int32_t* idx, int64_t t0, int nt, const float* src,
                                bool add) {
  constexpr int W = VecT<float>::lanes;
  for (int t = 0; t < nt; ++t) {
    float* p = base + pos_of(idx, t0, t) * ps;
    vstore(p, add ? vload<vf>(p) + vload<vf>(src + t * W) : vload<vf>(src + t * W));
  }
}

// Cross mode: delta of a lane group over the chunk from the rows' R dt inputs (dts: (R, kChunk), zero
// past nt), the state layout's project_dt with the W channels' weights as lanes (wl: R rows of W).
SS_INLINE void project_dt_lanes(const float* dts, const float* wl, int64_t R, float* xl) {
  constexpr int W = VecT<float>::lanes;
  for (int t = 0; t < kChunk; ++t) {
    vf acc = vf{};
    for (int64_t r = 0; r < R; ++r) acc += vload<vf>(wl + r * W) * vsplat<vf>(dts[r * kChunk + t]);
    vstore(xl + t * W, acc);
  }
}

// Plain mode: u, delta, z, y are (batch, dim, L) rows (transposed per chunk); cross mode (SS2D): u and
// y channels-last (batch, L, cpg), u shared by the groups and y summed over them (read as columns of
// W channels at each step's stored position), delta from the rows' dt inputs, no z.
SS_INLINE void fwd_lanes_task(const Args<float>& a, int64_t task) {
  typedef float T;
  constexpr int W = VecT<T>::lanes, N = kLaneN;
  const Block k = block_of(a, task);  // (a.blk_align = W: blocks are whole lane groups)
  const int64_t ngr = (k.c_hi - k.c_lo) / W, b = k.b, L = a.L, nck = a.nchunks;
  if (ngr <= 0) return;

  const int64_t R = a.R, ps = chan_ps(a);
  Buf<T> bufB(kChunk * N, T(0)), bufC(kChunk * N, T(0)), dtsb(kChunk * R + 1);
  Buf<T> Al(ngr * N * W), amax(ngr * W), hs(ngr * N * W), Wl(ngr * R * W + 1);
  // (kChunk, W) lane buffers, four so that they and the prefetched rows fit L1 with the B / C rows:
  // dt replaces delta in place, then z and the y rows take its place; sigmoid(z) takes dt * u's
  Buf<T> ul(kChunk * W), dtl(kChunk * W), bul(kChunk * W), yl(kChunk * W);
  T* const xl = dtl.data();
  T* const zl = dtl.data();
  T* const yrows = dtl.data();
  T* const sgl = bul.data();
  for (int64_t g = k.g_lo; g < k.g_hi; ++g) {
    const int64_t d_lo = g * a.cpg + k.c_lo;  // the block's first channel
    for (int64_t j = 0; j < ngr; ++j)
      for (int w = 0; w < W; ++w) {
        T m = 0;
        for (int n = 0; n < N; ++n) {
          const T v = a.A[(d_lo + j * W + w) * N + n] * kDecayScale<T>;
          Al[(j * N + n) * W + w] = v;
          m = std::max(m, std::abs(v));
        }
        amax[j * W + w] = m;
      }
    for (int64_t j = 0; j < ngr * R; ++j)  // cross: the dt weights, R rows of W lanes per lane group
      for (int w = 0; w < W; ++w) Wl[j * W + w] = a.Wdt[(d_lo + j / R * W + w) * R + j % R];
    std::fill(hs.begin(), hs.end(), T(0));
    const int64_t goff = b * a.rows_bs + g * a.rows_gs;
    const int32_t* perm = a.perm ? a.perm + g * L : nullptr;  // (cross mode only)
    for (int64_t c = 0; c < nck; ++c) {
      const ChunkSpan sp = chunk_span(perm, L, c);
      const ChunkSpan next = c + 1 < nck ? chunk_span(perm, L, c + 1) : sp;  // (cross mode's prefetches)
      load_rows(a, goff, N, sp, bufB.data(), bufC.data(), dtsb.data());
      for (int64_t j = 0; j < ngr; ++j) {
        const int64_t d0 = d_lo + j * W, bd = b * a.dim + d0;  // the lane group's first channel / row
        LanePrefetch pf;
        if (a.cross) {
          // the next lane group's u and y columns (this chunk's steps; after the last group, the next
          // chunk's first group), and with the first group the next chunk's rows
          pf.rows = false;
          const bool last = j + 1 == ngr;
          const ChunkSpan& nx = last ? next : sp;
          if (!last || c + 1 < nck) {
            const int64_t c1 = last ? k.c_lo : k.c_lo + (j + 1) * W, pb = sizeof(T) * ps;
            pf.add(a.u + chan_off(a, b, g, c1), pb, nx.idx, nx.t0, nx.nt);
            pf.add(a.y + chan_off(a, b, g, c1), pb, nx.idx, nx.t0, nx.nt, 1, true);
          }
          if (j == 0 && c + 1 < nck) {
            const T* rows = a.rows_dt ? a.rows_dt : a.rows_B;
            const int row_lines = int((sizeof(T) * (R + 2 * N) + 63) / 64);
            pf.add(rows + goff, sizeof(T) * a.rows_ps, next.idx, next.t0, next.nt, row_lines);
          }
          columns_to_lanes(a.u + chan_off(a, b, g, k.c_lo + j * W), ps, sp.idx, sp.t0, sp.nt, ul.data());
          project_dt_lanes(dtsb.data(), &Wl[j * R * W], R, xl);
        } else {
          // the next lane group's rows: this chunk's next group, or the next chunk's first
          const int64_t nbd = j + 1 < ngr ? bd + W : b * a.dim + d_lo, nt0 = j + 1 < ngr ? sp.t0 : sp.t0 + kChunk;
          if (j + 1 < ngr || c + 1 < nck)
            for (const T* arr : {a.u, a.delta, a.z})
              if (arr) pf.add(arr + nbd * L + nt0, int64_t(sizeof(T)) * L);
          rows_to_lanes(a.u + bd * L + sp.t0, L, sp.nt, ul.data());
          rows_to_lanes(a.delta + bd * L + sp.t0, L, sp.nt, xl);
        }
        prologue_run(a, a.bias ? vload<vf>(a.bias + d0) : vf{}, kChunk * W, dtl.data(), ul.data(), bul.data(), xl);
        vf h[N];
        for (int n = 0; n < N; ++n) h[n] = vload<vf>(&hs[(j * N + n) * W]);
        if (a.ckpt)  // the chunk's start state of each channel: (batch, dim, nchunks, N)
          copy_feature_major(&hs[j * N * W], a.ckpt + (bd * nck + c) * N, nck * N, W, W, N, false);
        const T* Aj = &Al[j * N * W];
        if (decay_args_in_range(dtl.data(), vload<vf>(&amax[j * W]), kChunk * W))
          lane_states<false>(sp.nt, dtl.data(), bul.data(), bufB.data(), bufC.data(), Aj, h, yl.data(), pf);
        else
          lane_states<true>(sp.nt, dtl.data(), bul.data(), bufB.data(), bufC.data(), Aj, h, yl.data(), pf);
        for (int n = 0; n < N; ++n) vstore(&hs[(j * N + n) * W], h[n]);
        if (a.z) rows_to_lanes(a.z + bd * L + sp.t0, L, sp.nt, zl);
        skip_and_gate(a, a.D ? vload<vf>(a.D + d0) : vf{}, kChunk * W, yl.data(), ul.data(),
                      a.z ? zl : nullptr, sgl);
        if (a.cross) {
          lanes_to_columns(a.y + chan_off(a, b, g, k.c_lo + j * W), ps, sp.idx, sp.t0, sp.nt, yl.data(), g > 0);
        } else {
          move_rows(yrows, kChunk, sp.nt, yl.data(), false);  // back to rows
          for (int w = 0; w < W; ++w)
            scatter(a.y + (bd + w) * L, 1, nullptr, sp.t0, sp.nt, yrows + w * kChunk, false, a.stream);
        }
      }
    }
    if (a.last)
      for (int64_t j = 0; j < ngr; ++j)
        copy_feature_major(&hs[j * N * W], a.last + (b * a.dim + d_lo + j * W) * N, N, W, W, N, false);
  }
  stream_fence(a.stream);
}
