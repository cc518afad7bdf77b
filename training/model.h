// Sequential: layers applied one after another, as tf.keras.Sequential and
// torch.nn.Sequential. A Sequential is itself a Layer: forward runs the
// layers in order, backward runs them in reverse and returns dL/d(input)
// (undefined when the first layer's input has none, e.g. an Embedding's
// ids), parameters() lists every layer's parameters in layer order. The
// order matters to the data-parallel loop: every rank must list the same
// parameters in the same order (it reduces them by position).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "training/layers.h"

namespace meshrt::training {

class Sequential : public Layer {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::unique_ptr<Layer>> layers);

  // Appends a layer (non-null) and returns it.
  Layer& add(std::unique_ptr<Layer> layer);
  template <class L, class... Args>
  L& emplace(Args&&... args) {
    return static_cast<L&>(add(std::make_unique<L>(std::forward<Args>(args)...)));
  }

  size_t size() const { return layers_.size(); }
  Layer& layer(size_t i) { return *layers_.at(i); }

  // "sequential(embedding, mean, dense(sigmoid))"
  std::string name() const override;
  DeviceTensor forward(const DeviceTensor& x) override;
  // Throws Error(kInvalidArgument) if a layer other than the first returns no
  // input gradient (the chain would be cut).
  DeviceTensor backward(const DeviceTensor& grad_out) override;
  std::vector<Parameter*> parameters() override;
  void zero_grad();

 private:
  std::vector<std::unique_ptr<Layer>> layers_;
};

}  // namespace meshrt::training
