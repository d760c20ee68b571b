// The CPU scan kernels alone, without torch: time them, or check them against a plain float64 loop.
//
//   g++ -O3 -std=c++20 -DTIMING_ONLY -I serpent_basicsr/ops/csrc bench/scan/kernel_harness.cpp -o /tmp/kh
//   /tmp/kh [--isa avx512|avx2|generic] [L] [reps]
//                          # time forward (with checkpoints; the state layout, then with AVX-512 the
//                          # lane layout) and backward, one thread, best of reps
//   g++ -O1 -std=c++20 -I serpent_basicsr/ops/csrc bench/scan/kernel_harness.cpp -o /tmp/khc
//   /tmp/khc --check       # small shapes (every state-size path) against the float64 loop
//
// -DTIMING_ONLY builds only the kernels the timing runs (float, 16 states, each instruction set):
// seconds instead of the extension's minutes, so a change to selective_scan_cpu_kernels.h can be timed
// at once: build the old and the new header into two binaries and run them alternately
// (single runs on a shared machine move by 10-30%; compare the best of several). Timing shape: issue
// 4's (batch 1, 4 directions x 96 channels, d_state 16), mamba's plain layout, softplus, D and bias,
// values like bench_scan.py's. Times are also given per (channel, step) in ns.
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <new>
#include <sys/mman.h>

#include "selective_scan_cpu_tasks.h"

