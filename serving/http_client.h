// A small blocking HTTP/1.1 client (Boost.Beast) for the load generator and the
// tests: one kept-alive connection, reconnecting when the server closes it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "serving/http_server.h"

namespace meshrt::serving {

class HttpClient {
 public:
  HttpClient(std::string host, uint16_t port, std::chrono::seconds timeout = std::chrono::seconds(60));
  ~HttpClient();
  // Connects from this local address (e.g. another address of 127/8 on
  // loopback), from the next connection on.
  void set_source_address(const std::string& address);
  // Sends one request and returns the response. Throws Error(kUnavailable) when
  // the server cannot be reached or the exchange fails.
  HttpResponse request(const std::string& method, const std::string& target, const std::string& body = "",
                       const std::vector<std::pair<std::string, std::string>>& headers = {});
  // Sends one request and reads its response incrementally: on_chunk gets the
  // body's bytes as they arrive (as much as one read brings: the server's chunks
  // may come split or together), before this returns the status and headers
  // (the body empty). For streamed responses (HttpStream). Throws
  // Error(kUnavailable) like request(), also when the connection breaks before
  // the body's end (after some of it went to on_chunk), and passes on what
  // on_chunk throws (the connection is dropped then).
  HttpResponse request_stream(const std::string& method, const std::string& target, const std::string& body,
                              const std::vector<std::pair<std::string, std::string>>& headers,
                              const std::function<void(std::string_view)>& on_chunk);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace meshrt::serving
