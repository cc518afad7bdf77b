#include "serving/http_server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <set>
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

// What a streamed response's producer (HttpStream) and the connection writing
// it share.
struct HttpStream::State {
  std::mutex mutex;
  std::string pending;        // written, not yet taken by the connection
  bool closed = false;        // close(): the body ends after pending
  bool aborted = false;       // the last HttpStream went without close()
  bool finished = false;      // the server is done with it: written, client gone, stopped
  bool woken = false;         // a pump is posted and has not taken pending yet
  std::function<void()> wake;  // while a connection writes it: posts its pump (holds the connection)

  bool writable() const { return !closed && !aborted && !finished; }
  // Lets the connection know there is something new (under mutex). Posting
  // never runs the pump inline, so it may be called under the lock.
  void poke() {
    if (wake && !woken) {
      woken = true;
      wake();
    }
  }
  // Done for the server: write() fails from now on and the connection is let
  // go (wake held it). True the first time only: the caller stops counting
  // the request then.
  bool finish() {
    std::function<void()> dropped;  // destroyed after the lock is released
    std::lock_guard<std::mutex> lock(mutex);
    if (finished) return false;
    finished = true;
    pending.clear();
    dropped = std::move(wake);
    wake = nullptr;
    return true;
  }
};

HttpStream::HttpStream() : state_(std::make_shared<State>()) {}

HttpStream::~HttpStream() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (!state_->writable()) return;
  state_->aborted = true;
  state_->poke();
}

bool HttpStream::write(std::string chunk) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (!state_->writable()) return false;
  if (chunk.empty()) return true;  // an empty chunk would read as the last one
  if (state_->pending.empty()) {
    state_->pending = std::move(chunk);
  } else {
    state_->pending += chunk;
  }
  state_->poke();
  return true;
}

void HttpStream::close() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (!state_->writable()) return;
  state_->closed = true;
  state_->poke();
}

bool HttpStream::open() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->writable();
}

namespace {
// An io_context whose handlers can be destroyed before it is: they hold the
// connections, which hold the server (see ~HttpServer).
struct Context : net::io_context {
  using net::io_context::io_context;
  using net::execution_context::shutdown;
};
}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  HttpServerOptions options;
  HttpHandler handler;
  Context context;
  tcp::acceptor acceptor;
  std::atomic<size_t> in_flight{0};
  std::atomic<size_t> connections{0};
  std::atomic<bool> accepting{true};
  net::steady_timer retry_timer{context};
  std::mutex clients_mutex;
  std::map<net::ip::address, size_t> clients;  // open connections per source address
  std::atomic<int> running{0};                 // threads in run()
  std::atomic<bool> stopped{false};
  std::mutex streams_mutex;
  std::set<std::shared_ptr<HttpStream::State>> streams;  // answered with, not finished (stop() ends them)

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

  static std::shared_ptr<HttpStream::State> state_of(const HttpStream& stream) { return stream.state_; }
  // Takes on a streamed response until end(); false (and ended) once stopped.
  bool adopt(const std::shared_ptr<HttpStream::State>& stream) {
    {
      std::lock_guard<std::mutex> lock(streams_mutex);
      if (!stopped.load()) {
        streams.insert(stream);
        return true;
      }
    }
    end(stream);
    return false;
  }
  // A streamed response is done (written, its client gone, or stopped).
  void end(const std::shared_ptr<HttpStream::State>& stream) {
    if (!stream->finish()) return;
    --in_flight;
    std::lock_guard<std::mutex> lock(streams_mutex);
    streams.erase(stream);
  }
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

// ---- Content codings (RFC 9110 section 8.4) --------------------------------
// Request bodies sent gzip or deflate are decoded before the handler sees
// them; responses are compressed when the client accepts it (Accept-Encoding).

enum class Coding { kIdentity, kGzip, kDeflate };

// The items of a comma-separated header list, trimmed, empty ones dropped.
std::vector<std::string> list_items(std::string_view value) {
  std::vector<std::string> items;
  size_t at = 0;
  while (at <= value.size()) {
    size_t comma = value.find(',', at);
    std::string item = trim(value.substr(at, comma == std::string_view::npos ? std::string_view::npos : comma - at));
    if (!item.empty()) items.push_back(item);
    if (comma == std::string_view::npos) break;
    at = comma + 1;
  }
  return items;
}

