// cpu loops of the elementwise ops: each calls the op's element function
// (elementwise_ops.h), as the CUDA kernels do. Dtypes were checked by elementwise.cc.
#include "device/convert.h"
#include "kernels/backend.h"
#include "kernels/elementwise_ops.h"

namespace meshrt::kernels::cpu {

void unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double alpha) {
  bool done = dispatch_elementwise(op, dtype, [&](auto f, auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* in = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);
    A a = static_cast<A>(alpha);
    for (int64_t i = 0; i < n; ++i) o[i] = store<T>(apply_unary(f, load(in[i]), a));
  });
  MESHRT_CHECK(done, ErrorKind::kInternal, to_string(dtype), " reached the cpu loop of a unary op that does not take it");
}

void binary(BinaryOp op, DType dtype, const void* a, const void* b, void* out, int64_t n) {
  bool done = dispatch_elementwise(op, dtype, [&](auto f, auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a);
    const T* y = static_cast<const T*>(b);
    T* o = static_cast<T*>(out);
    for (int64_t i = 0; i < n; ++i) o[i] = store<T>(f(load(x[i]), load(y[i])));
  });
  MESHRT_CHECK(done, ErrorKind::kInternal, to_string(dtype), " reached the cpu loop of a binary op that does not take it");
}

void bias_add(DType dtype, const void* x, const void* bias, void* out, int64_t rows, int64_t cols) {
  visit_validated(FloatTypes{}, dtype, "bias_add", [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(x);
    const T* b = static_cast<const T*>(bias);
    T* o = static_cast<T*>(out);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) o[r * cols + c] = store<T>(load(in[r * cols + c]) + load(b[c]));
    }
  });
}

void cast(DType from, DType to, const void* x, void* out, int64_t n) {
  visit_dtype(from, [&](auto in_tag) {
    using In = decltype(in_tag);
    visit_dtype(to, [&](auto out_tag) {
      using Out = decltype(out_tag);
      const In* in = static_cast<const In*>(x);
      Out* o = static_cast<Out*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = convert<Out>(in[i]);
    });
  });
}

}  // namespace meshrt::kernels::cpu
