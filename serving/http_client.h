// A small blocking HTTP/1.1 client (Boost.Beast) for the load generator and the
// tests: one kept-alive connection, reconnecting when the server closes it.
#pragma once

#include <chrono>
#include <memory>
#include <string>
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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace meshrt::serving