// zlib's window bits for a coding: gzip's wrapper (RFC 1952), or deflate's,
// which is the zlib format (RFC 1950), as RFC 9110 section 8.4.1.2 defines it.
int window_bits(Coding coding) { return coding == Coding::kGzip ? 16 + MAX_WBITS : MAX_WBITS; }

// What decoding a request body gave: the body, or an answer (413, 400).
struct Decoded {
  int status = 200;
  std::string error;
};

// Decodes data (one coding) into out, incrementally, and stops as soon as the
// result would pass limit: a small body that inflates to gigabytes ("zip
// bomb") costs at most limit bytes of memory. gzip may hold several members
// (RFC 1952 section 2.2: concatenated files), which decode one after another.
Decoded inflate_body(std::string_view data, Coding coding, size_t limit, std::string& out) {
  z_stream z{};
  if (inflateInit2(&z, window_bits(coding)) != Z_OK) return {500, "zlib cannot start decoding"};
  std::unique_ptr<z_stream, int (*)(z_stream*)> done(&z, inflateEnd);
  out.clear();
  auto next = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  size_t left = data.size();
  char buffer[64 << 10];
  const char* name = coding == Coding::kGzip ? "gzip" : "deflate";
  while (true) {
    if (z.avail_in == 0 && left > 0) {
      z.next_in = next;
      z.avail_in = static_cast<uInt>(std::min<size_t>(left, 1u << 30));
      next += z.avail_in;
      left -= z.avail_in;
    }
    z.next_out = reinterpret_cast<Bytef*>(buffer);
    z.avail_out = sizeof buffer;
    int rc = inflate(&z, Z_NO_FLUSH);
    size_t produced = sizeof buffer - z.avail_out;
    if (out.size() + produced > limit) {
      return {413, std::string("the request body decoded from ") + name + " exceeds the limit of " +
                       std::to_string(limit) + " bytes"};
    }
    out.append(buffer, produced);
    if (rc == Z_STREAM_END) {
      if (z.avail_in == 0 && left == 0) return {};
      if (coding == Coding::kGzip && inflateReset(&z) == Z_OK) continue;  // the next member
      return {400, std::string("the request body has bytes after the end of its ") + name + " data"};
    }
    if (rc == Z_BUF_ERROR && z.avail_in == 0 && left == 0) {
      return {400, std::string("the request body's ") + name + " data is truncated"};
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      return {400, std::string("the request body is not valid ") + name + " data (Content-Encoding: " + name +
                       ")" + (z.msg ? std::string(": ") + z.msg : std::string())};
    }
  }
}

// Decodes request's body by its Content-Encoding, codings undone last to
// first; the header is then removed (and Content-Length made the decoded
// length), so the handler, and a proxy relaying the request, see a plain body.
// The answer when it cannot: 415 for a coding other than gzip, deflate or
// identity, 413 past limit, 400 for data that does not decode.
Decoded decode_request_body(HttpRequest& request, size_t limit) {
  std::vector<std::string> codings;
  for (const auto& [name, value] : request.headers) {
    if (!beast::iequals(name, "Content-Encoding")) continue;
    for (const std::string& item : list_items(value)) codings.push_back(lower(item));
  }
  if (codings.empty()) return {};
  for (auto it = codings.rbegin(); it != codings.rend(); ++it) {
    Coding coding;
    if (*it == "identity") continue;
    if (*it == "gzip" || *it == "x-gzip") {
      coding = Coding::kGzip;
    } else if (*it == "deflate") {
      coding = Coding::kDeflate;
    } else {
      return {415, "Content-Encoding '" + *it + "' is not supported: send the body plain (identity), gzip or deflate"};
    }
    if (request.body.empty()) continue;  // nothing was sent (a GET, say): nothing to decode
    std::string decoded;
    Decoded result = inflate_body(request.body, coding, limit, decoded);
    if (result.status != 200) return result;
    request.body = std::move(decoded);
  }
  std::erase_if(request.headers, [](const auto& h) { return beast::iequals(h.first, "Content-Encoding"); });
  for (auto& [name, value] : request.headers) {
    if (beast::iequals(name, "Content-Length")) value = std::to_string(request.body.size());
  }
  return {};
}