namespace {

double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

struct Rng {  // small deterministic generator (uniform, normal)
  uint64_t s = 1;
  double uniform() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return ((s >> 11) + 0.5) / 9007199254740992.0;
  }
  double normal() { return std::sqrt(-2 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
};

// The problem's arrays in 2 MB-aligned blocks advised to use transparent huge pages, as torch's
// tensors are under serpent_basicsr's memory defaults (THP_MEM_ALLOC_ENABLE): with 4 KB pages the
// TLB misses of the per-channel slices (L floats apart) made the backward ~35% slower here than in
// the extension.
template <typename T> struct HugePageAlloc {
  typedef T value_type;
  HugePageAlloc() = default;
  template <typename U> HugePageAlloc(const HugePageAlloc<U>&) {}
  T* allocate(size_t n) {
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t bytes = (n * sizeof(T) + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, bytes);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the pages are plain ones
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U> bool operator==(const HugePageAlloc<U>&) const { return true; }
  template <typename U> bool operator!=(const HugePageAlloc<U>&) const { return false; }
};
template <typename T> using HugeVec = std::vector<T, HugePageAlloc<T>>;

// One problem in mamba's plain layout: u, delta, y (dim, L); A (dim, N); B, C (G, N, L); batch 1.
template <typename T> struct Problem {
  int64_t G, cpg, N, L, dim, Np, nchunks;
  HugeVec<T> u, delta, A, B, C, D, bias, dout;
  HugeVec<T> y, ckpt, du, ddelta, dA, dD, dbias, dB, dC;
  Problem(int64_t G_, int64_t cpg_, int64_t N_, int64_t L_, uint64_t seed)
      : G(G_), cpg(cpg_), N(N_), L(L_), dim(G_ * cpg_), Np((N_ + VecT<T>::lanes - 1) / VecT<T>::lanes * VecT<T>::lanes),
        nchunks((L_ + kChunk - 1) / kChunk) {
    Rng r{seed};
    auto fill = [&](HugeVec<T>& v, size_t n, double scale, double shift) {
      v.resize(n);
      for (auto& x : v) x = T(scale * r.normal() + shift);
    };
    fill(u, dim * L, 1, 0);
    fill(delta, dim * L, 1, -4.6);  // softplus(delta + bias) ~ 0.01, as in bench_scan.py
    A.resize(dim * N);
    for (int64_t d = 0; d < dim; ++d)
      for (int64_t n = 0; n < N; ++n) A[d * N + n] = T(-(n + 1) * (0.5 + r.uniform()));
    fill(B, G * N * L, 1, 0);
    fill(C, G * N * L, 1, 0);
    fill(D, dim, 0.5, 1);
    fill(bias, dim, 0.1, 0);
    fill(dout, dim * L, 1, 0);
    y.resize(dim * L); ckpt.resize(dim * nchunks * Np); du.resize(dim * L); ddelta.resize(dim * L);
    dA.resize(dim * N); dD.resize(dim); dbias.resize(dim); dB.resize(G * N * L); dC.resize(G * N * L);
  }
  Args<T> args() {
    Args<T> a;
    std::memset(&a, 0, sizeof(a));
    a.u = u.data(); a.delta = delta.data(); a.A = A.data(); a.rows_B = B.data(); a.rows_C = C.data();
    a.D = D.data(); a.bias = bias.data(); a.y = y.data(); a.ckpt = ckpt.data();
    a.dout = dout.data(); a.du = du.data(); a.ddelta = ddelta.data(); a.dA_part = dA.data();
    a.dD_part = dD.data(); a.dbias_part = dbias.data(); a.dB_part = dB.data(); a.dC_part = dC.data();
    a.rows_bs = G * N * L; a.rows_gs = N * L; a.rows_ps = 1; a.rows_fs = L; a.part_size = G * N * L;
    a.batch = 1; a.dim = dim; a.L = L; a.N = N; a.Np = Np; a.G = G; a.cpg = cpg; a.P = 1;
    a.nchunks = nchunks; a.softplus = true; a.stream = stream_outputs(a);
    return a;
  }
};

// The widest instruction set to use (--isa; capped at what the CPU has, as in the extension).
Isa g_want = Isa::avx512;

// The kernels for this machine and state size (as the extension picks them; 0: runtime-sized).
// With lanes, the forward takes the lane-layout kernel where it applies (returns false where not).
template <typename T> bool run(const Args<T>& a, bool fwd, bool lanes = false) {
  if (lanes) {
    const TaskFn<T> fn = fwd ? pick_lanes_fwd(a, best_isa(g_want)) : nullptr;
    if (!fn) return false;
    Args<T> la = a;
    la.blk_align = kLaneWidth;
    fn(la, 0);
    return true;
  }
  const Isa isa = isa_for<T>(best_isa(g_want), a.Np);
#ifdef TIMING_ONLY
  if constexpr (std::is_same<T, float>::value) {
    if (a.Np == 16) {
      if (isa == Isa::avx512) (fwd ? fwd_avx512<1> : bwd_avx512<1>)(a, 0);
      else if (isa == Isa::avx2) (fwd ? fwd_avx2<T, 2> : bwd_avx2<T, 2>)(a, 0);
      else (fwd ? fwd_generic<T, 2> : bwd_generic<T, 2>)(a, 0);
      return true;
    }
  }
  std::fprintf(stderr, "built with -DTIMING_ONLY: float with 9-16 states only\n");
  std::exit(2);
#else
  pick_task<T>(fwd, a.Np, isa)(a, 0);
  return true;
#endif
}

// The float64 loop: forward, then the adjoint recursion backwards in time.
struct Reference {
  std::vector<double> y, du, ddelta, dA, dD, dbias, dB, dC;
};
template <typename T> Reference reference(const Problem<T>& p) {
  const int64_t L = p.L, N = p.N;
  Reference r;
  r.y.assign(p.dim * L, 0); r.du.assign(p.dim * L, 0); r.ddelta.assign(p.dim * L, 0);
  r.dA.assign(p.dim * N, 0); r.dD.assign(p.dim, 0); r.dbias.assign(p.dim, 0);
  r.dB.assign(p.G * N * L, 0); r.dC.assign(p.G * N * L, 0);
  std::vector<double> dt(L), h((L + 1) * N), g(N);
  for (int64_t d = 0; d < p.dim; ++d) {
    const int64_t grp = d / p.cpg;
    auto Bv = [&](int64_t n, int64_t t) { return double(p.B[(grp * N + n) * L + t]); };
    auto Cv = [&](int64_t n, int64_t t) { return double(p.C[(grp * N + n) * L + t]); };
    std::fill(h.begin(), h.end(), 0.0);
    for (int64_t t = 0; t < L; ++t) {
      const double x = double(p.delta[d * L + t]) + double(p.bias[d]);
      dt[t] = x > 20 ? x : std::log1p(std::exp(x));
      const double u = p.u[d * L + t];
      double acc = double(p.D[d]) * u;
      for (int64_t n = 0; n < N; ++n) {
        h[(t + 1) * N + n] = std::exp(dt[t] * double(p.A[d * N + n])) * h[t * N + n] + dt[t] * u * Bv(n, t);
        acc += Cv(n, t) * h[(t + 1) * N + n];
      }
      r.y[d * L + t] = acc;
    }
    std::fill(g.begin(), g.end(), 0.0);  // g: gradient reaching h_{t} from step t + 1
    for (int64_t t = L - 1; t >= 0; --t) {
      const double dy = p.dout[d * L + t], u = p.u[d * L + t];
      double ddt = 0, du = double(p.D[d]) * dy;
      r.dD[d] += dy * u;
      for (int64_t n = 0; n < N; ++n) {
        const double An = p.A[d * N + n], a = std::exp(dt[t] * An);
        const double gn = g[n] + dy * Cv(n, t);  // d loss / d h_t
        r.dC[(grp * N + n) * L + t] += dy * h[(t + 1) * N + n];
        r.dB[(grp * N + n) * L + t] += gn * dt[t] * u;
        du += gn * dt[t] * Bv(n, t);
        ddt += gn * (An * a * h[t * N + n] + u * Bv(n, t));
        r.dA[d * N + n] += gn * dt[t] * a * h[t * N + n];
        g[n] = a * gn;
      }
      const double x = double(p.delta[d * L + t]) + double(p.bias[d]);
      const double dx = ddt * (x > 20 ? 1.0 : 1.0 / (1.0 + std::exp(-x)));
      r.du[d * L + t] = du;
      r.ddelta[d * L + t] = dx;
      r.dbias[d] += dx;
    }
  }
  return r;
}

template <typename T> double rel_err(const HugeVec<T>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::abs(double(got[i]) - want[i]));
    den = std::max(den, std::abs(want[i]));
  }
  return num / std::max(den, 1e-300);
}

// The kernels on one problem against the float64 loop (lanes: the forward in the lane layout, then
// the backward from its checkpoints; false where that layout does not apply).
template <typename T> bool check(int64_t G, int64_t cpg, int64_t N, int64_t L, double tol, bool lanes = false) {
  Problem<T> p(G, cpg, N, L, 7 + N + L);
  const Args<T> a = p.args();
  if (!run(a, true, lanes)) return true;
  run(a, false);
  const Reference r = reference(p);
  const std::pair<const char*, double> errs[] = {
      {"y", rel_err(p.y, r.y)}, {"du", rel_err(p.du, r.du)}, {"ddelta", rel_err(p.ddelta, r.ddelta)},
      {"dA", rel_err(p.dA, r.dA)}, {"dB", rel_err(p.dB, r.dB)}, {"dC", rel_err(p.dC, r.dC)},
      {"dD", rel_err(p.dD, r.dD)}, {"dbias", rel_err(p.dbias, r.dbias)}};
  bool ok = true;
  std::printf("%-6s G %ld cpg %2ld N %2ld L %4ld%s:", sizeof(T) == 4 ? "float" : "double", long(G), long(cpg),
              long(N), long(L), lanes ? " lanes" : "");
  for (const auto& e : errs) {
    std::printf(" %s %.1e", e.first, e.second);
    ok = ok && e.second <= tol;  // (NaN fails)
  }
  std::printf("%s\n", ok ? "" : "  FAILED");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  // --isa NAME (first): the widest instruction set to use (default: the best this CPU has)
  if (argc > 2 && std::string(argv[1]) == "--isa") {
    if (!parse_isa(argv[2], &g_want)) {
      std::fprintf(stderr, "--isa must be avx512, avx2 or generic\n");
      return 2;
    }
    argc -= 2;
    argv += 2;
  }
  if (argc > 1 && std::string(argv[1]) == "--check") {
#ifdef TIMING_ONLY
    std::fprintf(stderr, "built with -DTIMING_ONLY: build without it for --check\n");
    return 2;
#else
    bool ok = true;
    std::printf("isa %s (float with 16 or 32 states), %s (other states, double)\n",
                isa_label(isa_for<float>(best_isa(g_want), 16)), isa_label(isa_for<double>(best_isa(g_want), 16)));
    // 1-4 state vectors of 8 floats (compile-time paths), 40 (runtime-sized); 16, 32, 48, 64 and 80
    // fill 1-5 AVX-512 vectors (compile-time 1-4 and runtime-sized)
    for (int64_t N : {1, 5, 16, 32, 40, 48, 64, 80})
      for (int64_t L : {1, 63, 150}) {
        ok = check<float>(2, 3, N, L, 2e-4) && ok;
        ok = check<double>(2, 3, N, L, 1e-10) && ok;
      }
    // the lane-layout forward (AVX-512, 16 states, whole 16-channel groups: one and two per group)
    for (int64_t cpg : {16, 32})
      for (int64_t L : {1, 63, 64, 150}) ok = check<float>(2, cpg, 16, L, 2e-4, true) && ok;
    std::printf("%s\n", ok ? "check ok" : "check FAILED");
    return ok ? 0 : 1;
#endif
  }
  const int64_t L = argc > 1 ? std::atol(argv[1]) : 4096;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  if (L < 1 || reps < 1) {
    std::fprintf(stderr, "usage: %s [--isa avx512|avx2|generic] [L >= 1] [reps >= 1] | --check\n", argv[0]);
    return 2;
  }
  std::printf("isa %s\n", isa_label(isa_for<float>(best_isa(g_want), 16)));
  Problem<float> p(4, 96, 16, L, 1);
  const Args<float> a = p.args();
  const double steps = double(p.dim) * L;
  // forward (state layout), forward (lane layout, where it applies), backward
  for (const int which : {0, 1, 2}) {
    const bool fwd = which < 2, lanes = which == 1;
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const double t0 = now();
      if (!run(a, fwd, lanes)) break;
      best = std::min(best, now() - t0);
    }
    if (best == 1e30) continue;
    std::printf("%s L %ld: best of %d %.3f ms, %.3f ns per (channel, step)\n",
                which == 0 ? "forward (states)" : which == 1 ? "forward (lanes) " : "backward        ", long(L), reps,
                best * 1e3, best / steps * 1e9);
  }
  return 0;
}
