#include "serving/http_client.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <exception>

#include "device/error.h"

namespace meshrt::serving {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

struct HttpClient::Impl {
  std::string host;
  uint16_t port;
  std::chrono::seconds timeout;
  net::io_context context;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

  std::string source;  // local address to connect from, if set

  void connect() {
    tcp::resolver resolver(context);
    stream.emplace(context);
    stream->expires_after(timeout);
    auto endpoints = resolver.resolve(host, std::to_string(port));
    if (source.empty()) {
      stream->connect(endpoints);
      return;
    }
    tcp::endpoint local(net::ip::make_address(source), 0);
    tcp::socket& socket = stream->socket();
    socket.open(local.protocol());
    socket.bind(local);
    socket.connect(*endpoints.begin());
  }
};

namespace {

// The status and headers of a response (its body left to the caller).
template <class Fields>
HttpResponse head_of(const http::response_header<Fields>& res) {
  HttpResponse out;
  out.status = static_cast<int>(res.result_int());
  for (const auto& f : res) {
    if (f.name() == http::field::content_type) out.content_type = std::string(f.value());
    out.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
  }
  return out;
}

// Whether a failure on a kept-alive connection means the server had closed it.
bool closed_by_server(const beast::error_code& error) {
  return error == http::error::end_of_stream || error == net::error::connection_reset ||
         error == net::error::broken_pipe || error == net::error::eof;
}

}  // namespace

HttpClient::HttpClient(std::string host, uint16_t port, std::chrono::seconds timeout) : impl_(std::make_unique<Impl>()) {
  impl_->host = std::move(host);
  impl_->port = port;
  impl_->timeout = timeout;
}

HttpClient::~HttpClient() = default;

void HttpClient::set_source_address(const std::string& address) {
  impl_->source = address;
  impl_->stream.reset();
}

namespace {
// A kept-alive HTTP/1.1 request.
http::request<http::string_body> make_request(const std::string& host, const std::string& method,
                                              const std::string& target, const std::string& body,
                                              const std::vector<std::pair<std::string, std::string>>& headers) {
  http::request<http::string_body> req(http::string_to_verb(method), target, 11);
  req.set(http::field::host, host);
  req.keep_alive(true);
  for (const auto& [k, v] : headers) req.set(k, v);
  req.body() = body;
  req.prepare_payload();
  return req;
}
}  // namespace

HttpResponse HttpClient::request(const std::string& method, const std::string& target, const std::string& body,
                                 const std::vector<std::pair<std::string, std::string>>& headers) {
  http::request<http::string_body> req = make_request(impl_->host, method, target, body, headers);
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool reused = impl_->stream.has_value();
    beast::error_code error;
    try {
      if (!impl_->stream) impl_->connect();
      impl_->stream->expires_after(impl_->timeout);
      // A server may answer (413, 431) and close before reading the whole
      // request: read its answer even when writing failed.
      beast::error_code write_error;
      http::write(*impl_->stream, req, write_error);
      http::response_parser<http::string_body> parser;
      parser.body_limit(1ull << 32);
      if (req.method() == http::verb::head) parser.skip(true);  // its Content-Length is GET's; no body follows
      http::read(*impl_->stream, impl_->buffer, parser, error);
      if (!error) {
        auto res = parser.release();
        HttpResponse out = head_of(res.base());
        out.body = std::move(res.body());
        if (!res.keep_alive()) impl_->stream.reset();
        return out;
      }
      if (write_error) error = write_error;
    } catch (const std::exception& e) {
      impl_->stream.reset();
      impl_->buffer.clear();
      throw Error(ErrorKind::kUnavailable,
                  detail::cat(method, " http://", impl_->host, ":", impl_->port, target, " failed: ", e.what()));
    }
    impl_->stream.reset();
    impl_->buffer.clear();
    // Retried once, on a new connection, only when a kept-alive connection turned
    // out closed by the server before it answered; otherwise the server may have
    // run the request, which must not be sent twice.
    if (attempt == 1 || !reused || !closed_by_server(error)) {
      throw Error(ErrorKind::kUnavailable,
                  detail::cat(method, " http://", impl_->host, ":", impl_->port, target, " failed: ", error.message()));
    }
  }
  return {};
}

HttpResponse HttpClient::request_stream(const std::string& method, const std::string& target, const std::string& body,
                                        const std::vector<std::pair<std::string, std::string>>& headers,
                                        const std::function<void(std::string_view)>& on_chunk) {
  http::request<http::string_body> req = make_request(impl_->host, method, target, body, headers);
  auto fail = [&](const std::string& why) {
    impl_->stream.reset();
    impl_->buffer.clear();
    return Error(ErrorKind::kUnavailable,
                 detail::cat(method, " http://", impl_->host, ":", impl_->port, target, " failed: ", why));
  };
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool reused = impl_->stream.has_value();
    beast::error_code error;
    std::exception_ptr thrown;  // by on_chunk: passed on as it is
    try {
      if (!impl_->stream) impl_->connect();
      impl_->stream->expires_after(impl_->timeout);
      beast::error_code write_error;
      http::write(*impl_->stream, req, write_error);
      http::response_parser<http::buffer_body> parser;
      parser.body_limit(boost::none);
      if (req.method() == http::verb::head) parser.skip(true);
      http::read_header(*impl_->stream, impl_->buffer, parser, error);
      if (!error) {
        HttpResponse out = head_of(parser.get().base());
        char data[16384];
        while (!parser.is_done()) {
          parser.get().body().data = data;
          parser.get().body().size = sizeof data;
          impl_->stream->expires_after(impl_->timeout);  // for each read
          http::read_some(*impl_->stream, impl_->buffer, parser, error);
          if (error == http::error::need_buffer) error = {};  // data is full
          if (error) break;
          size_t got = sizeof data - parser.get().body().size;
          if (got == 0) continue;
          try {
            on_chunk(std::string_view(data, got));
          } catch (...) {
            thrown = std::current_exception();
            break;
          }
        }
        if (!error && !thrown) {
          if (!parser.get().keep_alive()) impl_->stream.reset();
          return out;
        }
        if (!thrown) throw fail("the body broke off: " + error.message());  // never retried: part was delivered
      } else if (write_error) {
        error = write_error;
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw fail(e.what());
    }
    if (thrown) {
      impl_->stream.reset();
      impl_->buffer.clear();
      std::rethrow_exception(thrown);
    }
    impl_->stream.reset();
    impl_->buffer.clear();
    // Retried once, as request() does: only when a kept-alive connection turned
    // out closed by the server before it answered.
    if (attempt == 1 || !reused || !closed_by_server(error)) throw fail(error.message());
  }
  return {};
}

}  // namespace meshrt::serving
