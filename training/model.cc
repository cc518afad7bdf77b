#include "training/model.h"

#include "device/error.h"

namespace meshrt::training {

Sequential::Sequential(std::vector<std::unique_ptr<Layer>> layers) {
  for (auto& layer : layers) add(std::move(layer));
}

Layer& Sequential::add(std::unique_ptr<Layer> layer) {
  MESHRT_CHECK_ARG(layer != nullptr, "Sequential::add: no layer");
  layers_.push_back(std::move(layer));
  return *layers_.back();
}

std::string Sequential::name() const {
  std::string out = "sequential(";
  for (size_t i = 0; i < layers_.size(); ++i) out += (i ? ", " : "") + layers_[i]->name();
  return out + ")";
}

DeviceTensor Sequential::forward(const DeviceTensor& x) {
  DeviceTensor y = x;
  for (auto& layer : layers_) y = layer->forward(y);
  return y;
}

DeviceTensor Sequential::backward(const DeviceTensor& grad_out) {
  MESHRT_CHECK_ARG(grad_out.defined(), "Sequential::backward: no output gradient");
  DeviceTensor g = grad_out;
  for (size_t i = layers_.size(); i-- > 0;) {
    if (i + 1 < layers_.size()) {
      MESHRT_CHECK_ARG(g.defined(), "Sequential::backward: layer ", i + 1, " (", layers_[i + 1]->name(),
                       ") returned no input gradient, so layer ", i, " (", layers_[i]->name(),
                       ") cannot get one: only the first layer may take an input without a gradient");
    }
    g = layers_[i]->backward(g);
  }
  return g;
}

std::vector<Parameter*> Sequential::parameters() {
  std::vector<Parameter*> out;
  for (auto& layer : layers_) {
    for (Parameter* p : layer->parameters()) out.push_back(p);
  }
  return out;
}

void Sequential::zero_grad() {
  for (Parameter* p : parameters()) p->zero_grad();
}

}  // namespace meshrt::training