// The coding of the response by the request's Accept-Encoding (RFC 9110
// section 12.5.3): gzip or deflate, whichever has the higher weight (gzip on a
// tie), neither with q=0; "*" stands for a coding not named; none: identity.
Coding accepted_coding(const std::optional<std::string>& accept_encoding) {
  if (!accept_encoding) return Coding::kIdentity;
  std::optional<double> gzip, deflate, any;
  for (const std::string& item : list_items(*accept_encoding)) {
    size_t semicolon = item.find(';');
    std::string name = lower(trim(std::string_view(item).substr(0, semicolon)));
    double q = 1;
    while (semicolon != std::string::npos) {
      size_t next = item.find(';', semicolon + 1);
      std::string parameter = lower(trim(std::string_view(item).substr(
          semicolon + 1, next == std::string::npos ? std::string::npos : next - semicolon - 1)));
      if (parameter.rfind("q=", 0) == 0) {
        char* end = nullptr;
        q = std::strtod(parameter.c_str() + 2, &end);
        if (end == parameter.c_str() + 2 || *end != '\0' || !(q >= 0 && q <= 1)) q = 0;  // malformed: not accepted
      }
      semicolon = next;
    }
    if (name == "gzip" || name == "x-gzip") gzip = q;
    else if (name == "deflate") deflate = q;
    else if (name == "*") any = q;
  }
  double g = gzip.value_or(any.value_or(0)), d = deflate.value_or(any.value_or(0));
  if (g > 0 && g >= d) return Coding::kGzip;
  if (d > 0) return Coding::kDeflate;
  return Coding::kIdentity;
}

