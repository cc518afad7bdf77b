// Fuzz target for the HTTP request path: the bytes of an input are what a client
// sends to a real HttpServer (serving/http_server.h) over loopback, on a
// connection of their own, before it half-closes and reads until the server
// closes. The server (one per process, on 127.0.0.1, small limits so that 413
// and 431 are reachable) routes through an HttpRouter the KServe v2 routes the
// server has (health, server and model metadata, model ready, infer) for one
// model "m" (x: FP32 [-1, 4] -> y: FP32 [-1, 2]); infer parses the request
// (parse_header_length, parse_infer_request) and answers zeros.
//
// What comes back must be a sequence of well-formed HTTP/1.1 responses (the
// last one may be cut short only when the connection was reset), with a status
// the server may give (never 500: no handler throws), a JSON body wherever the
// content type says JSON (the binary infer answer: its JSON header), none
// after a HEAD request, nothing after a response that says Connection: close; once the connection is closed,
// no request may remain in flight; and a connection that got no answer at all
// must not have been refused for a leaked connection count (a health request
// on a new connection then still gets 200). Built as a libFuzzer target
// (MESHRT_FUZZ=ON, clang) or with the driver fuzz_main.cc; seeds in corpus/http.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "device/error.h"
#include "serving/http_router.h"
#include "serving/http_server.h"
#include "serving/protocol.h"

namespace {

using namespace meshrt::serving;
namespace http = boost::beast::http;

HttpResponse json_response(int status, std::string body) { return {status, std::move(body), "application/json", {}}; }
HttpResponse error_response(int status, const std::string& message) { return json_response(status, error_json(message)); }

constexpr int64_t kMaxRows = 8;

ModelSignature signature() {
  ModelSignature s;
  s.name = "m";
  s.inputs = {{"x", meshrt::DType::kF32, {-1, 4}}};
  s.outputs = {{"y", meshrt::DType::kF32, {-1, 2}}};
  return s;
}

// The server of this process, serving from a thread of its own until the process ends.
struct Fixture {
  ModelSignature model = signature();
  HttpRouter router{error_response};
  std::unique_ptr<HttpServer> server;
  uint16_t port = 0;

  Fixture() {
    // Same routes as the server's front end (server.cc), for one model.
    router.add("GET", "/v2", [](const HttpRequest&, const RouteParams&, const Responder& respond) {
      respond(json_response(200, server_metadata_json()));
    });
    router.add("GET", "/v2/health/live", [](const HttpRequest&, const RouteParams&, const Responder& respond) {
      respond(json_response(200, R"({"live": true})"));
    });
    router.add("GET", "/v2/health/ready", [](const HttpRequest&, const RouteParams&, const Responder& respond) {
      respond(json_response(200, R"({"ready": true})"));
    });
    for (const std::string& base : {std::string("/v2/models/{model}"), std::string("/v2/models/{model}/versions/{version}")}) {
      router.add("GET", base, model_route([this](const HttpRequest&, const Responder& respond) {
        respond(json_response(200, model_metadata_json(model)));
      }));
      router.add("GET", base + "/ready", model_route([](const HttpRequest&, const Responder& respond) {
        respond(json_response(200, model_ready_json("m", true)));
      }));
      router.add("POST", base + "/infer", model_route([this](const HttpRequest& r, const Responder& respond) {
        infer(r, respond);
      }));
    }
    HttpServerOptions options;
    options.address = "127.0.0.1";
    options.port = 0;
    options.threads = 1;
    options.max_body_bytes = 2048;
    options.max_header_bytes = 1024;
    options.max_header_fields = 16;
    options.header_timeout = options.body_timeout = options.idle_timeout = options.write_timeout =
        std::chrono::milliseconds(5000);
    server = std::make_unique<HttpServer>(options, [this](const HttpRequest& r, Responder respond) {
      router.handle(r, respond);
    });
    port = server->port();
    std::thread([this] { server->run(); }).detach();
  }

