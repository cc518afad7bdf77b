// meshrt-infer: sends one inference request to a KServe v2 server and prints the
// answer: the output's shape, its first rows, and whether every element is the same.
//
//   meshrt-infer --url localhost:8000 --model matmul_neg --rows 128 --value 1
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "serving/http_client.h"

int main(int argc, char** argv) {
  using json = nlohmann::json;
  std::string url = "localhost:8000", model = "matmul_neg", version;
  int64_t rows = 1;
  double value = 1.0;
  bool binary = false;
  int show = 3;
  CLI::App app{"meshrt-infer: one KServe v2 inference request (every input element = --value), and the answer"};
  app.add_option("--url", url, "server host:port")->capture_default_str();
  app.add_option("--model", model, "model name")->capture_default_str();
  app.add_option("--version", version, "model version (default: the server's)");
  app.add_option("--rows", rows, "rows of the input (the batch axis)")->capture_default_str();
  app.add_option("--value", value, "every input element")->capture_default_str();
  app.add_flag("--binary", binary, "send and receive binary tensor data instead of JSON");
  app.add_option("--show", show, "rows of the output to print")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  size_t colon = url.rfind(':');
  std::string host = colon == std::string::npos ? url : url.substr(0, colon);
  uint16_t port = colon == std::string::npos ? 8000 : static_cast<uint16_t>(std::stoi(url.substr(colon + 1)));
  try {
    meshrt::serving::HttpClient client(host, port);
    std::string base = "/v2/models/" + model + (version.empty() ? "" : "/versions/" + version);
    meshrt::serving::HttpResponse meta = client.request("GET", base);
    if (meta.status != 200) {
      std::fprintf(stderr, "meshrt-infer: GET %s: %d %s\n", base.c_str(), meta.status, meta.body.c_str());
      return 1;
    }
    json m = json::parse(meta.body);
    const json& input = m["inputs"][0];
    int64_t width = input["shape"][1];
    std::string datatype = input["datatype"];
    json in = {{"name", input["name"]}, {"datatype", datatype}, {"shape", {rows, width}}};
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    if (binary) {
      if (datatype != "FP32") throw std::runtime_error("--binary sends FP32 inputs only, not " + datatype);
      in["parameters"] = {{"binary_data_size", rows * width * 4}};
      body = json({{"inputs", {in}}, {"parameters", {{"binary_data_output", true}}}}).dump();
      headers.emplace_back("Inference-Header-Content-Length", std::to_string(body.size()));
      std::vector<float> values(static_cast<size_t>(rows * width), static_cast<float>(value));
      body.append(reinterpret_cast<const char*>(values.data()), values.size() * 4);
    } else {
      in["data"] = std::vector<double>(static_cast<size_t>(rows * width), value);
      body = json({{"inputs", {in}}}).dump();
      headers.emplace_back("Content-Type", "application/json");
    }
    std::printf("POST %s/infer: %s %s[%lld, %lld] of %g%s\n", base.c_str(), input["name"].get<std::string>().c_str(),
                datatype.c_str(), static_cast<long long>(rows), static_cast<long long>(width), value,
                binary ? " (binary)" : "");
    meshrt::serving::HttpResponse r = client.request("POST", base + "/infer", body, headers);
    if (r.status != 200) {
      std::fprintf(stderr, "meshrt-infer: %d %s\n", r.status, r.body.c_str());
      return 1;
    }
    size_t header_length = r.body.size();
    for (const auto& [k, v] : r.headers) {
      if (strcasecmp(k.c_str(), "Inference-Header-Content-Length") == 0) header_length = std::stoull(v);
    }
    json out = json::parse(r.body.substr(0, header_length))["outputs"][0];
    std::vector<double> values;
    if (header_length < r.body.size()) {
      for (size_t at = header_length; at + 4 <= r.body.size(); at += 4) {
        float f;
        std::memcpy(&f, r.body.data() + at, 4);
        values.push_back(f);
      }
    } else {
      for (const auto& v : out["data"]) values.push_back(v.get<double>());
    }
    int64_t out_rows = out["shape"][0], cols = out["shape"][1];
    std::printf("%s: %s%s\n", out["name"].get<std::string>().c_str(), out["datatype"].get<std::string>().c_str(),
                out["shape"].dump().c_str());
    for (int64_t row = 0; row < std::min<int64_t>(show, out_rows); ++row) {
      std::printf("  [");
      for (int64_t c = 0; c < std::min<int64_t>(8, cols); ++c) {
        std::printf("%s%g", c ? ", " : "", values[static_cast<size_t>(row * cols + c)]);
      }
      std::printf("%s]\n", cols > 8 ? ", ..." : "");
    }
    if (out_rows > show) std::printf("  ...\n");
    bool uniform = !values.empty() && std::all_of(values.begin(), values.end(), [&](double v) { return v == values[0]; });
    if (uniform) {
      std::printf("every element is %g\n", values[0]);
    } else {
      std::printf("elements differ\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "meshrt-infer: %s\n", e.what());
    return 1;
  }
}
