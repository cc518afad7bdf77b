// HTTP routes as a table: (method, path pattern) -> handler. A pattern is a
// path whose segments are literals or {name} parameters, e.g.
// "/v2/models/{model}/versions/{version}/infer". A request's path (the target
// up to '?') is split at '/', each segment percent-decoded (so "/v2/models/my%20model"
// names "my model"; a '/' inside a name arrives as %2F and stays in its
// segment), and matched segment by segment against the routes in the order they
// were added.
//
// A GET route answers HEAD as well (the server sends no body to HEAD).
//
// Answers of its own: 400 for a path with a bad percent escape, 404 when no
// pattern matches the path, 405 with an Allow header when patterns match but
// none for the method (GET routes list HEAD too).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "serving/http_server.h"

namespace meshrt::serving {

// The {name} parameters of a matched route.
using RouteParams = std::map<std::string, std::string>;
using RouteHandler = std::function<void(const HttpRequest&, const RouteParams&, const Responder&)>;

// "%41b%2F" -> "Ab/"; nullopt for a '%' not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view text);

class HttpRouter {
 public:
  // error(status, message): the response the router gives for 400, 404 and 405.
  explicit HttpRouter(std::function<HttpResponse(int status, const std::string& message)> error);
  // Adds a route; throws Error(kInvalidArgument) for a pattern that does not start with '/'.
  void add(const std::string& method, const std::string& pattern, RouteHandler handler);
  // Finds the route of request and runs its handler, or answers 400/404/405.
  void handle(const HttpRequest& request, const Responder& respond) const;

 private:
  struct Route {
    std::string method;
    std::vector<std::string> segments;  // literals, or "{name}"
    RouteHandler handler;
  };
  std::function<HttpResponse(int, const std::string&)> error_;
  std::vector<Route> routes_;
};

}  // namespace meshrt::serving