  RouteHandler model_route(std::function<void(const HttpRequest&, const Responder&)> f) {
    return [f](const HttpRequest& request, const RouteParams& params, const Responder& respond) {
      auto version = params.find("version");
      if (params.at("model") != "m") return respond(error_response(404, "unknown model '" + params.at("model") + "'"));
      if (version != params.end() && version->second != "1") {
        return respond(error_response(404, "model 'm' has no version '" + version->second + "'"));
      }
      f(request, respond);
    };
  }

  void infer(const HttpRequest& request, const Responder& respond) {
    InferRequest parsed;
    try {
      std::optional<size_t> header_length = parse_header_length(request.header("Inference-Header-Content-Length"));
      parsed = parse_infer_request(request.body, header_length, model, kMaxRows);
    } catch (const RequestError& e) {
      return respond(error_response(e.status(), e.what()));
    }
    meshrt::HostTensor y = meshrt::HostTensor::zeros(meshrt::Shape({parsed.inputs.at(0).dim(0), 2}), meshrt::DType::kF32);
    HttpPayload payload = make_infer_response(model, parsed, {y});
    HttpResponse r{200, std::move(payload.body), payload.content_type, {}};
    if (payload.header_length) r.headers.emplace_back("Inference-Header-Content-Length", std::to_string(*payload.header_length));
    respond(std::move(r));
  }
};

[[noreturn]] void fail(const std::string& what, std::string_view received = {}) {
  std::fprintf(stderr, "fuzz_http: %s\n", what.c_str());
  if (!received.empty()) {
    std::fprintf(stderr, "received (%zu bytes):\n%.*s\n", received.size(), static_cast<int>(std::min<size_t>(received.size(), 2000)),
                 received.data());
  }
  std::abort();
}

// Sends data on a new connection, half-closes, and returns what came back
// until the server closed the connection; reset: it ended in a reset.
std::string exchange(uint16_t port, std::string_view data, bool& reset) {
  reset = false;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(std::string("socket: ") + std::strerror(errno));
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&remote), sizeof remote) != 0) {
    // A signal (libFuzzer's timer) may interrupt connect: the connection then
    // goes on by itself; wait until it is writable and read its outcome.
    if (errno != EINTR) fail(std::string("connect: ") + std::strerror(errno));
    pollfd p{fd, POLLOUT, 0};
    int ready = 0;
    for (int tries = 0; tries < 1000 && ready <= 0; ++tries) {
      ready = ::poll(&p, 1, 10000);
      if (ready < 0 && errno != EINTR) fail(std::string("poll after connect: ") + std::strerror(errno));
    }
    int error = 0;
    socklen_t length = sizeof error;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
    if (ready <= 0 || error != 0) fail(std::string("connect: ") + std::strerror(error ? error : ETIMEDOUT));
  }
  // Closed with a reset, so that no connection lingers in TIME_WAIT (millions
  // of them would use up the ports).
  linger no_linger{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &no_linger, sizeof no_linger);
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server closed early (it answered 400 and closed, say)
    sent += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  char buffer[8192];
  for (;;) {
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
    if (left <= 0) fail("the server neither answered nor closed the connection within 10 s", out);
    pollfd p{fd, POLLIN, 0};
    int ready = ::poll(&p, 1, left);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (errno != ECONNRESET) fail(std::string("recv: ") + std::strerror(errno), out);
      reset = true;
      break;
    }
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

bool allowed_status(unsigned status) {
  switch (status) {
    case 200: case 400: case 404: case 405: case 413: case 431: case 501: return true;
    default: return false;
  }
}

