// Large CPU tensors on the pages of freed ones (gan_style.engine.memory.reuse_freed_pages).
//
// PyTorch's CPU allocator takes every block from glibc's malloc, which maps each block over its
// mmap threshold (at most 32 MB) on fresh pages and unmaps it when it is freed. The kernel zeroes
// a fresh page on first touch, so a step whose activations are tens of megabytes (the Swapping
// Autoencoder's discriminators at 128 px) spends a quarter of its CPU time zeroing pages that
// PyTorch then overwrites (docs/speed.md, sessions j and k).
//
// This allocator keeps freed blocks of at least `min_bytes` mapped, by size, and serves later
// requests from them with mremap(2), which moves or resizes a mapping without touching its
// resident pages:
//   * a free block of at least the requested size: shrunk to it in place, its tail handed back;
//   * else the largest free block, grown (only the added tail is fresh);
//   * else, with nothing free, a fresh mapping.
// Mapped memory is always live + free, and never more than the most ever live (free blocks are
// handed back where a grown one would take it there): the peak stays the live tensors', where
// glibc's heap kept for reuse (train.keep_heap) fragments and raised it 1.14x. Smaller blocks go to the allocator it replaced.
// Linux only (mremap); installed once per process, for its lifetime: storages remember their
// allocator.
#include <c10/core/CPUAllocator.h>

#include <pthread.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>

namespace {

constexpr size_t kPage = 4096;

size_t page_multiple(size_t n) { return (n + kPage - 1) & ~(kPage - 1); }

// Counters, in bytes and calls, for gs_page_reuse_counters (order matters: Python reads them so).
struct Counters {
  size_t fresh_bytes = 0, reused_bytes = 0, grown_bytes = 0, released_bytes = 0;
  size_t mapped_bytes = 0, free_bytes = 0, peak_mapped_bytes = 0, live_bytes = 0, peak_live_bytes = 0;
  size_t fresh_calls = 0, exact_calls = 0, shrunk_calls = 0, grown_calls = 0;
};

struct PageReusingAllocator final : c10::Allocator {
  c10::Allocator* fallback;
  std::atomic<size_t> min_bytes;  // SIZE_MAX: every block to the fallback (eval/conv_kernel_ab.py --compare pages)
  std::mutex mutex;
  std::multimap<size_t, void*> free_blocks;  // mapped size -> address
  std::unordered_map<void*, size_t> live;    // address -> mapped size, of blocks handed out
  Counters counters;

  PageReusingAllocator(c10::Allocator* fallback, size_t min_bytes) : fallback(fallback), min_bytes(min_bytes) {}

  void* fresh(size_t n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    counters.mapped_bytes += n, counters.fresh_bytes += n, counters.fresh_calls++;
    return p;
  }

  void unmap(void* p, size_t size) {
    munmap(p, size);
    counters.mapped_bytes -= size, counters.released_bytes += size;
  }

  // A block of exactly n bytes (a page multiple), under the mutex; nullptr when out of memory.
  void* take(size_t n) {
    void* p = nullptr;
    auto fit = free_blocks.lower_bound(n);
    if (fit != free_blocks.end()) {  // the smallest free block that holds n
      auto [size, address] = *fit;
      free_blocks.erase(fit);
      counters.free_bytes -= size;
      p = address;
      if (size == n) {
        counters.exact_calls++;
      } else if (mremap(p, size, n, 0) != MAP_FAILED) {  // shrunk in place: the tail's pages go back
        counters.mapped_bytes -= size - n, counters.released_bytes += size - n, counters.shrunk_calls++;
      } else {
        unmap(p, size);
        return take(n);
      }
      counters.reused_bytes += n;
    } else if (!free_blocks.empty()) {  // all smaller: grow the largest, its pages kept
      auto largest = std::prev(free_blocks.end());
      auto [size, address] = *largest;
      free_blocks.erase(largest);
      counters.free_bytes -= size;
      p = mremap(address, size, n, MREMAP_MAYMOVE);
      if (p == MAP_FAILED) {
        unmap(address, size);
        return take(n);
      }
      counters.mapped_bytes += n - size, counters.reused_bytes += size, counters.grown_bytes += n - size, counters.grown_calls++;
    } else {
      p = fresh(n);
      if (p == nullptr) return nullptr;
    }
    counters.live_bytes += n;
    counters.peak_live_bytes = std::max(counters.peak_live_bytes, counters.live_bytes);
    live.emplace(p, n);
    keep_within_live_peak();
    counters.peak_mapped_bytes = std::max(counters.peak_mapped_bytes, counters.mapped_bytes);
    return p;
  }

