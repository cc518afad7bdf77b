// cpu GEMM with oneDNN's matmul primitive: the bf16 and f16 rows of the cpu
// GEMM table (gemm_cpu.cc). One primitive per problem: transposes are strides
// of the operands' memory descriptors, batches a leading dimension (of extent
// 1 for a 2-D operand used by every batch: oneDNN broadcasts it), alpha an
// output scale and beta a sum post-op (c read in its dtype, added in f32 and
// rounded once). bf16 multiplies in bf16 (AMX or AVX512-BF16 where the CPU has
// them) and accumulates in f32, as the previous path (widen to f32, sgemm,
// narrow) did, to within bf16 rounding.
//
// Creating a primitive costs ~0.1-1 ms (oneDNN generates its kernel), so
// primitives are kept in a cache keyed by everything they depend on (dtype,
// transposes, extents, leading dimensions, batch strides, alpha, beta); the
// cache is bounded (least recently used out) and shared by all threads. Each
// call passes its own scratchpad (oneDNN's user scratchpad mode), so one
// primitive may run on several threads at once; the dnnl::stream is per thread.
//
// f16: oneDNN 2.6 (Debian's) has no f16 matmul on x86 CPUs at all, not even on
// CPUs with AVX512-FP16 (checked on a Sapphire Rapids: "could not create a
// primitive descriptor"). There the operands are widened to f32 once per call
// (every batch together, into buffers the thread keeps), multiplied by oneDNN's
// f32 matmul (faster than OpenBLAS's sgemm on AVX-512 machines) and the result
// narrowed to f16. A oneDNN that has an f16 kernel is used directly: the check
// is made once, at the first f16 GEMM.
#include <oneapi/dnnl/dnnl.hpp>

#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "kernels/cpu_vector.h"
#include "kernels/gemm_cpu.h"

