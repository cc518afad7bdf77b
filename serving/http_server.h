// A small HTTP/1.1 server on Boost.Beast with explicit limits: body size,
// header size, header field count, connections in all and per client address,
// header, body, idle and write timeouts. Requests are handed to one handler,
// which answers through a Responder, from any thread, once. Connections are
// kept alive; one request per connection at a time.
//
// Framing follows RFC 9112: a request with both Transfer-Encoding and
// Content-Length, or whose last transfer coding is not chunked, gets 400 and the
// connection is closed; a transfer coding other than chunked gets 501; an
// HTTP/1.1 request without Host gets 400.
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
  size_t max_connections = 1024;            // more are closed at once
  size_t max_connections_per_client = 256;  // from one source address; more are closed at once
  // A new connection must deliver its request's headers within header_timeout,
  // then its body within body_timeout; a kept-alive connection may wait
  // idle_timeout for its next request (headers included); a response must be
  // written within write_timeout. A slow client is closed when one runs out.
  std::chrono::milliseconds header_timeout{10000};
  std::chrono::milliseconds body_timeout{60000};
  std::chrono::milliseconds idle_timeout{60000};
  std::chrono::milliseconds write_timeout{30000};
  // Deprecated (before header_timeout and body_timeout): when set, the deadline
  // of both the headers and the body.
  std::chrono::seconds read_timeout{0};
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
