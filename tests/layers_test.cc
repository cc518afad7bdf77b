// models/: every registered layer type of model configs, run through a real
// config (config.json and safetensors weights in a model folder, read by the
// config reader and served by the engine on every rank of the job, tensor
// parallel over all of them) and compared with a float64 reference computed
// here. A registered type without a case below fails; the weightless types of
// the elementwise table take their reference from tests/op_references.h.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "comm/world.h"
#include "io/safetensors.h"
#include "kernels/elementwise.h"
#include "models/layers.h"
#include "op_references.h"
#include "serving/engine.h"
#include "test_util.h"

namespace meshrt::serving {
namespace {

using meshrt::testing::all_close;
using meshrt::testing::random_tensor;
using Weights = std::vector<std::pair<std::string, HostTensor>>;

constexpr int64_t kIn = 8;  // input width: divisible by 1, 2 and 4 ranks

// float64 helpers on host tensors [rows, cols].
HostTensor f64(const HostTensor& t) { return cast_host(t, DType::kF64); }

HostTensor map(HostTensor x, const std::function<double(double)>& f) {
  x = f64(x);
  for (double& v : x.span<double>()) v = f(v);
  return x;
}

HostTensor rows(HostTensor x, const std::function<void(std::vector<double>&)>& f) {
  x = f64(x);
  int64_t cols = x.dim(-1);
  for (int64_t r = 0; r < x.dim(0); ++r) {
    std::vector<double> row(x.data<double>() + r * cols, x.data<double>() + (r + 1) * cols);
    f(row);
    std::copy(row.begin(), row.end(), x.data<double>() + r * cols);
  }
  return x;
}

HostTensor linear(const HostTensor& x_in, const HostTensor& w_in, const HostTensor* b_in) {
  HostTensor x = f64(x_in), w = f64(w_in);
  int64_t n = x.dim(0), k = x.dim(1), m = w.dim(1);
  HostTensor y = HostTensor::zeros({n, m}, DType::kF64);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double s = b_in ? f64(*b_in).data<double>()[j] : 0;
      for (int64_t q = 0; q < k; ++q) s += x.data<double>()[i * k + q] * w.data<double>()[q * m + j];
      y.data<double>()[i * m + j] = s;
    }
  return y;
}

// One model of the test repository: one stage of layers on every rank.
struct LayerCase {
  std::string name;                // model name
  std::vector<std::string> types;  // the layer types it exercises
  std::string layers;              // the stage's "layers" JSON
  Weights weights;
  int64_t out_width = kIn;
  std::function<HostTensor(const HostTensor& x)> reference;  // float64 result
};

std::vector<LayerCase> layer_cases() {
  HostTensor w = random_tensor({kIn, 12}, DType::kF32, 1), b = random_tensor({12}, DType::kF32, 2);
  HostTensor v = random_tensor({kIn}, DType::kF32, 3), g = random_tensor({kIn}, DType::kF32, 4, 0.5, 1.5);
  std::vector<LayerCase> cases;
  for (const char* parallel : {"none", "column", "row"}) {
    cases.push_back({std::string("linear_") + parallel, {"linear"},
                     std::string(R"([{"type": "linear", "weight": "w", "bias": "b", "parallel": ")") + parallel + R"("}])",
                     {{"w", w}, {"b", b}}, 12, [w, b](const HostTensor& x) { return linear(x, w, &b); }});
  }
  // The same weight stored [out, in] (torch.nn.Linear's layout): x @ W^T, every parallel kind, with an
  // out width (13) that divides by no rank count.
  HostTensor w13 = random_tensor({kIn, 13}, DType::kF32, 5), b13 = random_tensor({13}, DType::kF32, 6);
  HostTensor w13t = HostTensor::empty({13, kIn}, DType::kF32);
  for (int64_t i = 0; i < kIn; ++i) {
    for (int64_t j = 0; j < 13; ++j) w13t.data<float>()[j * kIn + i] = w13.data<float>()[i * 13 + j];
  }
  for (const char* parallel : {"none", "column", "row"}) {
    cases.push_back({std::string("linear_out_in_") + parallel, {"linear"},
                     std::string(R"([{"type": "linear", "weight": "wt", "bias": "b13", "weight_layout": "out_in", "parallel": ")") +
                         parallel + R"("}])",
                     {{"wt", w13t}, {"b13", b13}}, 13, [w13, b13](const HostTensor& x) { return linear(x, w13, &b13); }});
  }
  cases.push_back({"linear_no_bias", {"linear"}, R"([{"type": "linear", "weight": "w"}])", {{"w", w}}, 12,
                   [w](const HostTensor& x) { return linear(x, w, nullptr); }});
  cases.push_back({"bias_add", {"bias_add"}, R"([{"type": "bias_add", "bias": "v"}])", {{"v", v}}, kIn,
                   [v](const HostTensor& x) {
                     HostTensor y = f64(x), bv = f64(v);
                     for (int64_t i = 0; i < y.numel(); ++i) y.data<double>()[i] += bv.data<double>()[i % kIn];
                     return y;
                   }});
  cases.push_back({"scale", {"scale"}, R"([{"type": "scale", "alpha": -0.25}])", {}, kIn,
                   [](const HostTensor& x) { return map(x, [](double e) { return -0.25 * e; }); }});
  // sleep passes the activation on unchanged (its wait is the engine's concern).
  cases.push_back({"sleep", {"sleep"}, R"([{"type": "sleep", "us": 5, "us_per_row": 1}])", {}, kIn,
                   [](const HostTensor& x) { return map(x, [](double e) { return e; }); }});
  cases.push_back({"softmax", {"softmax"}, R"([{"type": "softmax"}])", {}, kIn, [](const HostTensor& x) {
                     return rows(x, [](std::vector<double>& r) {
                       double m = *std::max_element(r.begin(), r.end()), s = 0;
                       for (double& e : r) s += (e = std::exp(e - m));
                       for (double& e : r) e /= s;
                     });
                   }});
  cases.push_back({"layernorm", {"layernorm"}, R"([{"type": "layernorm", "gamma": "g", "beta": "v", "eps": 0.001}])",
                   {{"g", g}, {"v", v}}, kIn, [g, v](const HostTensor& x) {
                     HostTensor gg = f64(g), bb = f64(v);
                     return rows(x, [&](std::vector<double>& r) {
                       double mean = 0, var = 0;
                       for (double e : r) mean += e;
                       mean /= static_cast<double>(r.size());
                       for (double e : r) var += (e - mean) * (e - mean);
                       var /= static_cast<double>(r.size());
                       for (size_t c = 0; c < r.size(); ++c) {
                         r[c] = (r[c] - mean) / std::sqrt(var + 1e-3) * gg.data<double>()[c] + bb.data<double>()[c];
                       }
                     });
                   }});
  cases.push_back({"rmsnorm", {"rmsnorm"}, R"([{"type": "rmsnorm", "gamma": "g"}])", {{"g", g}}, kIn,
                   [g](const HostTensor& x) {
                     HostTensor gg = f64(g);
                     return rows(x, [&](std::vector<double>& r) {
                       double sq = 0;
                       for (double e : r) sq += e * e;
                       double inv = 1 / std::sqrt(sq / static_cast<double>(r.size()) + 1e-6);
                       for (size_t c = 0; c < r.size(); ++c) r[c] = r[c] * inv * gg.data<double>()[c];
                     });
                   }});
  cases.push_back({"residual", {"residual_add"},
                   R"([{"type": "relu", "save": "r"}, {"type": "silu"}, {"type": "residual_add", "from": "r"}])", {}, kIn,
                   [](const HostTensor& x) {
                     return map(x, [](double e) {
                       double r = e > 0 ? e : 0;
                       return r / (1 + std::exp(-r)) + r;
                     });
                   }});
  // Every weightless type the elementwise table registered, with its op's reference.
  for (const std::string& type : models::layer_type_names()) {
    auto op = kernels::find_unary_op(type);
    auto ref = testing::unary_references().find(type);
    if (!op || kernels::info(*op).takes_alpha || ref == testing::unary_references().end()) continue;
    auto f = ref->second.f;
    cases.push_back({"op_" + type, {type}, R"([{"type": ")" + type + R"("}])", {}, kIn,
                     [f](const HostTensor& x) { return map(x, [&](double e) { return f(e, 1.0); }); }});
  }
  return cases;
}

