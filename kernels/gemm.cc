#include "kernels/gemm.h"

#include <algorithm>

#include "kernels/backend.h"
#include "kernels/elementwise.h"
#include "kernels/dispatch.h"
#include "kernels/dtype_sets.h"

namespace meshrt::kernels {

namespace {
struct Operand {
  int64_t batch, rows, cols;  // as stored
};

Operand operand(const DeviceTensor& t, const char* name) {
  MESHRT_CHECK_SHAPE(t.ndim() == 2 || t.ndim() == 3, "gemm: ", name, " must be 2-D or 3-D, got ",
                     t.description());
  if (t.ndim() == 2) return {1, t.dim(0), t.dim(1)};
  return {t.dim(0), t.dim(1), t.dim(2)};
}

Shape result_shape(const DeviceTensor& a, const DeviceTensor& b, const GemmOptions& o,
                   int64_t* batch_out) {
  Operand pa = operand(a, "a"), pb = operand(b, "b");
  int64_t m = o.transpose_a ? pa.cols : pa.rows;
  int64_t ka = o.transpose_a ? pa.rows : pa.cols;
  int64_t kb = o.transpose_b ? pb.cols : pb.rows;
  int64_t n = o.transpose_b ? pb.rows : pb.cols;
  MESHRT_CHECK_SHAPE(ka == kb, "gemm: contracted extents differ: op(a) of ", a.description(),
                     " has k = ", ka, ", op(b) of ", b.description(), " has k = ", kb);
  bool batched = a.ndim() == 3 || b.ndim() == 3;
  MESHRT_CHECK_SHAPE(a.ndim() != 3 || b.ndim() != 3 || pa.batch == pb.batch,
                     "gemm: batch extents differ: ", a.description(), " and ", b.description());
  int64_t batch = a.ndim() == 3 ? pa.batch : pb.batch;
  *batch_out = batched ? batch : 1;
  return batched ? Shape{batch, m, n} : Shape{m, n};
}
}  // namespace

void gemm(const DeviceTensor& a, const DeviceTensor& b, const DeviceTensor& c,
          const GemmOptions& options, const Stream* stream) {
  detail::check_same_device("gemm", {&a, &b, &c});
  detail::check_dtype("gemm", a, FloatTypes::kList);
  MESHRT_CHECK_SHAPE(a.dtype() == b.dtype() && a.dtype() == c.dtype(), "gemm: dtypes differ: a ",
                     a.description(), ", b ", b.description(), ", c ", c.description());
  int64_t batch = 1;
  Shape expected = result_shape(a, b, options, &batch);
  MESHRT_CHECK_SHAPE(c.shape() == expected, "gemm: c is ", c.description(), " but op(a) @ op(b) of ",
                     a.description(), " and ", b.description(), " is ", expected);
  Operand pa = operand(a, "a"), pb = operand(b, "b");
  GemmArgs args{};
  args.dtype = a.dtype();
  args.transpose_a = options.transpose_a;
  args.transpose_b = options.transpose_b;
  args.tf32 = options.math == MathMode::kTf32;
  args.m = expected[-2];
  args.n = expected[-1];
  args.k = options.transpose_a ? pa.rows : pa.cols;
  args.batch = batch;
  args.a = a.raw_data();
  args.lda = std::max<int64_t>(pa.cols, 1);  // BLAS wants ld >= 1 even when empty
  args.stride_a = a.ndim() == 3 ? pa.rows * pa.cols : 0;
  args.b = b.raw_data();
  args.ldb = std::max<int64_t>(pb.cols, 1);
  args.stride_b = b.ndim() == 3 ? pb.rows * pb.cols : 0;
  args.c = c.raw_data();
  args.ldc = std::max<int64_t>(args.n, 1);
  args.stride_c = args.m * args.n;
  args.alpha = options.alpha;
  args.beta = options.beta;
  if (args.m == 0 || args.n == 0 || batch == 0) return;
  if (args.k == 0) {
    // c = beta * c: BLAS libraries differ on k = 0 (cuBLAS checks leading
    // dimensions against k), so meshrt does it; beta = 0 does not read c.
    if (options.beta == 0.0) {
      fill_zero(c, stream);
    } else if (options.beta != 1.0) {
      unary(UnaryOp::kScale, c, c, options.beta, stream);
    }
    return;
  }
  detail::Launch launch = detail::launch_for("gemm", a.device(), stream, {&a, &b, &c});
  MESHRT_DISPATCH(launch, gemm, args);
}

DeviceTensor matmul(const DeviceTensor& a, const DeviceTensor& b, const GemmOptions& options,
                    const Stream* stream) {
  detail::check_same_device("matmul", {&a, &b});
  int64_t batch = 1;
  Shape shape = result_shape(a, b, options, &batch);
  DeviceTensor c = DeviceTensor::empty(shape, a.dtype(), a.device());
  GemmOptions o = options;
  o.beta = 0.0;
  gemm(a, b, c, o, stream);
  return c;
}

}  // namespace meshrt::kernels
