#include "serving/http_server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <map>
#include <mutex>
#include <string_view>
#include <thread>

#include "device/error.h"
#include "io/json_limits.h"

namespace meshrt::serving {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

std::optional<std::string> find_header(const HttpHeaders& headers, const std::string& name) {
  for (const auto& [k, v] : headers) {
    if (beast::iequals(k, name)) return v;
  }
  return std::nullopt;
}

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  HttpServerOptions options;
  HttpHandler handler;
  net::io_context context;
  tcp::acceptor acceptor;
  std::atomic<size_t> in_flight{0};
  std::atomic<size_t> connections{0};
  std::atomic<bool> accepting{true};
  net::steady_timer retry_timer{context};
  std::mutex clients_mutex;
  std::map<net::ip::address, size_t> clients;  // open connections per source address

  Impl(HttpServerOptions o, HttpHandler h)
      : options(std::move(o)), handler(std::move(h)), context(std::max(1, options.threads)),
        acceptor(net::make_strand(context)) {
    if (options.read_timeout.count() > 0) options.header_timeout = options.body_timeout = options.read_timeout;
  }

  // Counts a connection of client; false (not counted) when over a limit.
  bool admit(const net::ip::address& client) {
    std::lock_guard<std::mutex> lock(clients_mutex);
    if (connections.load() >= options.max_connections) return false;
    size_t& mine = clients[client];
    if (mine >= options.max_connections_per_client) {
      if (mine == 0) clients.erase(client);
      return false;
    }
    ++mine;
    ++connections;
    return true;
  }
  void release(const net::ip::address& client) {
    std::lock_guard<std::mutex> lock(clients_mutex);
    auto it = clients.find(client);
    if (it != clients.end() && --it->second == 0) clients.erase(it);
    --connections;
  }

  void accept();
};

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string_view::npos ? std::string() : std::string(s.substr(b, e - b + 1));
}

