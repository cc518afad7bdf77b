#include "device/allocator.h"

#include <cstdlib>
#include <memory>
#include <vector>

#include "device/error.h"
#include "device/stream.h"

#if MESHRT_WITH_CUDA
#include "device/cuda_check.h"
#endif

namespace meshrt {

CachingAllocator::CachingAllocator(std::string name, Device device, BackendAlloc alloc,
                                   BackendFree free)
    : name_(std::move(name)),
      device_(device),
      backend_alloc_(std::move(alloc)),
      backend_free_(std::move(free)) {}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached_locked();
}

void* CachingAllocator::allocate(size_t bytes, void* stream) {
  size_t size = (std::max<size_t>(bytes, 1) + kGranule - 1) / kGranule * kGranule;
  std::lock_guard<std::mutex> lock(mutex_);
  collect_pending_locked();
  ++stats_.allocations;
  void* ptr = nullptr;
  auto per_stream = cache_.find(stream);
  if (per_stream != cache_.end()) {
    // Best fit, but never more than twice the request: a small tensor must not
    // pin down a huge block.
    auto it = per_stream->second.lower_bound(size);
    if (it != per_stream->second.end() && it->first <= 2 * size) {
      size = it->first;
      ptr = it->second;
      per_stream->second.erase(it);
      ++stats_.cache_hits;
    }
  }
  if (!ptr) {
    ptr = backend_alloc_(size);
    if (!ptr) {  // out of memory: give the cache back and try once more
      release_cached_locked();
      ptr = backend_alloc_(size);
    }
    MESHRT_CHECK(ptr != nullptr, ErrorKind::kUnavailable, name_, " on ", device_,
                 " is out of memory allocating ", bytes, " bytes (", stats_.allocated_bytes,
                 " bytes allocated, ", stats_.reserved_bytes, " reserved)");
    ++stats_.backend_allocations;
    stats_.reserved_bytes += size;
  }
  live_.emplace(reinterpret_cast<uintptr_t>(ptr), Block{size, stream});
  stats_.allocated_bytes += size;
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  return ptr;
}

void CachingAllocator::deallocate(void* ptr, std::vector<Event> pending) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(reinterpret_cast<uintptr_t>(ptr));
  MESHRT_CHECK(it != live_.end(), ErrorKind::kInternal, name_, ": deallocate(", ptr,
               ") of a pointer this allocator did not hand out");
  if (pending.empty()) {
    cache_[it->second.stream].emplace(it->second.size, ptr);
  } else {
    pending_.push_back({ptr, it->second, std::move(pending)});
  }
  stats_.allocated_bytes -= it->second.size;
  live_.erase(it);
}

void CachingAllocator::abandon(void* ptr) noexcept {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == live_.end()) return;
  stats_.allocated_bytes -= it->second.size;
  stats_.reserved_bytes -= it->second.size;
  live_.erase(it);
}

void CachingAllocator::collect_pending_locked() {
  for (size_t i = 0; i < pending_.size();) {
    Pending& p = pending_[i];
    bool done = true;
    for (const Event& e : p.events) done = done && e.passed();  // a failed stream must not stop every allocation
    if (!done) {
      ++i;
      continue;
    }
    cache_[p.block.stream].emplace(p.block.size, p.ptr);
    pending_[i] = std::move(pending_.back());
    pending_.pop_back();
  }
}

void CachingAllocator::release_cached_locked() {
  collect_pending_locked();
  for (auto& [stream, blocks] : cache_) {
    for (auto& [size, ptr] : blocks) {
      backend_free_(ptr);
      stats_.reserved_bytes -= size;
      ++stats_.backend_frees;
    }
  }
  cache_.clear();
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached_locked();
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

bool CachingAllocator::owns(const void* ptr) const {
  auto address = reinterpret_cast<uintptr_t>(ptr);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.upper_bound(address);
  if (it == live_.begin()) return false;
  --it;
  return address < it->first + it->second.size;
}

namespace {
void* aligned_host_alloc(size_t bytes) { return std::aligned_alloc(64, bytes); }

// Allocators live until the process ends (never destroyed), so no tensor freed
// during static destruction can outlive its allocator, and no cudaFree runs
// after the CUDA runtime has been torn down.
struct Registry {
  std::mutex mutex;
  CachingAllocator* cpu = nullptr;
  CachingAllocator* host = nullptr;
  CachingAllocator* pinned = nullptr;
  std::vector<CachingAllocator*> cuda;  // by device index
};
Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}
}  // namespace

CachingAllocator& device_allocator(const Device& device) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (device.is_cpu()) {
    if (!r.cpu) {
      // Freed in stream order, as cudaFreeAsync: a cached block's last user may
      // still be queued on the cpu stream.
      r.cpu = new CachingAllocator("cpu device allocator", Device::cpu(), aligned_host_alloc, [](void* p) {
        Stream::default_for(Device::cpu()).enqueue([p] { std::free(p); });
      });
    }
    return *r.cpu;
  }
  check_device_usable(device);
  if (r.cuda.size() <= static_cast<size_t>(device.index())) r.cuda.resize(device.index() + 1);
  CachingAllocator*& slot = r.cuda[static_cast<size_t>(device.index())];
  if (!slot) {
#if MESHRT_WITH_CUDA
    int index = device.index();
    slot = new CachingAllocator(
        "CUDA caching allocator", device,
        [index](size_t bytes) -> void* {
          void* p = nullptr;
          int previous = 0;
          MESHRT_CUDA_CHECK(cudaGetDevice(&previous));
          MESHRT_CUDA_CHECK(cudaSetDevice(index));
          cudaError_t status = cudaMalloc(&p, bytes);
          cudaSetDevice(previous);
          if (status == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            return nullptr;
          }
          MESHRT_CUDA_CHECK(status);
          return p;
        },
        [](void* p) { cudaFree(p); });
#endif
  }
  return *slot;
}

CachingAllocator& host_allocator() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!r.host) {
    r.host = new CachingAllocator("host allocator", Device::cpu(), aligned_host_alloc,
                                  [](void* p) { std::free(p); });
  }
  return *r.host;
}

CachingAllocator& pinned_staging_allocator() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!r.pinned) {
#if MESHRT_WITH_CUDA
    r.pinned = new CachingAllocator(
        "pinned staging allocator", Device::cpu(),
        [](size_t bytes) -> void* {
          void* p = nullptr;
          cudaError_t status = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
          if (status == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            return nullptr;
          }
          MESHRT_CUDA_CHECK(status);
          return p;
        },
        [](void* p) { cudaFreeHost(p); });
#else
    r.pinned = new CachingAllocator("pinned staging allocator (cpu build: ordinary memory)", Device::cpu(),
                                    aligned_host_alloc, [](void* p) { std::free(p); });
#endif
  }
  return *r.pinned;
}

MemorySpace pointer_space(const void* ptr) {
  if (device_allocator(Device::cpu()).owns(ptr)) return MemorySpace::kDevice;
  if (host_allocator().owns(ptr)) return MemorySpace::kHost;
#if MESHRT_WITH_CUDA
  if (cuda_device_count() > 0) {
    cudaPointerAttributes attributes{};
    cudaError_t status = cudaPointerGetAttributes(&attributes, ptr);
    if (status != cudaSuccess) {
      cudaGetLastError();  // an unregistered host pointer may report an error on old drivers
      return MemorySpace::kHost;
    }
    if (attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged) {
      return MemorySpace::kDevice;
    }
  }
#endif
  return MemorySpace::kHost;
}

}  // namespace meshrt