// data compressed (gzip or deflate, i.e. zlib format), at zlib's level 1: the
// fastest, as nginx's default, since a large tensor is compressed on the
// connection's thread; JSON of numbers still shrinks several times.
std::optional<std::string> deflate_body(std::string_view data, Coding coding) {
  if (data.size() > (1u << 31)) return std::nullopt;  // one deflate() call takes at most 4 GiB: sent as it is
  z_stream z{};
  if (deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, window_bits(coding), 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    return std::nullopt;
  }
  std::unique_ptr<z_stream, int (*)(z_stream*)> done(&z, deflateEnd);
  std::string out(deflateBound(&z, static_cast<uLong>(data.size())), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) return std::nullopt;
  out.resize(out.size() - z.avail_out);
  return out;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, net::ip::address client, std::shared_ptr<HttpServer::Impl> server)
      : stream_(std::move(socket)), client_(std::move(client)), server_(std::move(server)) {}
  ~Session() {
    if (out_) server_->end(out_);  // (not expected: a stream ends before its connection goes)
    server_->release(client_);
  }

  void start() { read(); }

 private:
  void read() {
    head_ = false;
    accept_ = Coding::kIdentity;
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
    version_ = message.version();
    HttpRequest request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    request.body = std::move(message.body());
    for (const auto& f : message) request.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    stream_.expires_never();  // the answer may take as long as inference takes
    ++server_->in_flight;
    accept_ = accepted_coding(request.header("Accept-Encoding"));
    Decoded decoded = decode_request_body(request, server_->options.max_body_bytes);
    if (decoded.status != 200) {
      // The whole body was read: the connection may carry the next request.
      HttpHeaders headers;
      if (decoded.status == 415) headers.emplace_back("Accept-Encoding", "gzip, deflate, identity");
      return write({decoded.status, io::json_limits::dump(nlohmann::json{{"error", decoded.error}}), "application/json",
                    std::move(headers)},
                   keep_alive_, true);
    }
    auto answered = std::make_shared<std::atomic<bool>>(false);
    Responder respond = [self = shared_from_this(), answered](HttpResponse response) {
      if (answered->exchange(true)) return;  // exactly once
      // A stream is known to the server from here, so that stop() ends it even
      // if its connection never gets to write it (adopt ends it if stopped).
      if (response.stream && !self->server_->adopt(HttpServer::Impl::state_of(*response.stream))) return;
      if (self->server_->stopped.load()) return;  // dropped: nothing runs the post
      net::post(self->stream_.get_executor(), [self, response = std::move(response)]() mutable {
        if (response.stream) return self->write_stream(std::move(response));
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

  // Compresses r's body as the request accepted (accept_), when it is large
  // enough and not encoded already (a response relayed by a proxy keeps its
  // Content-Encoding as it came). Vary: Accept-Encoding on every response that
  // could have been compressed, so that a cache does not hand one client's
  // answer to another that accepts less.
  void encode(HttpResponse& r) const {
    const HttpServerOptions& o = server_->options;
    if (!o.compress_responses || r.body.size() < o.compress_min_bytes || r.status < 200 || r.status == 204 ||
        r.status == 304 || r.header("Content-Encoding")) {
      return;
    }
    auto vary = std::find_if(r.headers.begin(), r.headers.end(), [](const auto& h) { return beast::iequals(h.first, "Vary"); });
    if (vary == r.headers.end()) {
      r.headers.emplace_back("Vary", "Accept-Encoding");
    } else if (lower(vary->second).find("accept-encoding") == std::string::npos && trim(vary->second) != "*") {
      vary->second += ", Accept-Encoding";
    }
    if (accept_ == Coding::kIdentity) return;
    std::optional<std::string> compressed = deflate_body(r.body, accept_);
    if (!compressed || compressed->size() >= r.body.size()) return;  // incompressible: sent as it is
    r.body = std::move(*compressed);
    r.headers.emplace_back("Content-Encoding", accept_ == Coding::kGzip ? "gzip" : "deflate");
  }

  void write(HttpResponse r, bool keep_alive, bool counted) {
    encode(r);
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

  // A streamed response (HttpStream): its status and headers, then its chunks
  // as they come (pump), the last chunk after close(). Meanwhile a read in the
  // background notices a client that goes.
  void write_stream(HttpResponse r) {
    out_ = HttpServer::Impl::state_of(*r.stream);
    r.stream.reset();  // may abort it, when the handler kept no reference and did not close it
    bool bodiless = head_ || r.status < 200 || r.status == 204 || r.status == 304;
    out_chunked_ = !bodiless && version_ >= 11;
    // To HTTP/1.0 the body ends with the connection.
    out_keep_alive_ = keep_alive_ && (bodiless || out_chunked_);
    auto response = std::make_shared<http::response<http::empty_body>>(static_cast<http::status>(r.status), 11);
    response->set(http::field::server, "meshrt");
    response->set(http::field::content_type, r.content_type);
    for (const auto& [k, v] : r.headers) response->set(k, v);
    response->erase(http::field::content_length);
    response->erase(http::field::transfer_encoding);
    response->keep_alive(out_keep_alive_);
    if (out_chunked_) response->chunked(true);
    auto serializer = std::make_shared<http::response_serializer<http::empty_body>>(*response);
    stream_.expires_after(server_->options.write_timeout);
    http::async_write_header(stream_, *serializer,
                             [self = shared_from_this(), response, serializer, bodiless](beast::error_code ec, size_t) {
                               if (!self->out_) return;
                               if (ec) return self->client_gone();
                               if (bodiless) return self->end_stream();
                               self->attach();
                             });
  }

  void attach() {
    {
      std::lock_guard<std::mutex> lock(out_->mutex);
      if (!out_->finished) {
        out_->wake = [self = shared_from_this()] {
          net::post(self->stream_.get_executor(), [self] { self->pump(); });
        };
      }
    }
    stream_.expires_never();  // for the read: write_timeout is set before each write
    reading_in_background_ = true;
    stream_.async_read_some(buffer_.prepare(1024), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->on_background_read(ec, n);
    });
    pump();
  }

  // Writes what the stream has (the chunks written since the last write, as
  // one chunk), unless a write is on its way (its completion pumps again).
  void pump() {
    if (!out_ || writing_) return;
    std::string data;
    bool last = false, abandoned = false;
    {
      std::lock_guard<std::mutex> lock(out_->mutex);
      out_->woken = false;
      data.swap(out_->pending);
      last = out_->closed;
      abandoned = out_->aborted || out_->finished;  // finished here: by stop()
    }
    if (abandoned) return client_gone();  // closed without the last chunk
    if (data.empty() && !last) return;    // the next write() or close() pumps again
    out_buffer_.clear();
    if (out_chunked_) {
      if (!data.empty()) {
        char size[24];
        std::snprintf(size, sizeof size, "%zx\r\n", data.size());
        out_buffer_.reserve(data.size() + 32);
        out_buffer_ = size;
        out_buffer_ += data;
        out_buffer_ += "\r\n";
      }
      if (last) out_buffer_ += "0\r\n\r\n";
    } else {
      out_buffer_ = std::move(data);
    }
    if (out_buffer_.empty()) return end_stream();  // HTTP/1.0: closed, nothing left
    writing_ = true;
    stream_.expires_after(server_->options.write_timeout);  // the write's alone: the read is pending
    net::async_write(stream_, net::buffer(out_buffer_), [self = shared_from_this(), last](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (!self->out_) return;
      if (ec) return self->client_gone();
      if (last) return self->end_stream();
      self->pump();
    });
  }

  void on_background_read(beast::error_code ec, size_t n) {
    reading_in_background_ = false;
    if (!ec) buffer_.commit(n);  // the next request, pipelined: kept for read()
    if (out_) {
      // Bytes: the client is there (a failed write notices it going from now
      // on). The end of its data or an error: it is gone.
      if (ec) client_gone();
      return;
    }
    if (!resume_after_background_read_) return;  // the client went: the connection is closed
    resume_after_background_read_ = false;
    if (ec && ec != net::error::operation_aborted) return close();
    resume();
  }

  // The whole body is written (or there is none): the next request, once the
  // background read is off.
  void end_stream() {
    server_->end(out_);
    out_.reset();
    if (reading_in_background_) {
      resume_after_background_read_ = true;
      beast::error_code ignored;
      stream_.socket().cancel(ignored);
      return;
    }
    resume();
  }

  void resume() {
    if (!out_keep_alive_) return close();
    read();
  }

  // A write failed or timed out, the client closed its side, its producer
  // dropped the stream, or the server stopped: the connection is closed.
  void client_gone() {
    if (!out_) return;
    server_->end(out_);
    out_.reset();
    resume_after_background_read_ = false;
    stream_.close();
  }

  beast::tcp_stream stream_;
  net::ip::address client_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<HttpServer::Impl> server_;
  bool keep_alive_ = true;
  bool first_request_ = true;
  bool head_ = false;  // the request being answered is HEAD
  Coding accept_ = Coding::kIdentity;  // the coding its Accept-Encoding prefers (encode)
  unsigned version_ = 11;  // of the request being answered (10: HTTP/1.0)
  // The streamed response being written, if any (see write_stream).
  std::shared_ptr<HttpStream::State> out_;
  std::string out_buffer_;  // the bytes of the write on its way
  bool out_chunked_ = false;
  bool out_keep_alive_ = false;
  bool writing_ = false;
  bool reading_in_background_ = false;
  bool resume_after_background_read_ = false;
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

HttpServer::~HttpServer() {
  stop();
  // The handlers left in the context hold connections, which hold impl_, which
  // holds the context: destroyed here (their sockets closed), or none of it is
  // ever freed. Only once run() has returned.
  if (impl_->running.load() == 0) impl_->context.shutdown();
}

uint16_t HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void HttpServer::run() {
  ++impl_->running;
  impl_->accept();
  std::vector<std::thread> threads;
  for (int i = 1; i < impl_->options.threads; ++i) threads.emplace_back([this] { impl_->context.run(); });
  impl_->context.run();
  for (auto& t : threads) t.join();
  --impl_->running;
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
  std::set<std::shared_ptr<HttpStream::State>> open;
  {
    std::lock_guard<std::mutex> lock(impl_->streams_mutex);
    impl_->stopped = true;
    open.swap(impl_->streams);
  }
  for (const auto& stream : open) {
    if (stream->finish()) --impl_->in_flight;
  }
  impl_->context.stop();
}

size_t HttpServer::in_flight() const { return impl_->in_flight.load(); }

}  // namespace meshrt::serving
