// Large CPU tensors on the pages of freed ones (gan_style.engine.memory.reuse_freed_pages).
//
// PyTorch's CPU allocator takes every block from glibc's malloc, which maps each block over its
// mmap threshold (at most 32 MB) on fresh pages and unmaps it when it is freed. The kernel zeroes
// a fresh page on first touch, so a step whose activations are tens of megabytes (the Swapping
// Autoencoder's discriminators at 128 px) spends a quarter of its CPU time zeroing pages that
// PyTorch then overwrites (docs/speed.md, sessions j and k).
//
// This allocator keeps freed blocks of at least `min_bytes` mapped and serves later requests from
// their pages, which mremap(2) moves between addresses without touching them:
//   * a free block of at least the requested size: its head, the tail left free (no system call);
//   * else, where the mapped memory has room (below), a fresh mapping;
//   * else, all free blocks smaller: a new mapping of the requested size into which the free
//     blocks' pages are moved, largest first; only what they do not cover is fresh.
// A freed block is joined with the free blocks on either side of it in the address space (no
// system call), so the heads and tails that splits leave behind grow back into whole blocks. Without
// that, a training step's repeating requests kept splitting blocks into pieces that the next larger
// request had to gather by mremap: 80 merges (~640 mremap calls) and 30 MB of fresh pages per bf16
// FastCUT step on a 2-vCPU Xeon, where each mremap's TLB shootdown is dear (docs/speed.md, session n).
// Mapped memory is always live + free and never more than the most ever live plus a slack of an
// eighth of it, at most `max_slack` (64 MB from Python): the peak stays near the live tensors',
// where glibc's heap kept for reuse (train.keep_heap) fragments and raised it 1.14x. Within the
// slack, a request that no free block holds gets fresh pages rather than a merge, so the free
// blocks of a repeating step settle to sizes that serve it. Without slack they were merged and
// split again every step: 40 merges, ~600 mremap calls and 10 MB of fresh pages handed back per
// bf16 FastCUT step, 1.06x the time of PyTorch's own allocator; with it, no merge and 0.96x
// (docs/speed.md, session q). Smaller blocks go to the allocator it replaced. Linux only (mremap);
// installed once per process, for its lifetime: storages remember their allocator.
#include <c10/core/CPUAllocator.h>

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kPage = 4096;
// Mapped memory may pass the most ever live by this fraction of it, at most max_slack.
constexpr size_t kSlackDivisor = 8;

size_t page_multiple(size_t n) { return (n + kPage - 1) & ~(kPage - 1); }

// Counters, in bytes and calls, for gs_page_reuse_counters (order matters: Python reads them so).
struct Counters {
  size_t fresh_bytes = 0, reused_bytes = 0, grown_bytes = 0, released_bytes = 0;
  size_t mapped_bytes = 0, free_bytes = 0, peak_mapped_bytes = 0, live_bytes = 0, peak_live_bytes = 0;
  size_t fresh_calls = 0, exact_calls = 0, split_calls = 0, merged_calls = 0;
};

// A block is a page range that may span several kernel mappings (VMAs): mremap moves pages one
// mapping at a time, so each block keeps the lengths of the mappings it spans, in address order.
// Splitting a block needs no system call; the kernel splits a mapping when part of it moves.
struct Block {
  size_t size;
  std::vector<size_t> segments;
  bool free = false;
  // its first segment is the rest of the mapping whose head is the last segment of the block just
  // before it (a split with no system call): joined again, the two are one segment
  bool continues = false;
};

// A merged block spans at most this many mappings (the process may hold ~65k: vm.max_map_count).
constexpr size_t kMaxSegments = 32;

struct PageReusingAllocator final : c10::Allocator {
  c10::Allocator* fallback;
  std::atomic<size_t> min_bytes;  // SIZE_MAX: every block to the fallback (eval/conv_kernel_ab.py --compare pages)
  std::atomic<size_t> max_slack;  // the most mapped beyond the live peak, in bytes (0: none)
  std::mutex mutex;
  std::map<char*, Block> blocks;             // every block, handed out or free, by address
  std::multimap<size_t, char*> free_blocks;  // the free ones: size -> address
  Counters counters;

