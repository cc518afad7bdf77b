// serving/: the KServe v2 wire format against a model signature (several
// inputs, errors naming the input) and the HTTP route table (parameters,
// percent-decoding, 400/404/405), without a server.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "serving/http_router.h"
#include "serving/protocol.h"

namespace meshrt::serving {
namespace {

using json = nlohmann::json;

HttpResponse error(int status, const std::string& message) { return {status, error_json(message), "application/json", {}}; }

struct Answer {
  int status = 0;
  std::string body;
  std::optional<std::string> allow;
};

Answer route(const HttpRouter& router, const std::string& method, const std::string& target) {
  Answer a;
  router.handle({method, target, "", {}}, [&](HttpResponse r) {
    a.status = r.status;
    a.body = r.body;
    a.allow = r.header("Allow");
  });
  return a;
}

TEST(HttpRouter, MatchesPatternsWithDecodedParameters) {
  HttpRouter router(error);
  std::vector<std::string> seen;
  auto record = [&](const std::string& tag) {
    return [&seen, tag](const HttpRequest&, const RouteParams& p, const Responder& respond) {
      std::string line = tag;
      for (const auto& [k, v] : p) line += " " + k + "=" + v;
      seen.push_back(line);
      respond({200, "{}", "application/json", {}});
    };
  };
  router.add("GET", "/v2/models/{model}", record("meta"));
  router.add("GET", "/v2/models/{model}/versions/{version}", record("meta"));
  router.add("POST", "/v2/models/{model}/infer", record("infer"));
  router.add("GET", "/v2/health/live", record("live"));

  EXPECT_EQ(route(router, "GET", "/v2/models/m").status, 200);
  EXPECT_EQ(route(router, "GET", "/v2/models/my%20model/versions/2?x=1").status, 200);
  EXPECT_EQ(route(router, "GET", "/v2/models/a%2Fb").status, 200);  // an encoded slash stays in its segment
  EXPECT_EQ(route(router, "POST", "/v2//models/m/infer/").status, 200);  // empty segments are ignored
  EXPECT_EQ(seen, (std::vector<std::string>{"meta model=m", "meta model=my model version=2", "meta model=a/b",
                                            "infer model=m"}));

  Answer wrong_method = route(router, "GET", "/v2/models/m/infer");
  EXPECT_EQ(wrong_method.status, 405);
  EXPECT_EQ(wrong_method.allow, "POST");
  EXPECT_NE(wrong_method.body.find("use POST for /v2/models/m/infer"), std::string::npos);
  EXPECT_EQ(route(router, "DELETE", "/v2/health/live").status, 405);
  // A GET route answers HEAD (the server drops the body), and says so in Allow.
  EXPECT_EQ(route(router, "HEAD", "/v2/health/live").status, 200);
  EXPECT_EQ(seen.back(), "live");
  EXPECT_EQ(route(router, "DELETE", "/v2/health/live").allow, "GET, HEAD");
  EXPECT_EQ(route(router, "HEAD", "/v2/models/m/infer").status, 405);  // HEAD only where GET is
  Answer missing = route(router, "GET", "/v3/whatever");
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(missing.body.find("no route for /v3/whatever"), std::string::npos);
  Answer bad = route(router, "GET", "/v2/models/m%zz");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("bad percent-encoding"), std::string::npos);
  EXPECT_EQ(route(router, "GET", "/v2/models/m%2").status, 400);
}

TEST(HttpRouter, PercentDecoding) {
  EXPECT_EQ(percent_decode("a%41%62%2f%2F+c"), "aAb//+c");
  EXPECT_EQ(percent_decode(""), "");
  EXPECT_FALSE(percent_decode("%").has_value());
  EXPECT_FALSE(percent_decode("%4").has_value());
  EXPECT_FALSE(percent_decode("%g0").has_value());
}

ModelSignature two_inputs() {
  ModelSignature m;
  m.name = "pair";
  m.inputs = {{"ids", DType::kI64, {-1, 3}}, {"mask", DType::kBool, {-1, 3}}};
  m.outputs = {{"y", DType::kF32, {-1, 2}}, {"z", DType::kI32, {-1}}};
  m.parameters = {{"rank_size", int64_t{2}}, {"dynamic_batching", true}, {"note", std::string("x")}};
  return m;
}

TEST(Protocol, SeveralInputsInSignatureOrder) {
  ModelSignature m = two_inputs();
  std::string body = R"({"id": "r", "inputs": [
      {"name": "mask", "datatype": "BOOL", "shape": [2, 3], "data": [true, false, true, false, false, true]},
      {"name": "ids", "datatype": "INT64", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}]})";
  InferRequest r = parse_infer_request(body, std::nullopt, m, 8);
  ASSERT_EQ(r.inputs.size(), 2u);
  EXPECT_EQ(r.inputs[0].to_vector<int64_t>(), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(r.inputs[1].dtype(), DType::kBool);
  auto error_of = [&](const std::string& text) {
    try {
      parse_infer_request(text, std::nullopt, m, 8);
    } catch (const RequestError& e) {
      EXPECT_EQ(e.status(), 400);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(R"({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]})")
                .find("input 'mask' is missing"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"inputs": [{"name": "q", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]})")
                .find("has no input 'q' (its inputs are 'ids', 'mask')"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
                                   {"name": "mask", "datatype": "BOOL", "shape": [2, 3], "data": [true, true, true, true, true, true]}]})")
                .find("input 'mask' has 2 rows but the inputs before it have 1"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]})")
                .find("input 'ids': expected shape [n, 3] with n >= 1 (the model's [-1, 3]), got [1, 4]"),
            std::string::npos);
  // The checks' order: the name before a missing datatype, the datatype before the shape.
  EXPECT_NE(error_of(R"({"inputs": [{"name": "bogus"}]})").find("has no input 'bogus'"), std::string::npos);
  EXPECT_NE(error_of(R"({"inputs": [{"name": "ids", "datatype": "FP32"}]})").find("expected datatype INT64, got FP32"),
            std::string::npos);
}