namespace meshrt::kernels::cpu {

namespace {
using dnnl::memory;

memory::data_type onednn_type(DType dtype) {
  switch (dtype) {
    case DType::kF32: return memory::data_type::f32;
    case DType::kBF16: return memory::data_type::bf16;
    case DType::kF16: return memory::data_type::f16;
    default: throw Error(ErrorKind::kInternal, detail::cat("oneDNN gemm reached with dtype ", to_string(dtype)));
  }
}

dnnl::engine& engine() {
  // Never destroyed, as the cache of primitives made on it (GEMMs may run during exit).
  static dnnl::engine* e = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *e;
}

dnnl::stream& thread_stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

uint64_t double_bits(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// Everything a primitive depends on.
struct Key {
  DType dtype;
  bool transpose_a, transpose_b;
  int64_t m, n, k, batch;
  int64_t lda, ldb, ldc;
  int64_t stride_a, stride_b, stride_c;
  uint64_t alpha, beta;  // bits
  bool operator==(const Key&) const = default;
};

struct KeyHash {
  size_t operator()(const Key& key) const {
    const int64_t fields[] = {static_cast<int64_t>(key.dtype), key.transpose_a, key.transpose_b, key.m, key.n, key.k,
                              key.batch, key.lda, key.ldb, key.ldc, key.stride_a, key.stride_b, key.stride_c,
                              static_cast<int64_t>(key.alpha), static_cast<int64_t>(key.beta)};
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    for (int64_t f : fields) h = (h ^ static_cast<uint64_t>(f)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

Key key_of(const GemmArgs& g) {
  return Key{g.dtype, g.transpose_a, g.transpose_b, g.m, g.n, g.k, g.batch, g.lda, g.ldb, g.ldc,
             g.batch > 1 ? g.stride_a : 0, g.batch > 1 ? g.stride_b : 0, g.batch > 1 ? g.stride_c : 0,
             double_bits(g.alpha), double_bits(g.beta)};
}

// An operand's descriptor: rows x cols of op(x) (m x k for a, k x n for b),
// stored row-major with leading dimension ld, transposed storage when
// transposed; batched with stride (0: one matrix for every batch).
memory::desc operand(memory::data_type type, int64_t rows, int64_t cols, int64_t ld, bool transposed, int64_t batch,
                     int64_t stride) {
  memory::dims row_stride = transposed ? memory::dims{1, ld} : memory::dims{ld, 1};
  if (batch == 1) return memory::desc({rows, cols}, type, row_stride);
  int64_t own = stride != 0 ? batch : 1;
  int64_t step = stride != 0 ? stride : rows * cols;  // any value: the extent is 1
  return memory::desc({own, rows, cols}, type, {step, row_stride[0], row_stride[1]});
}

struct Primitive {
  dnnl::matmul matmul;
  memory::desc a, b, c, scratchpad;
  size_t scratchpad_bytes;
  std::string implementation;
};

std::shared_ptr<const Primitive> create(const Key& key) {
  memory::data_type type = onednn_type(key.dtype);
  memory::desc a = operand(type, key.m, key.k, key.lda, key.transpose_a, key.batch, key.stride_a);
  memory::desc b = operand(type, key.k, key.n, key.ldb, key.transpose_b, key.batch, key.stride_b);
  memory::desc c = key.batch == 1 ? memory::desc({key.m, key.n}, type, {key.ldc, 1})
                                  : memory::desc({key.batch, key.m, key.n}, type, {key.stride_c, key.ldc, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  double alpha, beta;
  std::memcpy(&alpha, &key.alpha, sizeof alpha);
  std::memcpy(&beta, &key.beta, sizeof beta);
  // A constant scale: oneDNN 2.6 picks its slower gemm:jit kernel for a scale
  // given at run time (DNNL_RUNTIME_F32_VAL), so alpha is part of the key.
  if (alpha != 1.0) attr.set_output_scales(0, {static_cast<float>(alpha)});
  if (beta != 0.0) {
    dnnl::post_ops post;
    post.append_sum(static_cast<float>(beta));
    attr.set_post_ops(post);
  }
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine());
  auto p = std::make_shared<Primitive>();
  p->a = a;
  p->b = b;
  p->c = c;
  p->scratchpad = pd.scratchpad_desc();
  p->scratchpad_bytes = p->scratchpad.get_size();
  p->implementation = pd.impl_info_str();
  p->matmul = dnnl::matmul(pd);
  return p;
}

// Primitives by key, the least recently used dropped past kCapacity. Creation
// runs outside the lock (two threads may create the same one; the first kept wins).
class PrimitiveCache {
 public:
  static constexpr size_t kCapacity = 128;

  std::shared_ptr<const Primitive> get(const Key& key) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = index_.find(key);
      if (it != index_.end()) {
        ++stats_.hits;
        order_.splice(order_.begin(), order_, it->second);
        return it->second->second;
      }
      ++stats_.misses;
    }
    std::shared_ptr<const Primitive> created = create(key);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = index_.find(key);
    if (it != index_.end()) return it->second->second;
    order_.emplace_front(key, created);
    index_[key] = order_.begin();
    while (order_.size() > kCapacity) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
    return created;
  }

  OnednnCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    OnednnCacheStats s = stats_;
    s.size = order_.size();
    s.capacity = kCapacity;
    return s;
  }

 private:
  std::mutex mutex_;
  std::list<std::pair<Key, std::shared_ptr<const Primitive>>> order_;  // most recent first
  std::unordered_map<Key, decltype(order_)::iterator, KeyHash> index_;
  OnednnCacheStats stats_{};
};

PrimitiveCache& cache() {
  static PrimitiveCache* c = new PrimitiveCache;  // never destroyed: GEMMs may run during exit
  return *c;
}

// Memory a thread keeps and reuses: 64-byte aligned, grown on demand.
class ThreadBuffer {
 public:
  void* get(size_t bytes) {
    if (bytes > size_) {
      memory_.reset(static_cast<std::byte*>(::operator new(bytes, std::align_val_t{64})));
      size_ = bytes;
    }
    return memory_.get();
  }

 private:
  struct Free {
    void operator()(std::byte* p) const { ::operator delete(p, std::align_val_t{64}); }
  };
  std::unique_ptr<std::byte, Free> memory_;
  size_t size_ = 0;
};

void run(const GemmArgs& g) {
  std::shared_ptr<const Primitive> p = cache().get(key_of(g));
  thread_local ThreadBuffer scratchpad;
  dnnl::engine& e = engine();
  memory a(p->a, e, const_cast<void*>(g.a));
  memory b(p->b, e, const_cast<void*>(g.b));
  memory c(p->c, e, g.c);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
  if (p->scratchpad_bytes > 0) {
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(p->scratchpad, e, scratchpad.get(p->scratchpad_bytes)));
  }
  dnnl::stream& s = thread_stream();
  p->matmul.execute(s, args);
  s.wait();
}

// Elements one operand spans over all batches (as gemm_cpu.cc's widening did).
int64_t span_of(int64_t rows, int64_t ld, int64_t batch, int64_t stride) {
  return (stride ? (batch - 1) * stride : 0) + rows * ld;
}

// f16 without a oneDNN f16 kernel: widen once, oneDNN's f32 matmul, narrow.
void f16_through_f32(const GemmArgs& g) {
  int64_t a_count = span_of(g.transpose_a ? g.k : g.m, g.lda, g.batch, g.stride_a);
  int64_t b_count = span_of(g.transpose_b ? g.n : g.k, g.ldb, g.batch, g.stride_b);
  int64_t c_count = span_of(g.m, g.ldc, g.batch, g.stride_c);
  thread_local ThreadBuffer a_buffer, b_buffer, c_buffer;
  float* a = static_cast<float*>(a_buffer.get(static_cast<size_t>(a_count) * sizeof(float)));
  float* b = static_cast<float*>(b_buffer.get(static_cast<size_t>(b_count) * sizeof(float)));
  float* c = static_cast<float*>(c_buffer.get(static_cast<size_t>(c_count) * sizeof(float)));
  widen_block(static_cast<const Half*>(g.a), a, a_count);
  widen_block(static_cast<const Half*>(g.b), b, b_count);
  if (g.beta != 0.0) widen_block(static_cast<const Half*>(g.c), c, c_count);
  GemmArgs f = g;
  f.dtype = DType::kF32;
  f.a = a;
  f.b = b;
  f.c = c;
  run(f);
  narrow_block(c, static_cast<Half*>(g.c), c_count);
}

bool native_kernel(DType dtype) {
  try {
    Key key{dtype, false, false, 64, 64, 64, 1, 64, 64, 64, 0, 0, 0, double_bits(1.0), double_bits(0.0)};
    (void)create(key);
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

bool onednn_has_f16() {
  static const bool has = native_kernel(DType::kF16);
  return has;
}
}  // namespace

bool onednn_has_kernel(DType dtype) { return dtype == DType::kF16 ? onednn_has_f16() : native_kernel(dtype); }

void onednn_gemm(const GemmArgs& g) {
  try {
    if (g.dtype == DType::kF16 && !onednn_has_f16()) {
      f16_through_f32(g);
    } else {
      run(g);
    }
  } catch (const dnnl::error& e) {
    throw Error(ErrorKind::kInternal,
                detail::cat("oneDNN matmul failed for ", to_string(g.dtype), " m = ", g.m, ", n = ", g.n, ", k = ", g.k,
                            ", batch = ", g.batch, ": ", e.what(), " (status ", static_cast<int>(e.status), ")"));
  }
}

std::string onednn_gemm_kernel(DType dtype, int64_t m, int64_t n, int64_t k) {
  DType used = dtype == DType::kF16 && !onednn_has_f16() ? DType::kF32 : dtype;
  try {
    std::string name =
        create(Key{used, false, false, m, n, k, 1, k, n, n, 0, 0, 0, double_bits(1.0), double_bits(0.0)})->implementation;
    return used == dtype ? name : name + " on f32 copies (oneDNN has no f16 matmul here)";
  } catch (const dnnl::error& e) {
    return std::string("none (") + e.what() + ")";
  }
}

OnednnCacheStats onednn_cache_stats() { return cache().stats(); }

}  // namespace meshrt::kernels::cpu
