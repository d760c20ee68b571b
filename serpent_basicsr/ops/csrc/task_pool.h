// The scan's own worker threads: a cheaper handoff than OpenMP's under OMP_WAIT_POLICY=PASSIVE.
//
// Why: with the passive policy (our default: spinning OpenMP threads slowed training steps several
// times when another process wanted a core) a parallel region starts by waking a sleeping worker
// with a futex, and that worker ran ~50 us later on this VM; the caller, done with its share first,
// slept at the join barrier and was woken in turn (another 10-36 us). A sub-millisecond scan (the
// forward at L = 1,024 is ~0.5 ms) lost ~20% to the two hand-offs.
// How: the caller posts a job (a task function and a task count), wakes the workers with one futex
// call unless they are still polling, and starts on the tasks at once; every thread claims tasks
// from one shared counter, so a worker that wakes late just takes fewer. The caller then spins
// (bounded, then sleeps) until every claimed task is done: it never waits for a worker that has not
// started. A worker polls for the next job for a short window (set_spin_us, 100 us by default) and
// then sleeps: back-to-back calls skip the wake-up, and no thread spins longer than that outside a call.
// A late worker cannot run a task of another job: one 64-bit word holds the job's number, its task
// count and the next task, and a claim is a compare-and-swap of that word (with the count kept
// apart, a worker that read the old job's word and the new job's count claimed a task twice).
// Tests: tests/task_pool_check.cpp (stress, two callers, exceptions, fork), tests/test_task_pool.py.
#pragma once

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <time.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

namespace serpent_tasks {

inline void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
inline void futex_wake(std::atomic<uint32_t>* word, int count) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}
inline void cpu_relax() { __builtin_ia32_pause(); }

class TaskPool {
 public:
  typedef void (*Fn)(const void* ctx, int64_t task);
  static constexpr int kMaxWorkers = 255;
  static constexpr int kDefaultSpinUs = 100;  // SERPENT_SCAN_SPIN_US's default

  static TaskPool& get() {
    static TaskPool* pool = new TaskPool();  // never destroyed: its threads are detached
    return *pool;
  }

  static constexpr uint32_t kMaxTasks = 0xffff;

  // Runs fn(ctx, t) for t in [0, ntask) on the caller and up to `workers` pool threads. Returns false
  // (running nothing) when another thread is using the pool or ntask > kMaxTasks; the caller then
  // runs the tasks its own way. A task's exception is rethrown here once every task has ended (as
  // at::parallel_for does).
  bool run(Fn fn, const void* ctx, uint32_t ntask, int workers) {
    if (ntask == 0) return true;
    if (ntask > kMaxTasks) return false;
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    spawn(workers);
    fn_.store(fn, std::memory_order_relaxed);
    ctx_.store(ctx, std::memory_order_relaxed);
    workers_.store(uint32_t(workers), std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    const uint64_t job = (claim_.load(std::memory_order_relaxed) >> 32) + 1;
    claim_.store(job << 32 | uint64_t(ntask) << 16, std::memory_order_seq_cst);  // publishes the fields above
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    // workers still in their spin window see the new epoch without a wake-up (a futex wake cost the
    // caller 13-26 us here); a worker that left it after this load sees the epoch before sleeping
    if (spinning_.load(std::memory_order_seq_cst) < spawned_) futex_wake(&epoch_, spawned_);
    work(job);
    // every task is claimed; wait for the claimed ones still running: poll for the spin window (a
    // worker's last task ends within a task's time of ours), then sleep (a preempted worker then
    // gets this core)
    poll([&] { return done_.load(std::memory_order_acquire) >= ntask; });
    for (uint32_t d; (d = done_.load(std::memory_order_acquire)) < ntask;) {
      sleeping_.store(1, std::memory_order_seq_cst);
      if (done_.load(std::memory_order_seq_cst) == d) futex_wait(&done_, d);
      sleeping_.store(0, std::memory_order_relaxed);
    }
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return true;
  }

  // Pool threads started so far (the fork handler forgets them in a child process).
  int threads() const { return spawned_; }

  // How long a worker keeps polling for the next job after one ends before it sleeps, and the caller
  // for the workers' last tasks (0: sleep at once). Back-to-back calls then skip the wake-up; a call
  // after a longer gap pays it.
  void set_spin_us(int us) { spin_ns_.store(int64_t(us < 0 ? 0 : us) * 1000, std::memory_order_relaxed); }
  int spin_us() const { return int(spin_ns_.load(std::memory_order_relaxed) / 1000); }

 private:
  // a child process has none of the parent's threads: start afresh there
  TaskPool() {
    pthread_atfork(nullptr, nullptr, [] {
      get().spawned_ = 0;
      get().spinning_.store(0);
    });
  }

  // (a thread that cannot be started, e.g. at a process's thread limit, is left out: the threads that
  // exist, or the caller alone, run every task)
  void spawn(int workers) {
    if (workers > kMaxWorkers) workers = kMaxWorkers;
    for (; spawned_ < workers; ++spawned_) {
      const uint32_t index = uint32_t(spawned_);
      try {
        std::thread([this, index] { loop(index); }).detach();
      } catch (const std::system_error&) {
        return;
      }
    }
  }

  static int64_t now_ns() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
  }

