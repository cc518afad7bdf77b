// serving/http_server: the HTTP server in this process, spoken to over loopback
// with raw sockets: RFC 9112 framing (Transfer-Encoding with Content-Length,
// codings, Host), slow clients that must not lock out the others (a cap per
// source address, header and body timeouts), and streamed responses (HttpStream:
// chunks as they are written, clients that go, stop() with streams open).
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "device/error.h"
#include "serving/http_client.h"
#include "serving/http_server.h"
#include "zlib_util.h"

namespace meshrt::serving {
namespace {

using namespace std::chrono_literals;

// Answers with 200 and the request's body length.
void answer_with_length(const HttpRequest& r, Responder respond) {
  respond({200, "{\"bytes\": " + std::to_string(r.body.size()) + "}", "application/json", {}});
}

// An HttpServer on 127.0.0.1 (and the rest of 127/8: loopback) answering every
// request with handler (by default, answer_with_length).
class Server {
 public:
  explicit Server(HttpServerOptions options = {}, HttpHandler handler = answer_with_length) {
    options.address = "0.0.0.0";
    options.port = 0;
    options.threads = 2;
    server_ = std::make_unique<HttpServer>(options, std::move(handler));
    thread_ = std::thread([this] { server_->run(); });
  }
  ~Server() {
    server_->stop();
    thread_.join();
  }
  uint16_t port() const { return server_->port(); }
  HttpServer& http() { return *server_; }

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


// ---- Streamed responses (HttpStream) ----

// Threads that produce streams for the handlers of a test; joined when it ends
// (declare before the Server: the server stops first, so that writes fail).
class Producers {
 public:
  ~Producers() {
    for (auto& t : threads_) t.join();
  }
  void spawn(std::function<void()> f) {
    std::lock_guard<std::mutex> lock(mutex_);
    threads_.emplace_back(std::move(f));
  }

 private:
  std::mutex mutex_;
  std::vector<std::thread> threads_;
};

// A flag that one thread sets and another waits for, with a timeout.
class Latch {
 public:
  void set() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      set_ = true;
    }
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return set_; });
  }
  bool is_set() {
    std::lock_guard<std::mutex> lock(mutex_);
    return set_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Whether pred() becomes true within timeout (polled).
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// Reads from fd, appending to out, until out holds needle (true), or the
// connection closes or timeout runs out (false).
bool read_until(int fd, const std::string& needle, std::string& out, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buffer[4096];
  while (out.find(needle) == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) return false;
    out.append(buffer, static_cast<size_t>(n));
  }
  return true;
}

// The payload of a chunked body that ends with its last chunk and nothing after
// it; nullopt when it is not one.
std::optional<std::string> decode_chunked(const std::string& body) {
  std::string out;
  size_t at = 0;
  for (;;) {
    size_t eol = body.find("\r\n", at);
    if (eol == std::string::npos || eol == at) return std::nullopt;
    std::string size_text = body.substr(at, eol - at);
    if (size_text.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) return std::nullopt;
    size_t size = std::stoul(size_text, nullptr, 16);
    at = eol + 2;
    if (size == 0) return body.compare(at, std::string::npos, "\r\n") == 0 ? std::optional<std::string>(out) : std::nullopt;
    if (body.size() < at + size + 2 || body.compare(at + size, 2, "\r\n") != 0) return std::nullopt;
    out.append(body, at, size);
    at += size + 2;
  }
}

std::string event(int i) { return "data: {\"token\": " + std::to_string(i) + "}\n\n"; }

// Answers /stream with a stream that produce() writes from a thread of
// producers, and anything else with answer_with_length.
HttpHandler streaming(Producers& producers, std::function<void(std::shared_ptr<HttpStream>)> produce) {
  return [&producers, produce](const HttpRequest& r, Responder respond) {
    if (r.target != "/stream") return answer_with_length(r, respond);
    auto stream = std::make_shared<HttpStream>();
    respond({200, "", "text/event-stream", {{"Cache-Control", "no-cache"}}, stream});
    producers.spawn([stream, produce] { produce(stream); });
  };
}