  PageReusingAllocator(c10::Allocator* fallback, size_t min_bytes, size_t max_slack)
      : fallback(fallback), min_bytes(min_bytes), max_slack(max_slack) {}

  static char* map_fresh(size_t n) {  // zeroed by the kernel on first touch
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : static_cast<char*>(p);
  }

  char* take_free(std::multimap<size_t, char*>::iterator it) {
    char* p = it->second;
    counters.free_bytes -= it->first;
    free_blocks.erase(it);
    blocks.at(p).free = false;
    return p;
  }

  // Out of free_blocks, the free block at p (found among those of its size).
  void take_free(char* p) {
    auto range = free_blocks.equal_range(blocks.at(p).size);
    take_free(std::find_if(range.first, range.second, [p](const auto& entry) { return entry.second == p; }));
  }

  // Whether `second` starts where `first` ends and the two may be joined (their segments within kMaxSegments).
  bool adjacent(std::map<char*, Block>::iterator first, std::map<char*, Block>::iterator second) const {
    return second != blocks.end() && first->first + first->second.size == second->first &&
           first->second.segments.size() + second->second.segments.size() <= kMaxSegments;
  }

  // `second` (right after `first` in the address space) appended to `first`.
  void append(std::map<char*, Block>::iterator first, std::map<char*, Block>::iterator second) {
    std::vector<size_t>& segments = first->second.segments;
    auto from = second->second.segments.begin();
    if (second->second.continues) segments.back() += *from++;
    segments.insert(segments.end(), from, second->second.segments.end());
    first->second.size += second->second.size;
    blocks.erase(second);
  }

  // Free the block at p, joined with the free blocks on either side of it.
  void mark_free(char* p) {
    auto it = blocks.find(p);
    auto next = std::next(it);
    if (adjacent(it, next) && next->second.free) {
      take_free(next->first);
      append(it, next);
    }
    if (it != blocks.begin()) {
      auto previous = std::prev(it);
      if (previous->second.free && adjacent(previous, it)) {
        take_free(previous->first);
        append(previous, it);
        it = previous;
      }
    }
    it->second.free = true;
    counters.free_bytes += it->second.size;
    free_blocks.emplace(it->second.size, it->first);
  }

  // The pages before `end` are going away (moved or unmapped): the block at `end`, if any, no
  // longer continues a mapping of theirs.
  void unmapped_before(char* end) {
    auto next = blocks.find(end);
    if (next != blocks.end()) next->second.continues = false;
  }

  // The block at p is going away (moved or unmapped).
  void forget(char* p) {
    unmapped_before(p + blocks.at(p).size);
    blocks.erase(p);
  }

  // The block at p cut to its first n bytes; the rest becomes a free block of its own.
  void split(char* p, size_t n) {
    Block& block = blocks.at(p);
    Block tail{block.size - n, {}};
    size_t offset = 0, kept = 0;
    for (size_t length : block.segments) {
      if (offset + length <= n) {
        kept++;
      } else if (offset < n) {  // the mapping that straddles the cut: its rest begins the tail
        tail.segments.push_back(offset + length - n);
        tail.continues = true;
        block.segments[kept++] = n - offset;
      } else {
        tail.segments.push_back(length);
      }
      offset += length;
    }
    block.segments.resize(kept);
    block.size = n;
    blocks[p + n] = std::move(tail);
    mark_free(p + n);
  }

  // The block's pages past `keep` handed back to the system (keep 0: the whole block, forgotten).
  void truncate(char* p, size_t keep) {
    Block& block = blocks.at(p);
    munmap(p + keep, block.size - keep);  // munmap, unlike mremap, may span mappings
    counters.mapped_bytes -= block.size - keep, counters.released_bytes += block.size - keep;
    if (keep == 0) {
      forget(p);
      return;
    }
    unmapped_before(p + block.size);
    size_t offset = 0, kept = 0;
    for (size_t length : block.segments) {
      if (offset >= keep) break;
      block.segments[kept++] = std::min(length, keep - offset);
      offset += length;
    }
    block.segments.resize(kept);
    block.size = keep;
  }

