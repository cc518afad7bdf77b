#include "serving/http_router.h"

#include "device/error.h"

namespace meshrt::serving {

namespace {
int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "/a/b/" -> {"a", "b"}: empty segments (doubled or trailing slashes) are dropped.
std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (end > start) parts.emplace_back(path.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

// Whether the Allow list "GET, HEAD" holds method (a whole item).
bool listed(const std::string& allowed, const std::string& method) {
  size_t at = 0;
  while (at < allowed.size()) {
    size_t comma = allowed.find(", ", at);
    if (comma == std::string::npos) comma = allowed.size();
    if (allowed.compare(at, comma - at, method) == 0) return true;
    at = comma + 2;
  }
  return false;
}

bool is_parameter(const std::string& segment) {
  return segment.size() > 2 && segment.front() == '{' && segment.back() == '}';
}
}  // namespace

std::optional<std::string> percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    int high = i + 1 < text.size() ? hex_value(text[i + 1]) : -1;
    int low = i + 2 < text.size() ? hex_value(text[i + 2]) : -1;
    if (high < 0 || low < 0) return std::nullopt;
    out += static_cast<char>(high * 16 + low);
    i += 2;
  }
  return out;
}

HttpRouter::HttpRouter(std::function<HttpResponse(int, const std::string&)> error) : error_(std::move(error)) {}

void HttpRouter::add(const std::string& method, const std::string& pattern, RouteHandler handler) {
  MESHRT_CHECK_ARG(!pattern.empty() && pattern[0] == '/', "route pattern '", pattern, "' must start with '/'");
  routes_.push_back({method, split_path(pattern), std::move(handler)});
}

void HttpRouter::handle(const HttpRequest& request, const Responder& respond) const {
  std::string_view target = request.target;
  std::string_view raw_path = target.substr(0, target.find('?'));
  std::vector<std::string> segments;
  for (const std::string& raw : split_path(raw_path)) {
    std::optional<std::string> decoded = percent_decode(raw);
    if (!decoded) return respond(error_(400, "bad percent-encoding in the path " + std::string(raw_path)));
    segments.push_back(std::move(*decoded));
  }
  std::string allowed;
  for (const Route& route : routes_) {
    if (route.segments.size() != segments.size()) continue;
    RouteParams params;
    bool match = true;
    for (size_t i = 0; i < segments.size() && match; ++i) {
      if (is_parameter(route.segments[i])) {
        params[route.segments[i].substr(1, route.segments[i].size() - 2)] = segments[i];
      } else {
        match = route.segments[i] == segments[i];
      }
    }
    if (!match) continue;
    // HEAD is GET without the body (RFC 9110 section 9.3.2): the server sends
    // the headers of the GET response, Content-Length included, and no body.
    bool head_of_get = request.method == "HEAD" && route.method == "GET";
    if (route.method == request.method || head_of_get) return route.handler(request, params, respond);
    for (const std::string& method : route.method == "GET" ? std::vector<std::string>{"GET", "HEAD"}
                                                           : std::vector<std::string>{route.method}) {
      if (!listed(allowed, method)) allowed += (allowed.empty() ? "" : ", ") + method;
    }
  }
  if (allowed.empty()) return respond(error_(404, "no route for " + std::string(raw_path)));
  HttpResponse r = error_(405, "use " + allowed + " for " + std::string(raw_path));
  r.headers.emplace_back("Allow", allowed);
  respond(std::move(r));
}

}  // namespace meshrt::serving
