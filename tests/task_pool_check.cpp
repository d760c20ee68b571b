// Stress check of serpent_basicsr/ops/csrc/task_pool.h (built and run by tests/test_task_pool.py):
// every task of every job runs exactly once and only while its job's run() is in progress, with
// workers that are spinning, asleep or late; two threads calling at once; a forked child.
//   g++ -O1 -std=c++20 -I serpent_basicsr/ops/csrc tests/task_pool_check.cpp -o /tmp/tpc && /tmp/tpc
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

#include "task_pool.h"

namespace {

constexpr int kMaxTasks = 64;

struct Job {
  int64_t id;
  std::atomic<int> runs[kMaxTasks];
  int sleep_us;  // every third task sleeps this long (a late worker finds the job over)
};

std::atomic<int64_t> g_live_job{-1};  // the job whose run() is in progress (one caller at a time)
std::atomic<int> g_errors{0};

void task(const void* ctx, int64_t t) {
  const Job* job = static_cast<const Job*>(ctx);
  if (g_live_job.load() != job->id) g_errors.fetch_add(1);  // ran outside its run()
  if (job->sleep_us && t % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(job->sleep_us));
  const_cast<Job*>(job)->runs[t].fetch_add(1);
}

// `jobs` jobs of random sizes on up to `max_workers` pool threads; false on the first error.
bool stress(int jobs, int spin_us, int max_workers, unsigned seed) {
  auto& pool = serpent_tasks::TaskPool::get();
  pool.set_spin_us(spin_us);
  std::mt19937 rng(seed);
  for (int j = 0; j < jobs; ++j) {
    Job job;
    job.id = j;
    const int ntask = 1 + int(rng() % kMaxTasks);
    job.sleep_us = rng() % 4 == 0 ? int(rng() % 50) : 0;
    for (auto& r : job.runs) r.store(0);
    g_live_job.store(j);
    if (!pool.run(task, &job, uint32_t(ntask), 1 + int(rng() % max_workers))) {
      std::printf("run refused with no other caller (job %d)\n", j);
      return false;
    }
    g_live_job.store(-1);
    for (int t = 0; t < kMaxTasks; ++t) {
      if (job.runs[t].load() != (t < ntask ? 1 : 0)) {
        std::printf("spin %d job %d: task %d of %d ran %d times\n", spin_us, j, t, ntask, job.runs[t].load());
        return false;
      }
    }
    if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));  // workers asleep
  }
  if (g_errors.load()) {
    std::printf("spin %d: %d tasks ran outside their job's run()\n", spin_us, g_errors.load());
    return false;
  }
  std::printf("spin %d us, up to %d workers: %d jobs ok (pool threads %d)\n", spin_us, max_workers, jobs,
              pool.threads());
  return true;
}

// Two callers at once: one gets the pool, the other is refused (and runs its tasks itself).
bool two_callers() {
  auto& pool = serpent_tasks::TaskPool::get();
  std::atomic<int> refused{0}, total{0};
  auto caller = [&] {
    for (int j = 0; j < 2000; ++j) {
      struct Ctx { std::atomic<int>* total; } ctx{&total};
      auto fn = [](const void* c, int64_t) { static_cast<const Ctx*>(c)->total->fetch_add(1); };
      if (!pool.run(fn, &ctx, 8, 1)) {
        refused.fetch_add(1);
        for (int t = 0; t < 8; ++t) fn(&ctx, t);
      }
    }
  };
  std::thread a(caller), b(caller);
  a.join();
  b.join();
  std::printf("two callers: %d tasks (want 32000), %d calls refused the pool\n", total.load(), refused.load());
  return total.load() == 32000;
}

// A task's exception reaches the caller after every task has ended (the pool still works after it).
bool exceptions() {
  auto& pool = serpent_tasks::TaskPool::get();
  std::atomic<int> ran{0};
  struct Ctx { std::atomic<int>* ran; } ctx{&ran};
  auto fn = [](const void* c, int64_t t) {
    static_cast<const Ctx*>(c)->ran->fetch_add(1);
    if (t == 5) throw std::runtime_error("task 5 failed");
  };
  bool caught = false;
  try {
    pool.run(fn, &ctx, 12, 2);
  } catch (const std::runtime_error& e) {
    caught = std::string(e.what()) == "task 5 failed";
  }
  const bool ok = caught && ran.load() == 12;
  std::printf("exception: %s (%d tasks ran)\n", ok ? "rethrown to the caller" : "FAILED", ran.load());
  return ok && stress(100, 10, 2, 9);
}

// A forked child has none of the pool's threads: its calls still run every task, and do not hang.
bool forked_child() {
  std::fflush(stdout);  // (else the child's copy of the buffer prints twice)
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(60);
    g_errors.store(0);
    const bool ok = stress(300, 20, 2, 7);
    std::fflush(stdout);
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::printf("forked child: %s\n", ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  alarm(120);  // a hang fails the test instead of blocking it
  bool ok = stress(3000, 0, 1, 1) && stress(10000, 3, 3, 2) && stress(3000, 100, 2, 3);
  ok = ok && two_callers() && exceptions() && forked_child();
  std::printf("%s\n", ok ? "pool check ok" : "pool check FAILED");
  return ok ? 0 : 1;
}
