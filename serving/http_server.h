// A small HTTP/1.1 server on Boost.Beast with explicit limits: body size,
// header size, header field count, connections in all and per client address,
// header, body, idle and write timeouts. Requests are handed to one handler,
// which answers through a Responder, from any thread, once. Connections are
// kept alive; one request per connection at a time.
//
// A response may also stream its body (HttpStream): its status and headers go
// first, then each chunk as the handler writes it (server-sent events, tokens as
// they are generated).
//
// Framing follows RFC 9112: a request with both Transfer-Encoding and
// Content-Length, or whose last transfer coding is not chunked, gets 400 and the
// connection is closed; a transfer coding other than chunked gets 501; an
// HTTP/1.1 request without Host gets 400.
//
// Content codings (RFC 9110 section 8.4): a request body sent with
// Content-Encoding gzip or deflate (or identity) reaches the handler decoded,
// without that header; decoding stops at max_body_bytes (413), data that does
// not decode gets 400, another coding 415. A response body of at least
// compress_min_bytes is compressed as the request's Accept-Encoding allows
// (gzip preferred, q=0 respected), with Content-Encoding and Vary:
// Accept-Encoding, unless the handler set a Content-Encoding of its own (a
// relayed response); streamed responses (HttpStream) are sent as written.
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
  size_t max_body_bytes = 64u << 20;  // as received, and once decoded (Content-Encoding)
  bool compress_responses = true;     // as Accept-Encoding allows (see above)
  size_t compress_min_bytes = 1024;   // smaller bodies go as they are
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

class HttpStream;

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  HttpHeaders headers;
  // When set, the body is this stream's chunks instead of `body` (which is then
  // ignored): see HttpStream. Set by a handler; HttpClient leaves it empty.
  std::shared_ptr<HttpStream> stream = nullptr;
  std::optional<std::string> header(const std::string& name) const { return find_header(headers, name); }
};

using Responder = std::function<void(HttpResponse)>;
using HttpHandler = std::function<void(const HttpRequest&, Responder)>;

class HttpServer {
 public:
  // Binds and listens (throws Error(kUnavailable) if it cannot); serves from run().
  HttpServer(HttpServerOptions options, HttpHandler handler);
  // Stops, and frees every connection (call it after run() returned).
  ~HttpServer();
  uint16_t port() const;
  // Serves on options.threads threads until stop(); blocks.
  void run();
  // Stops accepting connections; requests already read are still answered.
  void stop_accepting();
  // Stops everything (pending responses are dropped: call after in_flight() is 0).
  // Streams still open are ended for good: their write() returns false from now
  // on, and their connections are closed without the last chunk.
  void stop();
  // Requests read but not yet answered and written; a streamed response counts
  // until its last chunk is written or its client is gone.
  size_t in_flight() const;

  struct Impl;  // the Beast machinery (http_server.cc)

 private:
  std::shared_ptr<Impl> impl_;
};

// The body of a streamed response, written over time from any thread. The
// handler makes one, answers with it, then writes to it and closes it:
//
//   auto stream = std::make_shared<HttpStream>();
//   respond({200, "", "text/event-stream", {{"Cache-Control", "no-cache"}}, stream});
//   ... from any thread, as tokens come:
//   if (!stream->write("data: {...}\n\n")) stop generating;  // the client is gone
//   stream->close();
//
// The server writes the status and headers at once, then the chunks as they are
// written (a write posts to the connection's strand: no thread per stream, no
// polling; chunks written while one is on its way go out together), and the
// last chunk after close(). To an HTTP/1.1 client the body is chunked
// (Transfer-Encoding: chunked; the connection stays open for the next request);
// to an HTTP/1.0 client it runs until the server closes the connection. The
// response to HEAD, or with a status that has no body (1xx, 204, 304), is its
// headers alone; its stream ends with them (write() returns false). Content-Length
// and Transfer-Encoding among the handler's headers are replaced.
//
// write_timeout applies to each chunk: a client that reads nothing for that long
// is closed. A client is gone when a write to it fails or times out, or when it
// closes its side of the connection (a client that shuts down its sending side
// while waiting for a streamed response is taken as gone); then write() returns
// false and the request stops counting in in_flight().
//
// Chunks wait in memory until written: a producer much faster than its client
// should pace itself (tokens are small). Dropping the last reference without
// close() aborts the response: the connection is closed without the last chunk,
// so the client sees the body incomplete. A stream is the body of one response.
// write() returning true means queued, not delivered.
class HttpStream {
 public:
  HttpStream();
  ~HttpStream();
  HttpStream(const HttpStream&) = delete;
  HttpStream& operator=(const HttpStream&) = delete;

  // Queues chunk (empty: nothing is sent). False, and nothing queued, once the
  // stream is closed, its client is gone or the server stopped: stop producing.
  bool write(std::string chunk);
  // Ends the body after the chunks queued (the last chunk). Idempotent.
  void close();
  // Neither closed nor ended by the server (client gone, server stopped).
  bool open() const;

  struct State;  // shared with the connection writing it (http_server.cc)

 private:
  friend struct HttpServer::Impl;
  std::shared_ptr<State> state_;
};

}  // namespace meshrt::serving
