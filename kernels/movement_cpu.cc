// cpu twins of movement.cu. Shapes were checked by movement.cc; elements are
// moved as unsigned integers of their size.
#include <cstring>

#include "kernels/backend.h"

namespace meshrt::kernels::cpu {

// Rows of out's innermost dimension, one after another; x's offset advanced by
// an odometer over the outer dimensions.
void permute(const PermuteArgs& args, const void* x, void* out) {
  visit_element_size(args.element_size, [&](auto tag) {
    using U = decltype(tag);
    const U* in = static_cast<const U*>(x);
    U* o = static_cast<U*>(out);
    const int last = args.ndim - 1;
    const int64_t cols = args.extents[last], step = args.strides[last];
    int64_t rows = 1;
    for (int d = 0; d < last; ++d) rows *= args.extents[d];
    int64_t at[kMaxPermuteDims] = {};
    int64_t offset = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const U* src = in + offset;
      U* dst = o + r * cols;
      if (step == 1) {
        std::memcpy(dst, src, static_cast<size_t>(cols) * sizeof(U));
      } else {
        for (int64_t c = 0; c < cols; ++c) dst[c] = src[c * step];
      }
      for (int d = last - 1; d >= 0; --d) {
        offset += args.strides[d];
        if (++at[d] < args.extents[d]) break;
        offset -= args.strides[d] * args.extents[d];
        at[d] = 0;
      }
    }
  });
}

void gather(const GatherArgs& args, const void* x, const void* index, void* out) {
  auto id_at = [&](int64_t j) -> int64_t {
    return args.index_dtype == DType::kI32 ? static_cast<const int32_t*>(index)[j]
                                           : static_cast<const int64_t*>(index)[j];
  };
  const size_t row = static_cast<size_t>(args.inner) * static_cast<size_t>(args.element_size);
  if (!args.zero_outside) {  // every index checked before anything is written
    for (int64_t j = 0; j < args.count; ++j) {
      int64_t id = id_at(j);
      MESHRT_CHECK_ARG(id >= 0 && id < args.extent, args.op, ": index ", id, " (element ", j,
                       " of the index) is outside [0, ", args.extent, ") of dimension ", args.dim, " of x");
    }
  }
  const char* in = static_cast<const char*>(x);
  char* o = static_cast<char*>(out);
  for (int64_t b = 0; b < args.outer; ++b) {
    for (int64_t j = 0; j < args.count; ++j) {
      int64_t local = id_at(j) - args.first_id;
      char* dst = o + static_cast<size_t>(b * args.count + j) * row;
      if (local >= 0 && local < args.extent) {
        std::memcpy(dst, in + static_cast<size_t>(b * args.extent + local) * row, row);
      } else {
        std::memset(dst, 0, row);
      }
    }
  }
}

void scatter(const GatherArgs& args, const void* src, const void* index, void* x) {
  const size_t row = static_cast<size_t>(args.inner) * static_cast<size_t>(args.element_size);
  const char* in = static_cast<const char*>(src);
  char* out = static_cast<char*>(x);
  for (int64_t j = 0; j < args.count; ++j) {
    int64_t id = (args.index_dtype == DType::kI32 ? static_cast<const int32_t*>(index)[j]
                                                  : static_cast<const int64_t*>(index)[j]) - args.first_id;
    if (id < 0 || id >= args.extent) continue;  // not kept
    for (int64_t b = 0; b < args.outer; ++b) {
      std::memcpy(out + static_cast<size_t>(b * args.extent + id) * row, in + static_cast<size_t>(b * args.count + j) * row, row);
    }
  }
}

// Every id is checked before anything is added (as gather does), then the
// slices are added in the order of j: repeated ids add up in one fixed order.
void scatter_add(const GatherArgs& args, DType dtype, const void* src, const void* index, void* x) {
  auto id_at = [&](int64_t j) -> int64_t {
    return args.index_dtype == DType::kI32 ? static_cast<const int32_t*>(index)[j]
                                           : static_cast<const int64_t*>(index)[j];
  };
  for (int64_t j = 0; j < args.count; ++j) {
    int64_t id = id_at(j) - args.first_id;
    MESHRT_CHECK_ARG(id >= 0 && id < args.extent, args.op, ": index ", id + args.first_id, " (element ", j,
                     " of the index) is outside [0, ", args.extent, ") of dimension ", args.dim, " of x");
  }
  auto add = [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(src);
    T* out = static_cast<T*>(x);
    for (int64_t b = 0; b < args.outer; ++b) {
      for (int64_t j = 0; j < args.count; ++j) {
        const T* from = in + (b * args.count + j) * args.inner;
        T* to = out + (b * args.extent + id_at(j) - args.first_id) * args.inner;
        for (int64_t i = 0; i < args.inner; ++i) to[i] += from[i];
      }
    }
  };
  switch (dtype) {
    case DType::kF32: add(float{}); return;
    case DType::kF64: add(double{}); return;
    default: throw Error(ErrorKind::kInternal, ::meshrt::detail::cat("scatter_add got ", to_string(dtype)));
  }
}

void where(const WhereArgs& args, const void* cond, const void* a, const void* b, void* out) {
  visit_element_size(args.element_size, [&](auto tag) {
    using U = decltype(tag);
    const uint8_t* c = static_cast<const uint8_t*>(cond);
    const U* y = static_cast<const U*>(b);
    U* o = static_cast<U*>(out);
    if (a) {
      const U* x = static_cast<const U*>(a);
      for (int64_t i = 0; i < args.n; ++i) o[i] = c[i] ? x[i] : y[i];
    } else {
      U value;
      std::memcpy(&value, &args.scalar_a, sizeof value);
      for (int64_t i = 0; i < args.n; ++i) o[i] = c[i] ? value : y[i];
    }
  });
}

}  // namespace meshrt::kernels::cpu