// Events written with delays reach the client as they are written: the
// producer waits for the client to have the first before it writes the rest.
TEST(Streaming, EventsArriveAsTheyAreWritten) {
  constexpr int kEvents = 6;
  Latch first_seen;
  std::atomic<bool> handshake{false};
  std::chrono::steady_clock::time_point last_written, first_arrived;
  Producers producers;
  Server server({}, streaming(producers, [&](std::shared_ptr<HttpStream> stream) {
                  for (int i = 0; i < kEvents; ++i) {
                    EXPECT_TRUE(stream->write(event(i)));
                    if (i == 0) handshake = first_seen.wait(10s);
                    std::this_thread::sleep_for(30ms);
                  }
                  last_written = std::chrono::steady_clock::now();
                  stream->close();
                  EXPECT_FALSE(stream->write("after close"));
                }));
  HttpClient client("127.0.0.1", server.port());
  std::string body;
  std::vector<std::string> pieces;
  HttpResponse r = client.request_stream("POST", "/stream", "{}", {}, [&](std::string_view data) {
    if (body.empty()) first_arrived = std::chrono::steady_clock::now();
    body.append(data);
    pieces.emplace_back(data);
    if (body.find(event(0)) != std::string::npos) first_seen.set();
  });
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/event-stream");
  EXPECT_EQ(r.header("Transfer-Encoding"), "chunked");
  EXPECT_EQ(r.header("Cache-Control"), "no-cache");
  EXPECT_FALSE(r.header("Content-Length").has_value());
  std::string expected;
  for (int i = 0; i < kEvents; ++i) expected += event(i);
  EXPECT_EQ(body, expected);
  EXPECT_TRUE(handshake) << "the first event must reach the client while the stream is still open";
  EXPECT_LT(first_arrived, last_written);
  EXPECT_GE(pieces.size(), 3u) << "the events came over time, not in one piece";
  // The connection is kept: the next request on it (and the stream no longer counts).
  EXPECT_EQ(client.request("POST", "/plain", "abc").body, "{\"bytes\": 3}");
  // (in_flight() drops once the write completes, which may be just after the client has read it)
  EXPECT_TRUE(eventually([&] { return server.http().in_flight() == 0; }, 5s));
}

