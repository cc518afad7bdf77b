#include "serving/http_server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <thread>

#include "device/error.h"

namespace meshrt::serving {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

std::optional<std::string> find_header(const HttpHeaders& headers, const std::string& name) {
  auto lower = [](std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
  };
  std::string wanted = lower(name);
  for (const auto& [k, v] : headers) {
    if (lower(k) == wanted) return v;
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

  Impl(HttpServerOptions o, HttpHandler h)
      : options(std::move(o)), handler(std::move(h)), context(std::max(1, options.threads)),
        acceptor(net::make_strand(context)) {}

  void accept();
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<HttpServer::Impl> server)
      : stream_(std::move(socket)), server_(std::move(server)) {
    ++server_->connections;
  }
  ~Session() { --server_->connections; }

  void start() { read(); }

 private:
  void read() {
    parser_.emplace();
    parser_->body_limit(server_->options.max_body_bytes);
    parser_->header_limit(server_->options.max_header_bytes);
    stream_.expires_after(first_request_ ? server_->options.read_timeout : server_->options.idle_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    first_request_ = false;
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::eof) {
      return close();
    }
    if (ec == http::error::body_limit) {
      return reply_and_close(413, "the request body exceeds the limit of " +
                                      std::to_string(server_->options.max_body_bytes) + " bytes");
    }
    if (ec == http::error::header_limit) {
      return reply_and_close(431, "the request headers exceed the limit of " +
                                      std::to_string(server_->options.max_header_bytes) + " bytes");
    }
    if (ec) return reply_and_close(400, "malformed HTTP request: " + ec.message());
    http::request<http::string_body> message = parser_->release();
    size_t fields = static_cast<size_t>(std::distance(message.begin(), message.end()));
    if (fields > server_->options.max_header_fields) {
      return reply_and_close(431, "the request has " + std::to_string(fields) + " header fields, more than the limit of " +
                                      std::to_string(server_->options.max_header_fields));
    }
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
    std::string body = "{\"error\": \"" + message + "\"}";
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
    stream_.expires_after(server_->options.read_timeout);
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
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<HttpServer::Impl> server_;
  bool keep_alive_ = true;
  bool first_request_ = true;
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
    if (self->connections.load() >= self->options.max_connections) {
      beast::error_code ignored;
      socket.close(ignored);  // over the limit: refuse this connection
    } else {
      std::make_shared<Session>(std::move(socket), self)->start();
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
