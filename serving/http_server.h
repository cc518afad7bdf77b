// A small HTTP/1.1 server on Boost.Beast with explicit limits: body size,
// header size, header field count, read and idle timeouts. Requests are handed
// to one handler, which answers through a Responder, from any thread, once.
// Connections are kept alive; one request per connection at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace meshrt::serving {

struct HttpServerOptions {
  std::string address = "0.0.0.0";
  uint16_t port = 8000;  // 0: any free port (see HttpServer::port())
  int threads = 4;
  size_t max_body_bytes = 64u << 20;
  uint32_t max_header_bytes = 16u << 10;
  size_t max_header_fields = 100;
  size_t max_connections = 1024;  // more are closed at once
  std::chrono::seconds read_timeout{30};  // to receive a whole request once it started
  std::chrono::seconds idle_timeout{60};  // a kept-alive connection with no request
};

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;
// The value of a header (case-insensitive name), if present.
std::optional<std::string> find_header(const HttpHeaders& headers, const std::string& name);

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query
  std::string body;
  HttpHeaders headers;
  std::optional<std::string> header(const std::string& name) const { return find_header(headers, name); }
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  HttpHeaders headers;
  std::optional<std::string> header(const std::string& name) const { return find_header(headers, name); }
};

using Responder = std::function<void(HttpResponse)>;
using HttpHandler = std::function<void(const HttpRequest&, Responder)>;

class HttpServer {
 public:
  // Binds and listens (throws Error(kUnavailable) if it cannot); serves from run().
  HttpServer(HttpServerOptions options, HttpHandler handler);
  ~HttpServer();
  uint16_t port() const;
  // Serves on options.threads threads until stop(); blocks.
  void run();
  // Stops accepting connections; requests already read are still answered.
  void stop_accepting();
  // Stops everything (pending responses are dropped: call after in_flight() is 0).
  void stop();
  // Requests read but not yet answered and written.
  size_t in_flight() const;

  struct Impl;  // the Beast machinery (http_server.cc)

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace meshrt::serving