// A shape of more elements than the body has bytes cannot have come with it:
// refused before anything is allocated (2^40 int64 would be 8 TiB).
TEST(Protocol, ShapesLargerThanTheBodyAreRefusedUnallocated) {
  ModelSignature m;
  m.name = "tokens";
  m.inputs = {{"input_ids", DType::kI64, {-1, -1}}};
  m.outputs = {{"y", DType::kF32, {-1, 2}}};
  std::string body = R"({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 1099511627776], "data": [1]}]})";
  try {
    parse_infer_request(body, std::nullopt, m, 8);
    ADD_FAILURE() << "no error";
  } catch (const RequestError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_NE(std::string(e.what()).find("holds more elements than the request's " + std::to_string(body.size()) + " bytes"),
              std::string::npos)
        << e.what();
  }
  // A shape whose count overflows 64 bits, binary: the same.
  std::string header = R"({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [4611686018427387904, 8],
                          "parameters": {"binary_data_size": 0}}]})";
  EXPECT_THROW(parse_infer_request(header, header.size(), m, 1LL << 62), RequestError);
}

TEST(Protocol, ResponsesAndMetadataCarryEveryOutput) {
  ModelSignature m = two_inputs();
  InferRequest request;
  request.id = "r7";
  HostTensor y = HostTensor::from_vector<float>({1.5f, -2.0f}, {1, 2});
  HostTensor z = HostTensor::from_vector<int32_t>({7}, {1});
  json out = json::parse(make_infer_response(m, request, {y, z}).body);
  EXPECT_EQ(out["id"], "r7");
  EXPECT_EQ(out["outputs"][1]["name"], "z");
  EXPECT_EQ(out["outputs"][1]["datatype"], "INT32");
  EXPECT_EQ(out["outputs"][0]["data"], json({1.5, -2.0}));
  request.binary_output = true;
  HttpPayload binary = make_infer_response(m, request, {y, z});
  ASSERT_TRUE(binary.header_length.has_value());
  EXPECT_EQ(binary.body.size() - *binary.header_length, 8u + 4u);

  json meta = json::parse(model_metadata_json(m));
  EXPECT_EQ(meta["inputs"][1]["datatype"], "BOOL");
  EXPECT_EQ(meta["parameters"]["rank_size"], 2);
  EXPECT_EQ(meta["parameters"]["dynamic_batching"], true);
  EXPECT_EQ(meta["parameters"]["note"], "x");
  ModelSignature back = parse_model_metadata(model_metadata_json(m));
  EXPECT_EQ(back.inputs.size(), 2u);
  EXPECT_EQ(back.outputs[1].name, "z");
  EXPECT_EQ(back.inputs[0].shape, (std::vector<int64_t>{-1, 3}));
}

}  // namespace
}  // namespace meshrt::serving