  // Mapped memory never beyond the most ever live. Only a grown block can take it there (free
  // blocks left over while the live memory reaches a new peak); the excess is handed back from
  // the smallest free block that covers it (its tail), else from whole blocks, largest first.
  void keep_within_live_peak() {
    while (counters.mapped_bytes > counters.peak_live_bytes && !free_blocks.empty()) {
      size_t excess = counters.mapped_bytes - counters.peak_live_bytes;
      auto cover = free_blocks.upper_bound(excess);
      if (cover != free_blocks.end()) {
        auto [size, address] = *cover;
        if (mremap(address, size, size - excess, 0) != MAP_FAILED) {
          free_blocks.erase(cover);
          free_blocks.emplace(size - excess, address);
          counters.free_bytes -= excess, counters.mapped_bytes -= excess, counters.released_bytes += excess;
          continue;
        }
      } else {
        cover = std::prev(free_blocks.end());
      }
      auto [size, address] = *cover;
      free_blocks.erase(cover);
      counters.free_bytes -= size;
      unmap(address, size);
    }
  }

  static void release(void* p);

  c10::DataPtr allocate(size_t nbytes) override {
    void* p = nullptr;
    if (nbytes >= min_bytes) {
      std::unique_lock<std::mutex> lock(mutex);
      size_t n = page_multiple(nbytes);
      p = take(n);
      Counters now = counters;
      lock.unlock();
      if (p != nullptr && c10::memoryProfilingEnabled())  // torch.profiler(profile_memory=True)
        c10::reportMemoryUsageToProfiler(p, static_cast<int64_t>(n), now.live_bytes, now.mapped_bytes, c10::Device(c10::DeviceType::CPU));
    }
    if (p == nullptr) p = fallback->raw_allocate(nbytes);  // small, or no memory left to map
    // one deleter for both kinds (raw_deleter's contract; oneDNN frees through it)
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  size_t release_free_blocks() {
    std::lock_guard<std::mutex> lock(mutex);
    size_t released = counters.free_bytes;
    for (auto [size, address] : free_blocks) unmap(address, size);
    free_blocks.clear();
    counters.free_bytes = 0;
    return released;
  }
};

PageReusingAllocator* installed = nullptr;

void PageReusingAllocator::release(void* p) {
  if (p == nullptr) return;
  std::unique_lock<std::mutex> lock(installed->mutex);
  auto block = installed->live.find(p);
  if (block == installed->live.end()) {  // one of the fallback's
    lock.unlock();
    installed->fallback->raw_deleter()(p);
    return;
  }
  size_t size = block->second;
  installed->free_blocks.emplace(size, p);
  Counters& counters = installed->counters;
  counters.free_bytes += size, counters.live_bytes -= size;
  installed->live.erase(block);
  Counters now = counters;
  lock.unlock();
  if (c10::memoryProfilingEnabled())
    c10::reportMemoryUsageToProfiler(p, -static_cast<int64_t>(size), now.live_bytes, now.mapped_bytes, c10::Device(c10::DeviceType::CPU));
}

// fork(): the child gets the mutex unlocked and the blocks as they were (DataLoader workers)
void lock_for_fork() { installed->mutex.lock(); }
void unlock_after_fork() { installed->mutex.unlock(); }

}  // namespace

extern "C" {

// 1: installed now or before; 0: another allocator of higher priority is the CPU's;
// -1: the allocator it would replace cannot free raw pointers.
int gs_page_reuse_install(size_t min_bytes) {
  if (installed != nullptr) return 1;
  c10::Allocator* previous = c10::GetCPUAllocator();
  if (previous->raw_deleter() == nullptr) return -1;
  installed = new PageReusingAllocator(previous, min_bytes);  // never deleted: storages keep a pointer to it
  pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork);
  c10::SetCPUAllocator(installed, /*priority=*/1);  // above the default's 0
  return c10::GetCPUAllocator() == installed ? 1 : 0;
}

// From now on, blocks of at least min_bytes (SIZE_MAX: none) come from here; those handed out stay ours.
void gs_page_reuse_set_min_bytes(size_t min_bytes) {
  if (installed != nullptr) installed->min_bytes = min_bytes;
}

// The free blocks handed back to the system; the bytes they held.
size_t gs_page_reuse_release(void) { return installed != nullptr ? installed->release_free_blocks() : 0; }

// The Counters, in their order, into `out` (13 values); 0 when not installed.
int gs_page_reuse_counters(size_t* out) {
  if (installed == nullptr) return 0;
  std::lock_guard<std::mutex> lock(installed->mutex);
  const Counters& c = installed->counters;
  size_t values[] = {c.fresh_bytes, c.reused_bytes, c.grown_bytes, c.released_bytes, c.mapped_bytes, c.free_bytes,
                     c.peak_mapped_bytes, c.live_bytes, c.peak_live_bytes, c.fresh_calls, c.exact_calls, c.shrunk_calls, c.grown_calls};
  std::memcpy(out, values, sizeof(values));
  return 1;
}

}  // extern "C"