  // Spins until ready() or the spin window has passed (the clock read every 64 pauses); ready()'s answer.
  template <typename Ready> bool poll(Ready ready) const {
    const int64_t until = now_ns() + spin_ns_.load(std::memory_order_relaxed);
    for (int i = 0; !ready(); ++i) {
      if ((i & 63) == 0 && now_ns() >= until) return false;
      cpu_relax();
    }
    return true;
  }

  // Claims and runs tasks of job `job` until none is left (or the job is over).
  void work(uint64_t job) {
    for (;;) {
      uint64_t c = claim_.load(std::memory_order_seq_cst);
      if ((c >> 32) != job) return;
      const uint32_t t = uint32_t(c & 0xffff), ntask = uint32_t(c >> 16 & 0xffff);
      if (t >= ntask) return;
      // success: task t was unclaimed, so the job (and the fields read here) cannot end before it
      if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_seq_cst)) continue;
      try {
        fn_.load(std::memory_order_relaxed)(ctx_.load(std::memory_order_relaxed), int64_t(t));
      } catch (...) {
        std::lock_guard<std::mutex> g(error_lock_);
        if (!error_) error_ = std::current_exception();
      }
      if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == ntask && sleeping_.load(std::memory_order_seq_cst))
        futex_wake(&done_, 1);
    }
  }

  void loop(uint32_t index) {
    uint32_t seen = epoch_.load(std::memory_order_seq_cst);
    for (;;) {
      // wait for the next job: poll for the spin window, then sleep
      spinning_.fetch_add(1, std::memory_order_seq_cst);
      poll([&] { return epoch_.load(std::memory_order_acquire) != seen; });
      spinning_.fetch_sub(1, std::memory_order_seq_cst);
      uint32_t e;
      while ((e = epoch_.load(std::memory_order_seq_cst)) == seen) futex_wait(&epoch_, seen);
      seen = e;
      // a job for fewer threads than the pool has (torch.set_num_threads lowered) leaves the rest out
      if (index < workers_.load(std::memory_order_relaxed)) work(claim_.load(std::memory_order_seq_cst) >> 32);
    }
  }

  std::mutex busy_;
  int spawned_ = 0;
  // the current job (atomics: a late worker may read them while the next job is posted; its claim
  // then fails)
  std::atomic<Fn> fn_{nullptr};
  std::atomic<const void*> ctx_{nullptr};
  std::atomic<uint32_t> workers_{0};  // pool threads the job may use
  std::atomic<uint64_t> claim_{0};  // job number << 32 | task count << 16 | next task
  std::atomic<uint32_t> epoch_{0};  // futex word the workers sleep on: bumped per job
  std::mutex error_lock_;
  std::exception_ptr error_;  // the job's first exception (read by the caller after every task ended)
  std::atomic<uint32_t> done_{0};   // tasks finished in the current job; the caller's futex word
  std::atomic<uint32_t> sleeping_{0};  // the caller sleeps on done_
  std::atomic<int> spinning_{0};       // workers in their spin window
  std::atomic<int64_t> spin_ns_{int64_t(kDefaultSpinUs) * 1000};
};

}  // namespace serpent_tasks
