// serving/http_server: the HTTP server in this process, spoken to over loopback
// with raw sockets: RFC 9112 framing (Transfer-Encoding with Content-Length,
// codings, Host), and slow clients that must not lock out the others (a cap per
// source address, header and body timeouts).
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "device/error.h"
#include "serving/http_client.h"
#include "serving/http_server.h"

namespace meshrt::serving {
namespace {

using namespace std::chrono_literals;

// An HttpServer on 127.0.0.1 (and the rest of 127/8: loopback) answering every
// request with 200 and the request's body length.
class Server {
 public:
  explicit Server(HttpServerOptions options = {}) {
    options.address = "0.0.0.0";
    options.port = 0;
    options.threads = 2;
    server_ = std::make_unique<HttpServer>(options, [](const HttpRequest& r, Responder respond) {
      respond({200, "{\"bytes\": " + std::to_string(r.body.size()) + "}", "application/json", {}});
    });
    thread_ = std::thread([this] { server_->run(); });
  }
  ~Server() {
    server_->stop();
    thread_.join();
  }
  uint16_t port() const { return server_->port(); }

 private:
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

// A TCP connection from source (an address of 127/8) to 127.0.0.1:port; -1 on failure.
int connect_from(const char* source, uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, source, &local.sin_addr);
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&remote), sizeof remote) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Everything the server sends until it closes the connection (or timeout).
std::string read_all(int fd, std::chrono::milliseconds timeout) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buffer[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

// Sends raw bytes and returns the whole answer (the server closes after errors).
std::string exchange(uint16_t port, const std::string& request) {
  int fd = connect_from("127.0.0.1", port);
  EXPECT_GE(fd, 0);
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  std::string answer = read_all(fd, 20s);
  ::close(fd);
  return answer;
}

int status_of(const std::string& answer) {
  return answer.size() > 12 && answer.rfind("HTTP/1.1 ", 0) == 0 ? std::stoi(answer.substr(9, 3)) : -1;
}

TEST(HttpFraming, RequestsAreFramedAsRfc9112Says) {
  Server server;
  struct Case {
    const char* name;
    std::string request;
    int status;
    std::string fragment;
  };
  std::vector<Case> cases = {
      {"Transfer-Encoding then Content-Length",
       "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
       400, "never both"},
      {"Content-Length then Transfer-Encoding",
       "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
       400, "never both"},
      {"a final coding other than chunked", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello", 400,
       "does not end in chunked"},
      {"chunked, then another coding", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400,
       "does not end in chunked"},
      {"an unknown coding", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", 501,
       "'foo' is not implemented"},
      {"an unknown coding alone", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n", 501,
       "'foo' is not implemented"},
      {"a known coding we do not decode", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
       501, "'gzip' is not implemented"},
      {"a coding that needs escaping in the JSON body",
       "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: a\"b\\c, chunked\r\n\r\n0\r\n\r\n", 501,
       "{\"error\":\"transfer coding 'a\\\"b\\\\c' is not implemented"},
      {"HTTP/1.1 without Host", "GET /x HTTP/1.1\r\n\r\n", 400, "must carry a Host header"},
      {"a negative Content-Length", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400, "Content-Length"},
  };
  for (const Case& c : cases) {
    std::string answer = exchange(server.port(), c.request);
    EXPECT_EQ(status_of(answer), c.status) << c.name << ": " << answer;
    EXPECT_NE(answer.find(c.fragment), std::string::npos) << c.name << ": " << answer;
    EXPECT_NE(answer.find("Connection: close"), std::string::npos) << c.name << ": the connection must close";
  }
  // What is well framed is served: chunked, a length, HTTP/1.0 without Host.
  EXPECT_EQ(status_of(exchange(server.port(),
                               "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                               "5\r\nhello\r\n0\r\n\r\n")),
            200);
  std::string sized = exchange(server.port(), "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
  EXPECT_EQ(status_of(sized), 200);
  EXPECT_NE(sized.find("{\"bytes\": 5}"), std::string::npos) << sized;
  EXPECT_EQ(status_of(exchange(server.port(), "GET /x HTTP/1.0\r\n\r\n")), 200);
}

// A client that sends its headers one byte at a time is closed when the header
// timeout runs out, and one that stops in its body when the body timeout does.
// The response to HEAD ends with its header (RFC 9112 section 6.3): the next
// response on the connection follows it at once (found by fuzz_http).
TEST(HttpFraming, HeadResponsesHaveNoBody) {
  Server server;
  std::string answer = exchange(server.port(), "HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n"
                                               "GET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(status_of(answer), 200) << answer;
  size_t end = answer.find("\r\n\r\n");
  ASSERT_NE(end, std::string::npos) << answer;
  EXPECT_NE(answer.substr(0, end).find("Content-Length: 12"), std::string::npos) << "the length GET would have: " << answer;
  EXPECT_EQ(answer.compare(end + 4, 9, "HTTP/1.1 "), 0) << answer;
  EXPECT_EQ(answer.substr(answer.size() - 12), "{\"bytes\": 0}") << answer;
}

TEST(SlowClients, HeaderAndBodyTimeoutsCloseThem) {
  HttpServerOptions options;
  options.header_timeout = 600ms;
  options.body_timeout = 600ms;
  Server server(options);
  int slow_header = connect_from("127.0.0.1", server.port());
  ASSERT_GE(slow_header, 0);
  ::send(slow_header, "GET /x HT", 9, MSG_NOSIGNAL);
  int slow_body = connect_from("127.0.0.1", server.port());
  ASSERT_GE(slow_body, 0);
  std::string head = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc";
  ::send(slow_body, head.data(), head.size(), MSG_NOSIGNAL);
  auto start = std::chrono::steady_clock::now();
  std::string a = read_all(slow_header, 20s), b = read_all(slow_body, 20s);
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(a, "") << "closed without an answer";
  EXPECT_EQ(b, "");
  EXPECT_LT(waited, 2 * 2 * 0.6 + 10) << "both closed by their timeouts, not by the test's";
  ::close(slow_header);
  ::close(slow_body);
}

// 2,000 connections from 127.0.0.2 that send a byte a second (slowloris) take
// at most the per-client cap of the server's connections; well-behaved clients
// from 127.0.0.3 keep getting answers all along. The server's defaults.
TEST(SlowClients, OneClientCannotLockOutTheOthers) {
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  if (files.rlim_cur < 4096) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 8192);
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  ::getrlimit(RLIMIT_NOFILE, &files);
  if (files.rlim_cur < 2300) GTEST_SKIP() << "needs 2,300 file descriptors, the limit is " << files.rlim_cur;
  HttpServerOptions defaults;
  Server server(defaults);
  std::vector<int> attackers;
  for (int i = 0; i < 2000; ++i) {
    int fd = connect_from("127.0.0.2", server.port());
    if (fd >= 0) {
      ::send(fd, "G", 1, MSG_NOSIGNAL);
      attackers.push_back(fd);
    }
  }
  EXPECT_GE(attackers.size(), 1900u) << "the kernel accepts the connections; the server decides";
  std::atomic<bool> stop{false};
  std::thread drip([&] {  // a byte a second on every connection still open
    for (int second = 0; !stop; ++second) {
      for (int fd : attackers) ::send(fd, "E", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      for (int i = 0; i < 10 && !stop; ++i) std::this_thread::sleep_for(100ms);
    }
  });
  int answered = 0, sent = 0;
  auto until = std::chrono::steady_clock::now() + 12s;  // past the header timeout (10 s): the cap alone, then both
  while (std::chrono::steady_clock::now() < until) {
    ++sent;
    try {
      HttpClient client("127.0.0.1", server.port(), std::chrono::seconds(5));
      client.set_source_address("127.0.0.3");
      if (client.request("GET", "/v2/health/live").status == 200) ++answered;
    } catch (const Error&) {
    }
    std::this_thread::sleep_for(50ms);
  }
  stop = true;
  drip.join();
  for (int fd : attackers) ::close(fd);
  std::printf("well-behaved requests answered during the attack: %d of %d\n", answered, sent);
  EXPECT_EQ(answered, sent);
  EXPECT_GT(sent, 50);
}

}  // namespace
}  // namespace meshrt::serving
