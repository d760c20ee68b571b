// A small pool for the scan's large outputs (y, the checkpoints, du, ddelta, dz, the dB / dC copies).
//
// Why: with huge pages for large tensors (THP_MEM_ALLOC_ENABLE=1, which serpent_basicsr.memory sets
// by default) PyTorch asks glibc for 2 MB-aligned blocks; glibc serves every such block from a fresh
// mapping and unmaps it on free (memalign's trimmed chunk is smaller than the next request, so its
// adaptive mmap threshold never catches up). Every call's outputs are then new pages that the OS
// faults in, zeroes and (defrag = madvise) compacts memory for: a forward at L = 16,384 (25 MB of y)
// took 525 page faults and 13 ms of system time per call, against 0 and 0 once the blocks are reused.
//
// What: blocks of kPoolMinBytes and more come from mmap (madvised for huge pages when
// THP_MEM_ALLOC_ENABLE=1, like PyTorch's); a freed block goes on a free list; an allocation takes the
// smallest free block that fits without wasting more than a quarter; free blocks beyond the cap
// (set_cap_bytes; 0 = no pool) are unmapped, oldest first. Smaller tensors take PyTorch's allocator.
#pragma once

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/alignment.h>
#include <c10/util/env.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>

namespace serpent_pool {

// PyTorch's own huge-page threshold (and the alignment it asks for then): the size from which its
// allocator hands out blocks that glibc maps afresh
constexpr size_t kPoolMinBytes = c10::gAlloc_threshold_thp;
constexpr size_t kDefaultCapMB = 256;  // SERPENT_SCAN_POOL_MB's default

struct Block {
  void* p;
  size_t bytes;
};

class OutputPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = round_up(n);
    Block* blk = take(bytes);
    if (blk == nullptr) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      TORCH_CHECK(p != MAP_FAILED, "selective_scan cpu backend: out of memory allocating ", bytes, " bytes");
      if (huge_pages()) madvise(p, bytes, MADV_HUGEPAGE);
      blk = new Block{p, bytes};
      misses_.fetch_add(1, std::memory_order_relaxed);
    } else {
      hits_.fetch_add(1, std::memory_order_relaxed);
    }
    return {blk->p, blk, &OutputPool::release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, size_t count) const override { std::memcpy(dest, src, count); }

  void set_cap_bytes(size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    cap_ = cap;
    trim_locked();
  }
  size_t cap_bytes() const { return cap_.load(std::memory_order_relaxed); }
  bool enabled() const { return cap_bytes() > 0; }
  // hits, misses (allocations that mapped a new block), free blocks, their bytes
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {hits_.load(), misses_.load(), int64_t(free_.size()), int64_t(free_bytes_)};
  }

  static OutputPool& get() {
    static OutputPool* pool = new OutputPool();  // never destroyed: tensors may outlive static destructors
    return *pool;
  }

 private:
  static size_t round_up(size_t n) {
    const size_t unit = huge_pages() ? c10::gAlloc_threshold_thp : size_t(64) << 10;
    return (std::max(n, size_t(1)) + unit - 1) / unit * unit;
  }
  static bool huge_pages() {  // read as PyTorch's allocator reads it
    static const bool on = c10::utils::check_env("THP_MEM_ALLOC_ENABLE").value_or(false);
    return on;
  }
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if ((*it)->bytes >= bytes && (*it)->bytes - bytes <= bytes / 4 &&
          (best == free_.end() || (*it)->bytes < (*best)->bytes))
        best = it;
    if (best == free_.end()) return nullptr;
    Block* blk = *best;
    free_bytes_ -= blk->bytes;
    free_.erase(best);
    return blk;
  }
  static void release(void* ctx) { get().put(static_cast<Block*>(ctx)); }
  void put(Block* blk) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(blk);
    free_bytes_ += blk->bytes;
    trim_locked();
  }
  void trim_locked() {  // oldest first
    while (free_bytes_ > cap_bytes() && !free_.empty()) {
      Block* blk = free_.front();
      free_.pop_front();
      free_bytes_ -= blk->bytes;
      munmap(blk->p, blk->bytes);
      delete blk;
    }
  }

  std::mutex mu_;
  std::deque<Block*> free_;
  size_t free_bytes_ = 0;
  std::atomic<size_t> cap_{kDefaultCapMB << 20};  // written under mu_, read without it by enabled()
  std::atomic<int64_t> hits_{0}, misses_{0};
};

// An uninitialised tensor, from the pool when it is on and the tensor is large.
inline at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  OutputPool& pool = OutputPool::get();
  const size_t bytes = c10::multiply_integers(sizes) * opt.dtype().itemsize();
  if (!pool.enabled() || bytes < kPoolMinBytes) return at::empty(sizes, opt);
  return at::detail::empty_generic(sizes, &pool, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   opt.dtype().toScalarType(), c10::nullopt);
}

}  // namespace serpent_pool
