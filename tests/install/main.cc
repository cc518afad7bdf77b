// Uses the installed headers and libraries: -(ones(128x96) @ full(96x16, 0.5)) = -48,
// and a small tokenizer (models, which links PCRE2) that round-trips a text.
// Given a servable library (examples/plugin built against the installed
// meshrt), loads it as meshrt-serve would and runs it through an engine.
#include <cstdio>

#include "comm/world.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "models/tokenizer.h"
#include "models/tokenizer_writer.h"
#include "serving/engine.h"
#include "serving/servable_plugin.h"

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  using meshrt::HostTensor;
  auto x = meshrt::to_device(HostTensor::full<float>({128, 96}, 1.0f), meshrt::Device::cpu());
  auto w = meshrt::to_device(HostTensor::full<float>({96, 16}, 0.5f), meshrt::Device::cpu());
  HostTensor y = meshrt::to_host(meshrt::kernels::neg(meshrt::kernels::matmul(x, w)));
  for (float v : y.span<float>()) {
    if (v != -48.0f) {
      std::printf("wrong value %g\n", v);
      return 1;
    }
  }
  meshrt::models::BpeTokenizerSpec spec;
  spec.vocab_size = 262;
  spec.special_tokens = {"<|endoftext|>"};
  std::string text = "the cat and the hat<|endoftext|>";
  auto tokenizer = meshrt::models::Tokenizer::from_json_text(meshrt::models::bpe_tokenizer_json(text, spec), "consumer");
  if (tokenizer.decode(tokenizer.encode(text), false) != text) {
    std::printf("the tokenizer's round trip failed\n");
    return 1;
  }
  if (argc > 1) {
    // The example scales by parameters.factor in each of its stage_size stages.
    meshrt::serving::ModelConfig config;
    config.name = "scaled";
    config.config_path = "consumer";
    config.input = {"x", meshrt::DType::kF32, {-1, 4}};
    config.output = {"y", meshrt::DType::kF32, {-1, 4}};
    config.parameters["factor"] = "-1.5";
    meshrt::serving::Engine engine({meshrt::serving::load_servable_library(argv[1], config)}, meshrt::Device::cpu());
    HostTensor scaled = engine.run(0, HostTensor::full<float>({3, 4}, 2.0f), 1);
    engine.stop();
    for (float v : scaled.span<float>()) {
      if (v != -3.0f) {
        std::printf("the servable library gave %g, not -3\n", v);
        return 1;
      }
    }
    std::printf("the servable library %s (%s) serves\n", argv[1], meshrt::serving::servable_abi());
  }
  std::printf("installed meshrt works: y = -48 everywhere, the tokenizer round-trips\n");
  return 0;
}