  // n bytes at a fresh address: the free blocks' pages moved in, largest first, the rest fresh.
  char* merge(size_t n) {
    char* p = map_fresh(n);
    if (p == nullptr) return nullptr;
    Block merged{n, {}};
    size_t offset = 0;
    while (offset < n && !free_blocks.empty()) {
      auto largest = std::prev(free_blocks.end());
      if (merged.segments.size() + blocks.at(largest->second).segments.size() + 1 > kMaxSegments) break;
      char* source = take_free(largest);
      if (blocks.at(source).size > n - offset) split(source, n - offset);
      Block moving = std::move(blocks.at(source));
      forget(source);
      counters.mapped_bytes -= moving.size;  // counted again below, as part of the merged block
      size_t at = 0;
      for (size_t length : moving.segments) {
        // the fresh pages there, never touched, are replaced by the source's resident ones
        if (mremap(source + at, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, p + offset) == MAP_FAILED) {
          munmap(source + at, moving.size - at);  // the rest of this block is lost; fresh pages stand in
          counters.released_bytes += moving.size - at;
          break;
        }
        merged.segments.push_back(length);
        at += length, offset += length;
      }
      counters.reused_bytes += at;
    }
    if (offset < n) merged.segments.push_back(n - offset);  // the fresh mapping's untouched rest
    counters.mapped_bytes += n, counters.grown_bytes += n - offset, counters.merged_calls++;
    blocks[p] = std::move(merged);
    return p;
  }

  // The most that may be mapped while the most ever live is peak_live.
  size_t mapped_limit(size_t peak_live) const { return peak_live + std::min(peak_live / kSlackDivisor, max_slack.load()); }

  // A block of exactly n bytes (a page multiple), under the mutex; nullptr when out of memory.
  char* take(size_t n) {
    char* p;
    auto fit = free_blocks.lower_bound(n);
    if (fit != free_blocks.end()) {  // the smallest free block that holds n, its tail kept free
      size_t size = fit->first;
      p = take_free(fit);
      if (size > n) {
        split(p, n);
        counters.split_calls++;
      } else {
        counters.exact_calls++;
      }
      counters.reused_bytes += n;
    } else if (!free_blocks.empty() &&
               (max_slack == 0 || counters.mapped_bytes + n > mapped_limit(std::max(counters.peak_live_bytes, counters.live_bytes + n)))) {
      p = merge(n);  // no room for fresh pages beside the free ones: theirs moved together
      if (p == nullptr) return nullptr;
    } else {
      p = map_fresh(n);
      if (p == nullptr) return nullptr;
      blocks[p] = Block{n, {n}};
      counters.mapped_bytes += n, counters.fresh_bytes += n, counters.fresh_calls++;
    }
    counters.live_bytes += n;
    counters.peak_live_bytes = std::max(counters.peak_live_bytes, counters.live_bytes);
    keep_within_limit();
    counters.peak_mapped_bytes = std::max(counters.peak_mapped_bytes, counters.mapped_bytes);
    return p;
  }

  // Mapped memory never beyond mapped_limit. A merge that stopped at kMaxSegments with free blocks
  // left, or a smaller max_slack, can take it there; the excess is handed back from the tail of the
  // smallest free block larger than it, else whole blocks, largest first.
  void keep_within_limit() {
    while (counters.mapped_bytes > mapped_limit(counters.peak_live_bytes) && !free_blocks.empty()) {
      size_t excess = counters.mapped_bytes - mapped_limit(counters.peak_live_bytes);
      auto cover = free_blocks.upper_bound(excess);
      if (cover == free_blocks.end()) {
        truncate(take_free(std::prev(free_blocks.end())), 0);
        continue;
      }
      size_t size = cover->first;
      char* p = take_free(cover);
      truncate(p, size - excess);
      mark_free(p);
    }
  }

  static void release(void* p);