// On the wire: chunked framing, a chunk sent while the producer waits, the last
// chunk after close(), then the next request on the same connection.
TEST(Streaming, ChunkedOnTheWireAndKeptAlive) {
  Latch go;
  Producers producers;
  Server server({}, streaming(producers, [&](std::shared_ptr<HttpStream> stream) {
                  stream->write("hello");
                  go.wait(10s);
                  stream->write("world!");
                  stream->close();
                }));
  int fd = connect_from("127.0.0.1", server.port());
  ASSERT_GE(fd, 0);
  std::string request = "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string answer;
  ASSERT_TRUE(read_until(fd, "\r\n\r\n5\r\nhello\r\n", answer, 10s)) << answer;
  size_t end = answer.find("\r\n\r\n");
  std::string head = answer.substr(0, end + 2);
  EXPECT_EQ(status_of(answer), 200) << head;
  EXPECT_NE(head.find("Transfer-Encoding: chunked\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find("Content-Type: text/event-stream\r\n"), std::string::npos) << head;
  EXPECT_EQ(head.find("Content-Length"), std::string::npos) << head;
  EXPECT_EQ(head.find("Connection: close"), std::string::npos) << head;
  std::this_thread::sleep_for(100ms);
  std::string more = read_all(fd, 100ms);
  EXPECT_EQ(more, "") << "nothing more until the producer writes";
  EXPECT_EQ(server.http().in_flight(), 1u) << "an open stream counts";
  go.set();
  ASSERT_TRUE(read_until(fd, "0\r\n\r\n", answer, 10s)) << answer;
  std::string body = answer.substr(end + 4);
  EXPECT_EQ(body, "5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n");
  EXPECT_EQ(decode_chunked(body), "helloworld!");
  EXPECT_TRUE(eventually([&] { return server.http().in_flight() == 0; }, 5s));
  // Kept alive: the next request on this connection.
  request = "POST /plain HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string next = read_all(fd, 10s);
  EXPECT_EQ(status_of(next), 200) << next;
  EXPECT_NE(next.find("{\"bytes\": 2}"), std::string::npos) << next;
  ::close(fd);
}

// Requests pipelined behind a stream are answered after it, in order: one sent
// with the stream's request, one sent while the stream is being written (the
// background read takes it in).
TEST(Streaming, PipelinedRequestsWaitForTheStream) {
  Latch go;
  Producers producers;
  Server server({}, streaming(producers, [&](std::shared_ptr<HttpStream> stream) {
                  stream->write("first");
                  go.wait(10s);
                  stream->write("second");
                  stream->close();
                }));
  int fd = connect_from("127.0.0.1", server.port());
  ASSERT_GE(fd, 0);
  std::string requests = "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n"
                         "POST /plain HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\na";
  ::send(fd, requests.data(), requests.size(), MSG_NOSIGNAL);
  std::string answer;
  ASSERT_TRUE(read_until(fd, "5\r\nfirst\r\n", answer, 10s)) << answer;
  std::string third = "POST /plain HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
  ::send(fd, third.data(), third.size(), MSG_NOSIGNAL);
  std::this_thread::sleep_for(100ms);  // for the background read to take it in
  go.set();
  answer += read_all(fd, 10s);  // until the server closes, after the third
  ::close(fd);
  size_t stream_end = answer.find("6\r\nsecond\r\n0\r\n\r\n");
  size_t second = answer.find("{\"bytes\": 1}");
  size_t third_at = answer.find("{\"bytes\": 3}");
  ASSERT_NE(stream_end, std::string::npos) << answer;
  EXPECT_NE(second, std::string::npos) << answer;
  EXPECT_NE(third_at, std::string::npos) << answer;
  EXPECT_LT(stream_end, second) << answer;
  EXPECT_LT(second, third_at) << answer;
}

// To an HTTP/1.0 client the body is not chunked: it ends when the server closes
// the connection.
TEST(Streaming, Http10GetsTheBodyUntilClose) {
  Producers producers;
  Server server({}, streaming(producers, [&](std::shared_ptr<HttpStream> stream) {
                  stream->write("one ");
                  std::this_thread::sleep_for(50ms);
                  stream->write("two ");
                  std::this_thread::sleep_for(50ms);
                  stream->close();
                }));
  int fd = connect_from("127.0.0.1", server.port());
  ASSERT_GE(fd, 0);
  std::string request = "GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  auto start = std::chrono::steady_clock::now();
  std::string answer = read_all(fd, 20s);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s) << "the server closed the connection";
  ::close(fd);
  size_t end = answer.find("\r\n\r\n");
  ASSERT_NE(end, std::string::npos) << answer;
  std::string head = answer.substr(0, end + 2);
  EXPECT_EQ(status_of(answer), 200) << head;
  EXPECT_EQ(head.find("Transfer-Encoding"), std::string::npos) << head;
  EXPECT_EQ(head.find("Content-Length"), std::string::npos) << head;
  EXPECT_NE(head.find("Connection: close\r\n"), std::string::npos) << head;
  EXPECT_EQ(answer.substr(end + 4), "one two ");
  EXPECT_TRUE(eventually([&] { return server.http().in_flight() == 0; }, 5s));
}

// A client that goes mid-stream: the producer's next writes fail soon, and the
// request stops counting.
TEST(Streaming, AClientThatGoesStopsTheProducer) {
  std::atomic<bool> refused{false};
  std::atomic<int> written{0};
  Producers producers;
  Server server({}, streaming(producers, [&](std::shared_ptr<HttpStream> stream) {
                  auto until = std::chrono::steady_clock::now() + 30s;
                  while (std::chrono::steady_clock::now() < until) {
                    if (!stream->write(event(written))) {
                      refused = true;
                      break;
                    }
                    ++written;
                    std::this_thread::sleep_for(10ms);
                  }
                  EXPECT_FALSE(stream->open());
                }));
  int fd = connect_from("127.0.0.1", server.port());
  ASSERT_GE(fd, 0);
  std::string request = "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string answer;
  ASSERT_TRUE(read_until(fd, event(2), answer, 10s)) << answer;
  EXPECT_EQ(server.http().in_flight(), 1u);
  ::close(fd);
  auto gone = std::chrono::steady_clock::now();
  EXPECT_TRUE(eventually([&] { return refused.load(); }, 5s)) << "write() still succeeds after " << written << " events";
  std::printf("write() failed %.0f ms after the client closed\n",
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - gone).count());
  EXPECT_TRUE(eventually([&] { return server.http().in_flight() == 0; }, 5s));
}

