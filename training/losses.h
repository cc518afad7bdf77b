// Losses: the value (a double on the host) and its gradient with respect to
// the prediction (a device tensor of the prediction's shape and dtype), for
// f32 and f64. Every loss is the mean over its terms: over all elements for
// the elementwise losses, over the rows for softmax cross-entropy.
#pragma once

#include "device/tensor.h"

namespace meshrt::training {

struct Loss {
  double value = 0;
  DeviceTensor grad;  // dL/d(prediction)
};

// mean((prediction - target)^2).
Loss mean_squared_error(const DeviceTensor& prediction, const DeviceTensor& target);

// Binary cross-entropy of probabilities p against targets t in [0, 1]:
// mean(-(t log p + (1 - t) log(1 - p))), p clamped to [eps, 1 - eps] (Keras's
// 1e-7) so that a saturated probability gives a finite loss; where the clamp
// acts the gradient is 0.
Loss binary_cross_entropy(const DeviceTensor& probabilities, const DeviceTensor& target, double eps = 1e-7);

// The same from logits z (p = sigmoid(z)), stable for any z:
// mean(max(z, 0) - z t + log(1 + exp(-|z|))); gradient (sigmoid(z) - t) / count.
Loss binary_cross_entropy_with_logits(const DeviceTensor& logits, const DeviceTensor& target);

// Softmax cross-entropy of logits [..., classes] against integer labels
// (i32 or i64, the logits' shape without the last axis; each in [0, classes)):
// mean over rows of logsumexp(z) - z[label]; gradient (softmax(z) - onehot) / rows.
// (Integer labels, as Keras's sparse_categorical_crossentropy: one-hot targets
// would be a dense [rows, classes] tensor of which one element per row counts.)
Loss softmax_cross_entropy(const DeviceTensor& logits, const DeviceTensor& labels);

}  // namespace meshrt::training