// For each request of input, in order, as far as they parse: whether it is a
// HEAD request (whose response has no body, RFC 9112 section 6.3).
std::vector<bool> head_requests(std::string_view input) {
  std::vector<bool> out;
  size_t at = 0;
  while (at < input.size() && out.size() < 256) {
    http::request_parser<http::string_body> parser;
    parser.eager(true);
    parser.header_limit(1 << 16);
    parser.body_limit(1 << 24);
    boost::beast::error_code ec;
    while (!parser.is_done()) {
      size_t n = parser.put(boost::asio::buffer(input.data() + at, input.size() - at), ec);
      at += n;
      if (ec == http::error::need_more && n > 0) continue;
      if (ec || n == 0) {
        // A request whose header was read is answered as what it is, even when
        // its body is refused (a HEAD with an unknown transfer coding gets a 501
        // without a body); the requests after it are never read.
        if (parser.is_header_done()) out.push_back(parser.get().method() == http::verb::head);
        return out;
      }
    }
    out.push_back(parser.get().method() == http::verb::head);
  }
  return out;
}

// Checks what came back for input; returns the number of complete responses.
int check_responses(std::string_view input, std::string_view received, bool reset) {
  const std::vector<bool> head = head_requests(input);
  int count = 0;
  size_t at = 0;
  while (at < received.size()) {
    http::response_parser<http::string_body> parser;
    bool to_head = static_cast<size_t>(count) < head.size() && head[static_cast<size_t>(count)];
    parser.skip(to_head);
    parser.eager(true);
    parser.header_limit(1 << 16);
    parser.body_limit(1 << 24);
    boost::beast::error_code ec;
    bool truncated = false;
    while (!parser.is_done()) {
      size_t n = parser.put(boost::asio::buffer(received.data() + at, received.size() - at), ec);
      at += n;
      if (ec == http::error::need_more || (!ec && n == 0)) {
        if (n == 0) {
          truncated = true;
          break;
        }
        ec = {};
        continue;
      }
      if (ec) fail("a malformed response: " + ec.message(), received);
    }
    if (truncated) {
      if (!reset) fail("a response cut short, though the connection was closed cleanly", received);
      return count;
    }
    const auto& r = parser.get();
    ++count;
    if (r.version() != 11) fail("a response that is not HTTP/1.1", received);
    if (!allowed_status(r.result_int())) fail("a response with status " + std::to_string(r.result_int()), received);
    std::string type(r[http::field::content_type]);
    const std::string& body = r.body();
    if (to_head) {
      // no body to look at
    } else if (type == "application/json") {
      if (!nlohmann::json::accept(body)) fail("a JSON response whose body is not JSON", received);
    } else if (type == "application/octet-stream") {
      std::optional<size_t> header_length;
      try {
        header_length = parse_header_length(std::string(r["Inference-Header-Content-Length"]));
      } catch (const RequestError&) {
        fail("a binary response without a good Inference-Header-Content-Length", received);
      }
      if (!header_length || *header_length > body.size() ||
          !nlohmann::json::accept(std::string_view(body).substr(0, *header_length))) {
        fail("a binary response whose JSON header is not JSON", received);
      }
    } else {
      fail("a response of content type '" + type + "'", received);
    }
    // (A request refused before its header was read, 431 say, is not known to
    // be HEAD: the body of that response, which closes, may follow.)
    if (!r.keep_alive() && at != received.size() && !to_head) {
      fail("bytes after a response that closes the connection", received);
    }
    if (!r.keep_alive()) break;
  }
  return count;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* fixture = new Fixture();  // never destroyed: its thread serves until the process ends
  std::string_view input(reinterpret_cast<const char*>(data), size);
  bool reset = false;
  std::string received = exchange(fixture->port, input, reset);
  int responses = check_responses(input, received, reset);
  // Every request read was answered and written before the server closed.
  for (int i = 0; fixture->server->in_flight() != 0; ++i) {
    if (i == 10000) fail("a request is still in flight 10 s after its connection closed");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (responses == 0) {
    std::string probe = exchange(fixture->port, "GET /v2/health/live HTTP/1.1\r\nHost: fuzz\r\n\r\n", reset);
    if (probe.rfind("HTTP/1.1 200 ", 0) != 0) fail("the server refuses a health request after an input", probe);
  }
  return 0;
}