// A stream whose producer is between events (nothing to write) still notices
// its client going: open() turns false.
TEST(Streaming, AnIdleStreamNoticesItsClientGoing) {
  std::atomic<bool> noticed{false};
  Producers producers;
  Server server({}, streaming(producers, [&](std::shared_ptr<HttpStream> stream) {
                  stream->write(event(0));
                  noticed = eventually([&] { return !stream->open(); }, 20s);
                }));
  int fd = connect_from("127.0.0.1", server.port());
  ASSERT_GE(fd, 0);
  std::string request = "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string answer;
  ASSERT_TRUE(read_until(fd, event(0), answer, 10s)) << answer;
  ::close(fd);
  EXPECT_TRUE(eventually([&] { return noticed.load(); }, 5s));
  EXPECT_TRUE(eventually([&] { return server.http().in_flight() == 0; }, 5s));
}

// write_timeout bounds each chunk, not the response: a stream slower than it
// in all is served whole, and a client that reads nothing is let go.
TEST(Streaming, TheWriteTimeoutIsPerChunk) {
  HttpServerOptions options;
  options.write_timeout = 300ms;
  std::atomic<bool> refused{false};
  Producers producers;
  Server server(options, [&](const HttpRequest& r, Responder respond) {
    auto stream = std::make_shared<HttpStream>();
    respond({200, "", "application/octet-stream", {}, stream});
    if (r.target == "/slow") {
      producers.spawn([stream] {
        for (int i = 0; i < 8; ++i) {
          stream->write(event(i));
          std::this_thread::sleep_for(100ms);
        }
        stream->close();
      });
    } else {  // as much as it can, until the client is gone
      producers.spawn([stream, &refused] {
        std::string block(64 << 10, 'x');
        auto until = std::chrono::steady_clock::now() + 30s;
        while (std::chrono::steady_clock::now() < until) {
          if (!stream->write(block)) {
            refused = true;
            return;
          }
          std::this_thread::sleep_for(5ms);
        }
      });
    }
  });
  HttpClient client("127.0.0.1", server.port());
  std::string body;
  HttpResponse r = client.request_stream("GET", "/slow", "", {}, [&](std::string_view data) { body.append(data); });
  std::string expected;
  for (int i = 0; i < 8; ++i) expected += event(i);
  EXPECT_EQ(body, expected) << "800 ms of stream under a 300 ms write timeout";

  int fd = connect_from("127.0.0.1", server.port());
  ASSERT_GE(fd, 0);
  int small = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  std::string request = "GET /flood HTTP/1.1\r\nHost: a\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);  // and never read
  EXPECT_TRUE(eventually([&] { return refused.load(); }, 20s)) << "a client that reads nothing is closed";
  EXPECT_TRUE(eventually([&] { return server.http().in_flight() == 0; }, 5s));
  ::close(fd);
}