TEST(Layers, EveryRegisteredTypeHasACase) {
  std::set<std::string> covered;
  for (const LayerCase& c : layer_cases()) covered.insert(c.types.begin(), c.types.end());
  for (const std::string& type : models::layer_type_names()) {
    EXPECT_TRUE(covered.count(type)) << "layer type '" << type << "' has no case in tests/layers_test.cc";
  }
}

TEST(Layers, EveryRegisteredTypeThroughAConfigMatchesItsReference) {
  World& world = World::get();
  std::string root = (std::filesystem::temp_directory_path() / ("meshrt-layers-" + std::to_string(world.rank()))).string();
  std::filesystem::remove_all(root);
  std::vector<LayerCase> cases = layer_cases();
  std::vector<ServableDefinition> servables;
  for (const LayerCase& c : cases) {
    std::string dir = root + "/" + c.name;
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << R"({"name": ")" << c.name << R"(", "rank_size": )" << world.size()
                                        << R"(, "stage_size": 1,
      "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, )" << kIn << R"(]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, )" << c.out_width << R"(]}],
      "weights": "weights.safetensors", "stages": [{"layers": )" << c.layers << "}]}";
    Weights weights = c.weights;
    if (weights.empty()) weights.push_back({"unused", HostTensor::full<float>({1}, 0.0f)});
    io::write_safetensors_file(dir + "/weights.safetensors", weights);
    servables.push_back(servable_from_config(load_model_config(dir)));
  }
  Engine engine(servables, Device::cpu());
  if (world.rank() == 0) {
    HostTensor x = random_tensor({5, kIn}, DType::kF32, 7, -3, 3);
    for (size_t i = 0; i < cases.size(); ++i) {
      HostTensor got = engine.run(static_cast<int>(i), x, 2);
      HostTensor expected = cast_host(cases[i].reference(x), DType::kF32);
      EXPECT_TRUE(all_close(got, expected, 1e-5, 1e-5)) << cases[i].name << " on " << world.size() << " ranks";
    }
    engine.stop();
  } else {
    engine.serve();
  }
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace meshrt::serving