// RFC 9112 section 6: what a request's framing headers make of it, or an error
// status and message (the connection is closed after it).
struct FramingError {
  int status = 0;
  std::string message;
};
std::optional<FramingError> check_framing(const http::request_parser<http::string_body>& parser) {
  const auto& message = parser.get();
  if (message.version() >= 11 && message.find(http::field::host) == message.end()) {
    return FramingError{400, "an HTTP/1.1 request must carry a Host header (RFC 9112 section 3.2)"};
  }
  auto te = message.find(http::field::transfer_encoding);
  if (te == message.end()) return std::nullopt;
  // The codings, in order (parameters dropped); several fields are one list.
  std::vector<std::string> codings;
  for (auto it = message.find(http::field::transfer_encoding);
       it != message.end() && it->name() == http::field::transfer_encoding; ++it) {
    std::string_view value(it->value().data(), it->value().size());
    size_t at = 0;
    while (at <= value.size()) {
      size_t comma = value.find(',', at);
      std::string_view item = value.substr(at, comma == std::string_view::npos ? std::string_view::npos : comma - at);
      std::string coding = lower(trim(item.substr(0, item.find(';'))));
      if (!coding.empty()) codings.push_back(coding);
      if (comma == std::string_view::npos) break;
      at = comma + 1;
    }
  }
  static const std::vector<std::string> known = {"chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress"};
  for (const std::string& c : codings) {
    if (std::find(known.begin(), known.end(), c) == known.end()) {
      return FramingError{501, "transfer coding '" + c + "' is not implemented (RFC 9112 section 6.1)"};
    }
  }
  if (codings.empty() || codings.back() != "chunked") {
    return FramingError{400, "Transfer-Encoding '" + std::string(te->value()) +
                                 "' does not end in chunked: the request body has no length (RFC 9112 section 6.3)"};
  }
  for (const std::string& c : codings) {
    if (c != "chunked") {
      return FramingError{501, "transfer coding '" + c + "' is not implemented: send the body chunked only"};
    }
  }
  return std::nullopt;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, net::ip::address client, std::shared_ptr<HttpServer::Impl> server)
      : stream_(std::move(socket)), client_(std::move(client)), server_(std::move(server)) {}
  ~Session() { server_->release(client_); }

  void start() { read(); }

 private:
  void read() {
    head_ = false;
    parser_.emplace();
    parser_->body_limit(server_->options.max_body_bytes);
    parser_->header_limit(server_->options.max_header_bytes);
    stream_.expires_after(first_request_ ? server_->options.header_timeout : server_->options.idle_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  // True when ec ends the connection quietly (the client went, or was too slow).
  static bool closed(const beast::error_code& ec) {
    return ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted ||
           ec == net::error::connection_reset || ec == net::error::eof || ec == http::error::partial_message;
  }

  // Answers a failed read; true when it did (the connection then closes).
  bool reply_to_read_error(const beast::error_code& ec) {
    if (closed(ec)) {
      close();
      return true;
    }
    if (ec == http::error::body_limit) {
      reply_and_close(413, "the request body exceeds the limit of " + std::to_string(server_->options.max_body_bytes) +
                               " bytes");
      return true;
    }
    if (ec == http::error::header_limit) {
      reply_and_close(431, "the request headers exceed the limit of " +
                               std::to_string(server_->options.max_header_bytes) + " bytes");
      return true;
    }
    if (ec == http::error::bad_content_length || ec == http::error::bad_transfer_encoding) {
      reply_and_close(400, "malformed HTTP request: " + ec.message() +
                               " (one Content-Length, or a Transfer-Encoding ending in chunked, never both: "
                               "RFC 9112 section 6.3)");
      return true;
    }
    if (ec) {
      reply_and_close(400, "malformed HTTP request: " + ec.message());
      return true;
    }
    return false;
  }

  void on_header(beast::error_code ec) {
    first_request_ = false;
    if (reply_to_read_error(ec)) return;
    head_ = parser_->get().method() == http::verb::head;
    size_t fields = static_cast<size_t>(std::distance(parser_->get().begin(), parser_->get().end()));
    if (fields > server_->options.max_header_fields) {
      return reply_and_close(431, "the request has " + std::to_string(fields) +
                                      " header fields, more than the limit of " +
                                      std::to_string(server_->options.max_header_fields));
    }
    if (auto error = check_framing(*parser_)) return reply_and_close(error->status, error->message);
    stream_.expires_after(server_->options.body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (reply_to_read_error(ec)) return;
    http::request<http::string_body> message = parser_->release();
    keep_alive_ = message.keep_alive();
    HttpRequest request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    request.body = std::move(message.body());
    for (const auto& f : message) request.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    stream_.expires_never();  // the answer may take as long as inference takes
    ++server_->in_flight;
    auto answered = std::make_shared<std::atomic<bool>>(false);
    Responder respond = [self = shared_from_this(), answered](HttpResponse response) {
      if (answered->exchange(true)) return;  // exactly once
      net::post(self->stream_.get_executor(), [self, response = std::move(response)]() mutable {
        self->write(std::move(response), self->keep_alive_, true);
      });
    };
    try {
      server_->handler(request, respond);
    } catch (const std::exception& e) {
      respond({500, std::string("{\"error\": \"internal error\"}"), "application/json", {}});
    }
  }

  void reply_and_close(int status, const std::string& message) {
    ++server_->in_flight;
    // The message may quote the request (a transfer coding, say): escaped, and
    // bytes that are not UTF-8 replaced, so that the body stays JSON.
    std::string body = io::json_limits::dump(nlohmann::json{{"error", message}});
    write({status, body, "application/json", {}}, false, true);
  }

  void write(HttpResponse r, bool keep_alive, bool counted) {
    auto response = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(r.status), 11);
    response->set(http::field::server, "meshrt");
    response->set(http::field::content_type, r.content_type);
    for (const auto& [k, v] : r.headers) response->set(k, v);
    response->keep_alive(keep_alive);
    response->body() = std::move(r.body);
    response->prepare_payload();
    // The response to HEAD ends with its header (RFC 9112 section 6.3): its
    // Content-Length is the body's, but a body sent would be read as the next
    // response by a client that keeps the connection.
    if (head_) response->body().clear();
    stream_.expires_after(server_->options.write_timeout);
    http::async_write(stream_, *response, [self = shared_from_this(), response, counted](beast::error_code ec, size_t) {
      if (counted) --self->server_->in_flight;
      if (ec || !response->keep_alive()) return self->close();
      self->read();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  net::ip::address client_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<HttpServer::Impl> server_;
  bool keep_alive_ = true;
  bool first_request_ = true;
  bool head_ = false;  // the request being answered is HEAD
};

}  // namespace

void HttpServer::Impl::accept() {
  acceptor.async_accept(net::make_strand(context), [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
    if (!self->accepting.load()) return;
    if (ec) {
      // Out of file descriptors or similar: wait a little instead of spinning.
      self->retry_timer.expires_after(std::chrono::milliseconds(50));
      self->retry_timer.async_wait([self](beast::error_code) {
        if (self->accepting.load()) self->accept();
      });
      return;
    }
    beast::error_code peer_error;
    tcp::endpoint peer = socket.remote_endpoint(peer_error);
    if (peer_error || !self->admit(peer.address())) {
      beast::error_code ignored;
      socket.close(ignored);  // gone already, or over a limit: refuse this connection
    } else {
      std::make_shared<Session>(std::move(socket), peer.address(), self)->start();
    }
    self->accept();
  });
}

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : impl_(std::make_shared<Impl>(std::move(options), std::move(handler))) {
  beast::error_code ec;
  auto address = net::ip::make_address(impl_->options.address, ec);
  MESHRT_CHECK(!ec, ErrorKind::kInvalidArgument, "HTTP address '", impl_->options.address, "': ", ec.message());
  tcp::endpoint endpoint(address, impl_->options.port);
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(net::socket_base::max_listen_connections, ec);
  MESHRT_CHECK(!ec, ErrorKind::kUnavailable, "cannot listen on ", impl_->options.address, ":", impl_->options.port,
               ": ", ec.message());
}

HttpServer::~HttpServer() { stop(); }

uint16_t HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void HttpServer::run() {
  impl_->accept();
  std::vector<std::thread> threads;
  for (int i = 1; i < impl_->options.threads; ++i) threads.emplace_back([this] { impl_->context.run(); });
  impl_->context.run();
  for (auto& t : threads) t.join();
}

void HttpServer::stop_accepting() {
  if (!impl_->accepting.exchange(false)) return;
  net::post(impl_->acceptor.get_executor(), [impl = impl_] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
  });
}

void HttpServer::stop() {
  stop_accepting();
  impl_->context.stop();
}

size_t HttpServer::in_flight() const { return impl_->in_flight.load(); }

}  // namespace meshrt::serving