// The response to HEAD is the headers alone: its stream ends with them, and
// the next request follows on the connection. A stream dropped without close()
// breaks its response off: the client sees it incomplete.
TEST(Streaming, HeadAndAbandonedStreams) {
  std::atomic<bool> head_refused{false};
  Producers producers;
  Server server({}, [&](const HttpRequest& r, Responder respond) {
    if (r.target == "/plain") return answer_with_length(r, respond);
    auto stream = std::make_shared<HttpStream>();
    respond({200, "", "text/event-stream", {}, stream});
    if (r.target == "/stream") {
      producers.spawn([stream, &head_refused] {
        head_refused = eventually([&] { return !stream->write(event(0)); }, 10s);
      });
    } else {  // "/abandoned": written to, never closed, dropped
      producers.spawn([stream]() mutable {
        stream->write(event(0));
        std::this_thread::sleep_for(50ms);
        stream.reset();
      });
    }
  });
  std::string answer = exchange(server.port(), "HEAD /stream HTTP/1.1\r\nHost: a\r\n\r\n"
                                               "GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(status_of(answer), 200) << answer;
  size_t end = answer.find("\r\n\r\n");
  ASSERT_NE(end, std::string::npos) << answer;
  EXPECT_EQ(answer.compare(end + 4, 9, "HTTP/1.1 "), 0) << answer;
  EXPECT_EQ(answer.substr(answer.size() - 12), "{\"bytes\": 0}") << answer;
  EXPECT_TRUE(eventually([&] { return head_refused.load(); }, 10s));

  HttpClient client("127.0.0.1", server.port());
  std::string body;
  EXPECT_THROW(client.request_stream("GET", "/abandoned", "", {}, [&](std::string_view data) { body.append(data); }),
               Error);
  EXPECT_TRUE(eventually([&] { return server.http().in_flight() == 0; }, 5s));
  EXPECT_EQ(client.request("POST", "/plain", "abcd").body, "{\"bytes\": 4}") << "the client connects again";
}

// Many streams at once on the server's two threads, their events interleaved.
TEST(Streaming, ManyAtOnce) {
  constexpr int kStreams = 16, kEvents = 20;
  Producers producers;
  Server server({}, streaming(producers, [&](std::shared_ptr<HttpStream> stream) {
                  for (int i = 0; i < kEvents; ++i) {
                    stream->write(event(i));
                    std::this_thread::sleep_for(5ms);
                  }
                  stream->close();
                }));
  std::string expected;
  for (int i = 0; i < kEvents; ++i) expected += event(i);
  std::vector<std::thread> clients;
  std::atomic<int> whole{0};
  for (int c = 0; c < kStreams; ++c) {
    clients.emplace_back([&] {
      HttpClient client("127.0.0.1", server.port());
      for (int round = 0; round < 2; ++round) {  // twice on one connection
        std::string body;
        client.request_stream("GET", "/stream", "", {}, [&](std::string_view data) { body.append(data); });
        if (body == expected) ++whole;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(whole, 2 * kStreams);
  EXPECT_TRUE(eventually([&] { return server.http().in_flight() == 0; }, 5s));
}

size_t open_fds() {
  size_t n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (dirent* e = ::readdir(dir)) n += e->d_name[0] != '.';
  ::closedir(dir);
  return n;
}

// stop() with a stream open (its producer holds it, writes nothing) and a
// kept-alive connection returns at once; the stream's writes fail from then on;
// once the server is destroyed its sockets are all closed, connections included.
TEST(Streaming, StopWithAStreamOpenReturnsAndFreesAll) {
  size_t fds = open_fds();
  std::shared_ptr<HttpStream> held;
  Latch answered;
  {
    Producers producers;
    auto server = std::make_unique<Server>(HttpServerOptions{}, streaming(producers, [&](std::shared_ptr<HttpStream> s) {
                                             s->write(event(0));
                                             held = s;
                                             answered.set();
                                           }));
    HttpClient kept("127.0.0.1", server->port());
    EXPECT_EQ(kept.request("POST", "/plain", "x").status, 200);
    int fd = connect_from("127.0.0.1", server->port());
    ASSERT_GE(fd, 0);
    std::string request = "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n";
    ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    std::string answer;
    ASSERT_TRUE(read_until(fd, event(0), answer, 10s)) << answer;
    ASSERT_TRUE(answered.wait(10s));
    EXPECT_TRUE(eventually([&] { return server->http().in_flight() == 1; }, 5s));
    auto start = std::chrono::steady_clock::now();
    server.reset();  // stop(), run() returns, destroyed
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    EXPECT_FALSE(held->open());
    EXPECT_FALSE(held->write(event(1)));
    std::string rest;
    read_until(fd, "never", rest, 2s);
    EXPECT_EQ(rest.find("0\r\n\r\n"), std::string::npos) << "closed without the last chunk: " << rest;
    ::close(fd);
  }
  held.reset();
  EXPECT_EQ(open_fds(), fds) << "sockets of the server left open";
}

// curl, if installed, reads the stream as chunked and the events as sent.
TEST(Streaming, Curl) {
  if (std::system("command -v curl >/dev/null 2>&1") != 0) GTEST_SKIP() << "no curl";
  Producers producers;
  Server server({}, streaming(producers, [&](std::shared_ptr<HttpStream> stream) {
                  for (int i = 0; i < 3; ++i) {
                    stream->write(event(i));
                    std::this_thread::sleep_for(20ms);
                  }
                  stream->close();
                }));
  auto run = [&](const std::string& flags) {
    std::string command = "curl -s -N " + flags + " http://127.0.0.1:" + std::to_string(server.port()) + "/stream";
    std::string out;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) return out;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
    EXPECT_EQ(::pclose(pipe), 0) << command;
    return out;
  };
  std::string expected = event(0) + event(1) + event(2);
  EXPECT_EQ(run(""), expected);
  std::string raw = run("--raw");
  EXPECT_EQ(decode_chunked(raw), expected) << raw;
}

// ---- Content codings (RFC 9110 section 8.4) ---------------------------------

// Answers with the body it got, its Content-Encoding header (there should be
// none once decoded) in X-Got-Encoding, and its Content-Length in X-Got-Length.
void echo(const HttpRequest& r, Responder respond) {
  HttpHeaders headers = {{"X-Got-Encoding", r.header("Content-Encoding").value_or("none")},
                         {"X-Got-Length", r.header("Content-Length").value_or("none")}};
  respond({200, r.body, "application/octet-stream", headers});
}

// A text that compresses well and is easy to compare, of about n bytes.
std::string sample_text(size_t n) {
  std::string out;
  for (int i = 0; out.size() < n; ++i) out += "{\"row\": " + std::to_string(i) + ", \"value\": -48.0}\n";
  return out;
}

TEST(ContentCoding, GzipAndDeflateRequestBodiesAreDecoded) {
  Server server({}, echo);
  HttpClient client("127.0.0.1", server.port());
  std::string body = sample_text(100000);
  struct Case {
    const char* encoding;
    std::string sent;
  };
  std::vector<Case> cases = {{"gzip", testing::gzip(body)},
                             {"x-gzip", testing::gzip(body)},
                             {"deflate", testing::deflate_zlib(body)},
                             {"GZip", testing::gzip(body)},  // codings are case-insensitive
                             {"identity", body},
                             {"gzip, identity", testing::gzip(body)},
                             {"deflate, gzip", testing::gzip(testing::deflate_zlib(body))},  // applied in order
                             // gzip members one after another (RFC 1952 section 2.2) are one body
                             {"gzip", testing::gzip(body.substr(0, 50000)) + testing::gzip(body.substr(50000))}};
  for (const Case& c : cases) {
    HttpResponse r = client.request("POST", "/x", c.sent, {{"Content-Encoding", c.encoding}});
    ASSERT_EQ(r.status, 200) << c.encoding << ": " << r.body;
    EXPECT_EQ(r.body.size(), body.size()) << c.encoding;
    EXPECT_TRUE(r.body == body) << c.encoding << ": the handler gets the body decoded";
    EXPECT_EQ(r.header("X-Got-Encoding"), "none") << c.encoding << ": the header goes with the coding";
    EXPECT_EQ(r.header("X-Got-Length"), std::to_string(body.size())) << c.encoding;
  }
  // An empty body with a coding (nothing was sent): served as it is.
  EXPECT_EQ(client.request("POST", "/x", "", {{"Content-Encoding", "gzip"}}).status, 200);
}

TEST(ContentCoding, BadBodiesAreRefusedAndTheConnectionServesOn) {
  HttpServerOptions options;
  options.max_body_bytes = 1 << 20;
  Server server(options, echo);
  HttpClient client("127.0.0.1", server.port());
  // A coding it does not know: 415, saying which it knows.
  HttpResponse unknown = client.request("POST", "/x", "abc", {{"Content-Encoding", "br"}});
  EXPECT_EQ(unknown.status, 415) << unknown.body;
  EXPECT_NE(unknown.body.find("'br' is not supported"), std::string::npos) << unknown.body;
  EXPECT_EQ(unknown.header("Accept-Encoding"), "gzip, deflate, identity");
  EXPECT_EQ(client.request("POST", "/x", testing::gzip("abc"), {{"Content-Encoding", "gzip, compress"}}).status, 415);
  // Data that is not what it says: 400.
  std::string text = sample_text(10000);
  std::string gzipped = testing::gzip(text);
  struct Case {
    const char* name;
    const char* encoding;
    std::string sent;
    std::string fragment;
  };
  std::string corrupt = gzipped;
  corrupt[corrupt.size() / 2] ^= 0x55;
  corrupt[corrupt.size() / 2 + 1] ^= 0x55;
  std::vector<Case> cases = {
      {"not gzip at all", "gzip", "hello, world", "not valid gzip"},
      {"corrupt in the middle", "gzip", corrupt, "gzip"},
      {"truncated", "gzip", gzipped.substr(0, gzipped.size() / 2), "truncated"},
      {"gzip sent as deflate", "deflate", gzipped, "not valid deflate"},
      {"bytes after the end", "deflate", testing::deflate_zlib(text) + "xyz", "after the end"},
  };
  for (const Case& c : cases) {
    HttpResponse r = client.request("POST", "/x", c.sent, {{"Content-Encoding", c.encoding}});
    EXPECT_EQ(r.status, 400) << c.name << ": " << r.body;
    EXPECT_NE(r.body.find(c.fragment), std::string::npos) << c.name << ": " << r.body;
  }
  // A zip bomb: 256 KiB that inflate to 256 MiB are refused with 413 at the
  // limit, without inflating the rest.
  std::string bomb;
  {
    z_stream z{};
    ASSERT_EQ(deflateInit2(&z, 9, Z_DEFLATED, testing::kGzipBits, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string zeros(1 << 20, '\0'), out(1 << 20, '\0');
    for (int i = 0; i < 256; ++i) {
      z.next_in = reinterpret_cast<Bytef*>(zeros.data());
      z.avail_in = static_cast<uInt>(zeros.size());
      int flush = i == 255 ? Z_FINISH : Z_NO_FLUSH;
      do {
        z.next_out = reinterpret_cast<Bytef*>(out.data());
        z.avail_out = static_cast<uInt>(out.size());
        deflate(&z, flush);
        bomb.append(out.data(), out.size() - z.avail_out);
      } while (z.avail_out == 0);
    }
    deflateEnd(&z);
  }
  ASSERT_LT(bomb.size(), 1u << 20) << "the bomb is small on the wire";
  auto start = std::chrono::steady_clock::now();
  HttpResponse bombed = client.request("POST", "/x", bomb, {{"Content-Encoding", "gzip"}});
  EXPECT_EQ(bombed.status, 413) << bombed.body;
  EXPECT_NE(bombed.body.find("exceeds the limit of 1048576 bytes"), std::string::npos) << bombed.body;
  std::printf("[ MEASURE  ] a gzip body of %zu bytes inflating to 256 MiB refused in %.3f s\n", bomb.size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  // Just under the limit is fine.
  std::string fits((1 << 20) - 10, 'a');
  HttpResponse r = client.request("POST", "/x", testing::gzip(fits), {{"Content-Encoding", "gzip"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body.size(), fits.size());
}

TEST(ContentCoding, ResponsesAreCompressedAsTheClientAccepts) {
  const std::string big = sample_text(20000), small = "{\"small\": true}";
  Producers producers;
  Server server({}, [&](const HttpRequest& r, Responder respond) {
    if (r.target == "/small") return respond({200, small, "application/json", {}});
    if (r.target == "/encoded") return respond({200, big, "application/json", {{"Content-Encoding", "br"}}});
    if (r.target == "/vary") return respond({200, big, "application/json", {{"Vary", "Origin"}}});
    if (r.target == "/stream") {
      auto stream = std::make_shared<HttpStream>();
      respond({200, "", "text/event-stream", {}, stream});
      producers.spawn([stream, &big] {
        stream->write(big);
        stream->close();
      });
      return;
    }
    respond({200, big, "application/json", {}});
  });
  HttpClient client("127.0.0.1", server.port());
  struct Case {
    const char* accept;  // nullptr: no Accept-Encoding
    const char* coding;  // the expected Content-Encoding, nullptr: none
  };
  std::vector<Case> cases = {
      {nullptr, nullptr},
      {"gzip", "gzip"},
      {"deflate", "deflate"},
      {"deflate, gzip", "gzip"},             // equal weights: gzip
      {"gzip;q=0.5, deflate", "deflate"},    // the higher weight
      {"gzip;q=0, deflate;q=0.1", "deflate"},
      {"gzip; q=0, deflate;Q=0", nullptr},   // q=0: not acceptable
      {"*", "gzip"},
      {"*;q=0.3, gzip;q=0", "deflate"},      // "*" stands for the codings not named
      {"identity", nullptr},
      {"br", nullptr},
      {"gzip;q=zero", nullptr},              // a malformed weight accepts nothing
      {"x-gzip", "gzip"},
  };
  for (const Case& c : cases) {
    std::vector<std::pair<std::string, std::string>> headers;
    if (c.accept) headers.emplace_back("Accept-Encoding", c.accept);
    HttpResponse r = client.request("GET", "/big", "", headers);
    std::string name = c.accept ? c.accept : "(none)";
    ASSERT_EQ(r.status, 200) << name;
    EXPECT_EQ(r.header("Vary"), "Accept-Encoding") << name << ": on every response that could be compressed";
    if (!c.coding) {
      EXPECT_FALSE(r.header("Content-Encoding").has_value()) << name;
      EXPECT_TRUE(r.body == big) << name;
      continue;
    }
    EXPECT_EQ(r.header("Content-Encoding"), c.coding) << name;
    EXPECT_LT(r.body.size(), big.size() / 4) << name << ": it compresses";
    std::string decoded = std::string(c.coding) == "gzip" ? testing::gunzip(r.body) : testing::inflate_zlib(r.body);
    EXPECT_TRUE(decoded == big) << name << ": zlib decodes it to the body";
  }
  const std::vector<std::pair<std::string, std::string>> gzip_please = {{"Accept-Encoding", "gzip"}};
  // Small bodies go as they are, without Vary.
  HttpResponse small_r = client.request("GET", "/small", "", gzip_please);
  EXPECT_EQ(small_r.body, small);
  EXPECT_FALSE(small_r.header("Content-Encoding").has_value());
  EXPECT_FALSE(small_r.header("Vary").has_value());
  // A body the handler encoded itself (a relayed one) is left alone.
  HttpResponse encoded = client.request("GET", "/encoded", "", gzip_please);
  EXPECT_EQ(encoded.header("Content-Encoding"), "br");
  EXPECT_TRUE(encoded.body == big);
  // The handler's Vary is kept, Accept-Encoding added to it.
  EXPECT_EQ(client.request("GET", "/vary", "", gzip_please).header("Vary"), "Origin, Accept-Encoding");
  // A streamed response is sent as written.
  std::string streamed;
  HttpResponse s = client.request_stream("GET", "/stream", "", gzip_please, [&](std::string_view d) { streamed.append(d); });
  EXPECT_EQ(s.status, 200);
  EXPECT_FALSE(s.header("Content-Encoding").has_value());
  EXPECT_TRUE(streamed == big);
  // HEAD: the headers GET would have, the compressed length, no body.
  std::string head = exchange(server.port(), "HEAD /big HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n"
                                             "GET /small HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(status_of(head), 200) << head;
  EXPECT_NE(head.find("Content-Encoding: gzip"), std::string::npos) << head;
  size_t end = head.find("\r\n\r\n");
  ASSERT_NE(end, std::string::npos) << head;
  EXPECT_EQ(head.compare(end + 4, 9, "HTTP/1.1 "), 0) << "no body after HEAD's headers: " << head;
  // Off by option.
  HttpServerOptions off;
  off.compress_responses = false;
  Server plain(off, [&](const HttpRequest&, Responder respond) { respond({200, big, "application/json", {}}); });
  HttpResponse p = HttpClient("127.0.0.1", plain.port()).request("GET", "/big", "", gzip_please);
  EXPECT_FALSE(p.header("Content-Encoding").has_value());
  EXPECT_TRUE(p.body == big);
}

}  // namespace
}  // namespace meshrt::serving
