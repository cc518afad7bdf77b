// A caching allocator: freed blocks are kept and handed out again instead of
// going back to cudaMalloc/cudaFree (which synchronise the device) or malloc.
// Blocks are cached per stream, so a block is only reused in the stream order of
// the stream it was allocated for. One allocator per device, one for host
// tensors (ordinary pageable memory), and one of pinned buffers through which
// to_host and to_device stage their copies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "device/device.h"
#include "device/stream.h"

namespace meshrt {

struct AllocatorStats {
  size_t allocated_bytes = 0;       // in blocks handed out now (rounded sizes)
  size_t reserved_bytes = 0;        // held from the backend: handed out + cached
  size_t peak_allocated_bytes = 0;  // high-water mark of allocated_bytes
  uint64_t allocations = 0;         // calls to allocate()
  uint64_t cache_hits = 0;          // allocations served from the cache
  uint64_t backend_allocations = 0; // calls to the backend (cudaMalloc, malloc, ...)
  uint64_t backend_frees = 0;
};

class CachingAllocator {
 public:
  using BackendAlloc = std::function<void*(size_t bytes)>;  // returns nullptr when out of memory
  using BackendFree = std::function<void(void* ptr)>;

  CachingAllocator(std::string name, Device device, BackendAlloc alloc, BackendFree free);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // Returns a block of at least bytes (64-byte aligned or better). When the backend
  // is out of memory the cache is emptied and the allocation retried once; then it
  // throws Error(kUnavailable) with the request and the allocator's figures.
  void* allocate(size_t bytes, void* stream = nullptr);
  // Returns a block from allocate() to the cache. Throws on a pointer it never gave out.
  // With events, the block is cached only once they have all completed (work on
  // other streams that still uses it; see Storage::record_stream).
  void deallocate(void* ptr, std::vector<Event> pending = {});
  // Forgets a block without reusing or freeing it: for a block whose users
  // cannot be waited for (no event can be made after a sticky CUDA error, or at
  // exit). Never throws.
  void abandon(void* ptr) noexcept;
  // Gives every cached block back to the backend.
  void empty_cache();
  AllocatorStats stats() const;
  // True when ptr lies inside a block handed out by this allocator.
  bool owns(const void* ptr) const;
  const Device& device() const { return device_; }
  const std::string& name() const { return name_; }

  // Sizes are rounded up to this granule.
  static constexpr size_t kGranule = 512;

 private:
  struct Block {
    size_t size;
    void* stream;
  };
  void release_cached_locked();
  void collect_pending_locked();

  std::string name_;
  Device device_;
  BackendAlloc backend_alloc_;
  BackendFree backend_free_;
  mutable std::mutex mutex_;
  std::map<uintptr_t, Block> live_;                      // handed out, by address
  std::map<void*, std::multimap<size_t, void*>> cache_;  // per stream: size -> block
  struct Pending {
    void* ptr;
    Block block;
    std::vector<Event> events;
  };
  std::vector<Pending> pending_;  // freed, waiting for other streams' work
  AllocatorStats stats_;
};

// The allocator for device memory of device (cpu: 64-byte aligned RAM; cuda:N: cudaMalloc).
CachingAllocator& device_allocator(const Device& device);
// The allocator for host tensors: ordinary (pageable) memory, so a process
// makes no CUDA context by allocating host tensors, and pinned memory is not
// spent on them.
CachingAllocator& host_allocator();
// Pinned buffers (cudaHostAlloc) for staging copies between host and GPU; in a
// build without CUDA, ordinary memory.
CachingAllocator& pinned_staging_allocator();

enum class MemorySpace { kHost, kDevice };
// Where a raw pointer points: kDevice for memory of any meshrt device allocator
// (including the cpu device) or GPU memory that CUDA knows (cudaPointerGetAttributes);
// kHost otherwise.
MemorySpace pointer_space(const void* ptr);

}  // namespace meshrt
