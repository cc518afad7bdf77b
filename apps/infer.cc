// meshrt-infer: sends one inference request to a KServe v2 server and prints the
// answer: the output's shape, its first rows, and whether every element is the same.
//
//   meshrt-infer --url localhost:8000 --model matmul_neg --rows 128 --value 1
//   meshrt-infer --url localhost:8000 --model llama-tiny --generate 16 --prompt 60,193,243
//       (generate_stream: prints each token as it comes)
//   meshrt-infer --grpc --url localhost:8001 ...   (the same over KServe v2 gRPC; generation
//       through ModelStreamInfer)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <sstream>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "apps/cli.h"
#include "rpc/client.h"
#include "rpc/proto/grpc_service.grpc.pb.h"
#include "rpc/status.h"
#include "serving/grpc_wire.h"
#include "serving/http_client.h"
#include "serving/protocol.h"

namespace {

using namespace meshrt;

// The output's shape, its first rows, and whether every element is the same.
void print_output(const std::string& name, const HostTensor& output, int show) {
  std::vector<double> values = cast_host(output, DType::kF64).to_vector<double>();
  int64_t out_rows = output.dim(0), cols = out_rows > 0 ? output.numel() / out_rows : 0;
  std::printf("%s: %s%s\n", name.c_str(), serving::kserve_datatype(output.dtype()), output.shape().to_string().c_str());
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
}

std::unique_ptr<grpc::ClientContext> grpc_context() {
  auto c = std::make_unique<grpc::ClientContext>();
  rpc::set_timeout(*c, std::chrono::minutes(10));
  return c;
}

int grpc_failed(const std::string& call, const grpc::Status& s) {
  std::fprintf(stderr, "meshrt-infer: %s: %s: %s\n", call.c_str(), rpc::code_name(s.error_code()), s.error_message().c_str());
  return 1;
}

// The same requests over KServe v2 gRPC.
int over_grpc(const std::string& url, const std::string& model, const std::string& version, int64_t rows, double value,
              int64_t extent, int show, int64_t generate, const std::vector<int64_t>& prompt) {
  auto stub = inference::GRPCInferenceService::NewStub(rpc::make_channel(url));
  if (generate > 0) {
    inference::ModelInferRequest request;
    request.set_model_name(model);
    request.set_model_version(version);
    auto* ids = request.add_inputs();
    ids->set_name("input_ids");
    ids->set_datatype("INT64");
    ids->add_shape(static_cast<int64_t>(prompt.size()));
    for (int64_t t : prompt) ids->mutable_contents()->add_int64_contents(t);
    (*request.mutable_parameters())["max_tokens"].set_int64_param(generate);
    std::printf("ModelStreamInfer %s: input_ids %zu tokens, max_tokens %lld\n", model.c_str(), prompt.size(),
                static_cast<long long>(generate));
    auto context = grpc_context();
    auto stream = stub->ModelStreamInfer(context.get());
    stream->Write(request);
    stream->WritesDone();
    inference::ModelStreamInferResponse response;
    bool failed = false;
    while (stream->Read(&response)) {
      if (!response.error_message().empty()) {
        std::fprintf(stderr, "meshrt-infer: %s\n", response.error_message().c_str());
        failed = true;
        continue;
      }
      const inference::ModelInferResponse& r = response.infer_response();
      for (int o = 0; o < r.outputs_size() && o < r.raw_output_contents_size(); ++o) {
        if (r.outputs(o).name() != "output_ids") continue;
        const std::string& raw = r.raw_output_contents(o);
        for (size_t at = 0; at + sizeof(int64_t) <= raw.size(); at += sizeof(int64_t)) {
          int64_t t = 0;
          std::memcpy(&t, raw.data() + at, sizeof t);
          std::printf("token %lld\n", static_cast<long long>(t));
        }
      }
      auto reason = r.parameters().find("finish_reason");
      if (reason != r.parameters().end()) std::printf("finish_reason: %s\n", reason->second.string_param().c_str());
      std::fflush(stdout);
    }
    grpc::Status status = stream->Finish();
    if (!status.ok()) return grpc_failed("ModelStreamInfer", status);
    return failed ? 1 : 0;
  }
  inference::ModelMetadataRequest metadata_request;
  metadata_request.set_name(model);
  metadata_request.set_version(version);
  inference::ModelMetadataResponse metadata;
  grpc::Status status = stub->ModelMetadata(grpc_context().get(), metadata_request, &metadata);
  if (!status.ok()) return grpc_failed("ModelMetadata", status);
  if (metadata.inputs_size() < 1) return grpc_failed("ModelMetadata", {grpc::StatusCode::INTERNAL, "the model has no input"});
  const auto& input = metadata.inputs(0);
  std::vector<int64_t> shape{rows};
  for (int d = 1; d < input.shape_size(); ++d) shape.push_back(input.shape(d) < 0 ? extent : input.shape(d));
  HostTensor data = cast_host(HostTensor::full<double>(Shape(shape), value), serving::parse_kserve_datatype(input.datatype()));
  inference::ModelInferRequest request;
  request.set_model_name(model);
  request.set_model_version(version);
  serving::add_raw_input(request, input.name(), data);
  std::printf("ModelInfer %s: %s %s%s of %g (raw contents)\n", model.c_str(), input.name().c_str(), input.datatype().c_str(),
              data.shape().to_string().c_str(), value);
  inference::ModelInferResponse response;
  status = stub->ModelInfer(grpc_context().get(), request, &response);
  if (!status.ok()) return grpc_failed("ModelInfer", status);
  HostTensor output = serving::raw_output(response);  // Error when malformed: reported by the caller
  print_output(response.outputs(0).name(), output, show);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string url = "localhost:8000", model = "matmul_neg", version;
  int64_t rows = 1;
  double value = 1.0;
  int64_t extent = 4;
  bool binary = false;
  int show = 3;
  int64_t generate = 0;
  std::string prompt = "1,2,3";
  bool use_grpc = false;
  meshrt::apps::CommandLine app{"meshrt-infer: one KServe v2 inference request (every input element = --value), and the answer,\n"
                                "over HTTP or (--grpc) gRPC"};
  app.add("--url", url, "server host:port (with --grpc: its gRPC port, e.g. localhost:8001)").show_default();
  app.flag("--grpc", use_grpc, "speak KServe v2 gRPC (raw tensor contents; --generate through ModelStreamInfer)");
  app.add("--model", model, "model name").show_default();
  app.add("--version", version, "model version (default: the server's)");
  app.add("--rows", rows, "rows of the input (the batch axis)").show_default();
  app.add("--value", value, "every input element").show_default();
  app.add("--extent", extent, "the extent of the input's axes of any size after the batch axis (-1 in its metadata, e.g. a sequence length)")
      .show_default();
  app.flag("--binary", binary, "send and receive binary tensor data instead of JSON");
  app.add("--show", show, "rows of the output to print").show_default();
  app.add("--generate", generate, "instead of infer: generate this many tokens (generate_stream), printing each as it comes");
  app.add("--prompt", prompt, "the prompt's token ids for --generate, comma-separated").show_default();
  if (auto exit_code = app.parse(argc, argv)) return *exit_code;
  if (extent < 1 || rows < 1) {
    std::fprintf(stderr, "meshrt-infer: --rows and --extent must be at least 1\n");
    return 2;
  }
  std::vector<int64_t> prompt_ids;
  try {
    std::istringstream in(prompt);
    for (std::string item; std::getline(in, item, ',');) prompt_ids.push_back(std::stoll(item));
  } catch (const std::exception&) {
    std::fprintf(stderr, "meshrt-infer: --prompt must be comma-separated token ids, got \"%s\"\n", prompt.c_str());
    return 2;
  }
  if (use_grpc) {
    try {
      return over_grpc(url, model, version, rows, value, extent, show, generate, prompt_ids);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "meshrt-infer: %s\n", e.what());
      return 1;
    }
  }
  size_t colon = url.rfind(':');
  std::string host = colon == std::string::npos ? url : url.substr(0, colon);
  uint16_t port = colon == std::string::npos ? 8000 : static_cast<uint16_t>(std::stoi(url.substr(colon + 1)));
  try {
    using namespace meshrt;
    serving::HttpClient client(host, port);
    std::string base = "/v2/models/" + model + (version.empty() ? "" : "/versions/" + version);
    if (generate > 0) {
      std::string body = nlohmann::json{{"input_ids", prompt_ids}, {"max_tokens", generate}}.dump();
      std::printf("POST %s/generate_stream: %s\n", base.c_str(), body.c_str());
      std::string pending;
      serving::HttpResponse r = client.request_stream(
          "POST", base + "/generate_stream", body, {{"Content-Type", "application/json"}}, [&](std::string_view chunk) {
            pending += chunk;
            for (size_t end; (end = pending.find("\n\n")) != std::string::npos; pending.erase(0, end + 2)) {
              std::string event = pending.substr(0, end);
              if (event.rfind("data: ", 0) != 0) continue;
              nlohmann::json e = nlohmann::json::parse(event.substr(6));
              for (const auto& t : e.value("output_ids", nlohmann::json::array())) std::printf("token %lld\n", t.get<long long>());
              if (!e["finish_reason"].is_null()) std::printf("finish_reason: %s\n", e["finish_reason"].get<std::string>().c_str());
              std::fflush(stdout);
            }
          });
      if (r.status != 200) {
        std::fprintf(stderr, "meshrt-infer: %d %s\n", r.status, pending.c_str());
        return 1;
      }
      return 0;
    }
    serving::HttpResponse meta = client.request("GET", base);
    if (meta.status != 200) {
      std::fprintf(stderr, "meshrt-infer: GET %s: %d %s\n", base.c_str(), meta.status, meta.body.c_str());
      return 1;
    }
    serving::ModelSignature signature = serving::parse_model_metadata(meta.body);
    const serving::TensorSpec& input = signature.inputs.at(0);
    std::vector<int64_t> shape{rows};
    for (size_t d = 1; d < input.shape.size(); ++d) shape.push_back(input.shape[d] < 0 ? extent : input.shape[d]);
    HostTensor data = cast_host(HostTensor::full<double>(Shape(shape), value), input.dtype);
    serving::HttpPayload request = serving::make_infer_request(input, data, binary);
    serving::HttpHeaders headers = {{"Content-Type", request.content_type}};
    if (request.header_length) headers.emplace_back("Inference-Header-Content-Length", std::to_string(*request.header_length));
    std::printf("POST %s/infer: %s %s%s of %g%s\n", base.c_str(), input.name.c_str(), serving::kserve_datatype(input.dtype),
                data.shape().to_string().c_str(), value, binary ? " (binary)" : "");
    serving::HttpResponse r = client.request("POST", base + "/infer", request.body, headers);
    if (r.status != 200) {
      std::fprintf(stderr, "meshrt-infer: %d %s\n", r.status, r.body.c_str());
      return 1;
    }
    std::optional<size_t> header_length;
    if (auto h = r.header("Inference-Header-Content-Length")) header_length = std::stoull(*h);
    HostTensor output = serving::parse_infer_response(r.body, header_length);
    print_output(signature.outputs.at(0).name, output, show);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "meshrt-infer: %s\n", e.what());
    return 1;
  }
}