  c10::DataPtr allocate(size_t nbytes) override {
    void* p = nullptr;
    if (nbytes >= min_bytes) {
      std::unique_lock<std::mutex> lock(mutex);
      size_t n = page_multiple(nbytes);
      p = take(n);
      size_t live_bytes = counters.live_bytes, mapped_bytes = counters.mapped_bytes;
      lock.unlock();
      if (p != nullptr && c10::memoryProfilingEnabled())  // torch.profiler(profile_memory=True)
        c10::reportMemoryUsageToProfiler(p, static_cast<int64_t>(n), live_bytes, mapped_bytes, c10::Device(c10::DeviceType::CPU));
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
    while (!free_blocks.empty()) truncate(take_free(free_blocks.begin()), 0);
    // A new start: the peaks (and with them the slack) are the next run's own, not a larger
    // earlier run's that would let this one map up to its slack beyond its own needs.
    counters.peak_live_bytes = counters.live_bytes, counters.peak_mapped_bytes = counters.mapped_bytes;
    return released;
  }
};

PageReusingAllocator* installed = nullptr;

void PageReusingAllocator::release(void* p) {
  if (p == nullptr) return;
  std::unique_lock<std::mutex> lock(installed->mutex);
  auto block = installed->blocks.find(static_cast<char*>(p));
  if (block == installed->blocks.end()) {  // one of the fallback's
    lock.unlock();
    installed->fallback->raw_deleter()(p);
    return;
  }
  size_t size = block->second.size;
  installed->mark_free(static_cast<char*>(p));
  size_t live_bytes = installed->counters.live_bytes -= size, mapped_bytes = installed->counters.mapped_bytes;
  lock.unlock();
  if (c10::memoryProfilingEnabled())
    c10::reportMemoryUsageToProfiler(p, -static_cast<int64_t>(size), live_bytes, mapped_bytes, c10::Device(c10::DeviceType::CPU));
}

// fork(): the child gets the mutex unlocked and the blocks as they were (DataLoader workers)
void lock_for_fork() { installed->mutex.lock(); }
void unlock_after_fork() { installed->mutex.unlock(); }

}  // namespace

extern "C" {

// 1: installed now or before; 0: another allocator of higher priority is the CPU's;
// -1: the allocator it would replace cannot free raw pointers.
int gs_page_reuse_install(size_t min_bytes, size_t max_slack) {
  if (installed != nullptr) return 1;
  c10::Allocator* previous = c10::GetCPUAllocator();
  if (previous->raw_deleter() == nullptr) return -1;
  installed = new PageReusingAllocator(previous, min_bytes, max_slack);  // never deleted: storages keep a pointer to it
  pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork);
  c10::SetCPUAllocator(installed, /*priority=*/1);  // above the default's 0
  return c10::GetCPUAllocator() == installed ? 1 : 0;
}

// From now on, blocks of at least min_bytes (SIZE_MAX: none) come from here; those handed out stay ours.
void gs_page_reuse_set_min_bytes(size_t min_bytes) {
  if (installed != nullptr) installed->min_bytes = min_bytes;
}

// From now on, at most max_slack bytes (and an eighth of the live peak) mapped beyond the live peak.
void gs_page_reuse_set_max_slack(size_t max_slack) {
  if (installed == nullptr) return;
  std::lock_guard<std::mutex> lock(installed->mutex);
  installed->max_slack = max_slack;
  installed->keep_within_limit();
}

// The most it maps while the most ever live is peak_live (its current slack).
size_t gs_page_reuse_mapped_limit(size_t peak_live) { return installed != nullptr ? installed->mapped_limit(peak_live) : peak_live; }

// The free blocks handed back to the system; the bytes they held.
size_t gs_page_reuse_release(void) { return installed != nullptr ? installed->release_free_blocks() : 0; }

// The Counters, in their order, into `out` (13 values); 0 when not installed.
int gs_page_reuse_counters(size_t* out) {
  if (installed == nullptr) return 0;
  std::lock_guard<std::mutex> lock(installed->mutex);
  const Counters& c = installed->counters;
  size_t values[] = {c.fresh_bytes, c.reused_bytes, c.grown_bytes, c.released_bytes, c.mapped_bytes, c.free_bytes,
                     c.peak_mapped_bytes, c.live_bytes, c.peak_live_bytes, c.fresh_calls, c.exact_calls, c.split_calls, c.merged_calls};
  std::memcpy(out, values, sizeof(values));
  return 1;
}

}  // extern "C"
