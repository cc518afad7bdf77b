#include "sharding/layout.h"

#include <algorithm>
#include <set>
#include <sstream>

namespace meshrt::sharding {

Layout::Layout(std::vector<std::vector<std::string>> dims, std::vector<std::string> partial)
    : dims_(std::move(dims)), partial_(std::move(partial)) {
  std::set<std::string> used;
  auto use = [&](const std::string& axis) {
    MESHRT_CHECK_ARG(!axis.empty(), "a layout names an empty mesh axis");
    MESHRT_CHECK_ARG(used.insert(axis).second, "mesh axis '", axis, "' is used twice in layout ",
                     to_string());
  };
  for (const auto& d : dims_) for (const auto& a : d) use(a);
  for (const auto& a : partial_) use(a);
}

Layout Layout::replicated(int ndim) { return Layout(std::vector<std::vector<std::string>>(static_cast<size_t>(ndim))); }

Layout Layout::sharded(int ndim, int dim, const std::string& axis) {
  MESHRT_CHECK_ARG(dim >= 0 && dim < ndim, "Layout::sharded: dimension ", dim, " of a ", ndim, "-d tensor");
  std::vector<std::vector<std::string>> dims(static_cast<size_t>(ndim));
  dims[static_cast<size_t>(dim)] = {axis};
  return Layout(std::move(dims));
}

namespace {
std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::vector<std::string> split_axes(const std::string& inner) {
  std::vector<std::string> axes;
  std::stringstream in(inner);
  std::string a;
  while (std::getline(in, a, ',')) axes.push_back(trim(a));
  return axes;
}
}  // namespace

Layout Layout::parse(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kInvalidArgument,
                 detail::cat("layout '", text, "': ", why,
                             " (expected e.g. \"[S(model), R]\" or \"S(x,y),R P(z)\")"));
  };
  std::string body = trim(text), partial_text;
  size_t p = body.find("P(");
  if (p != std::string::npos) {
    size_t close = body.find(')', p);
    if (close == std::string::npos || trim(body.substr(close + 1)) != "") throw bad("P(...) must come last");
    partial_text = body.substr(p + 2, close - p - 2);
    body = trim(body.substr(0, p));
  }
  if (!body.empty() && body.front() == '[') {
    if (body.back() != ']') throw bad("unclosed [");
    body = body.substr(1, body.size() - 2);
  }
  std::vector<std::vector<std::string>> dims;
  size_t i = 0;
  body = trim(body);
  while (i < body.size()) {
    while (i < body.size() && (body[i] == ' ' || body[i] == ',')) ++i;
    if (i >= body.size()) break;
    if (body[i] == 'R') {
      dims.emplace_back();
      ++i;
    } else if (body.compare(i, 2, "S(") == 0) {
      size_t close = body.find(')', i);
      if (close == std::string::npos) throw bad("unclosed S(");
      dims.push_back(split_axes(body.substr(i + 2, close - i - 2)));
      i = close + 1;
    } else {
      throw bad(detail::cat("unexpected '", body.substr(i, 1), "'"));
    }
  }
  return Layout(std::move(dims), partial_text.empty() ? std::vector<std::string>{} : split_axes(partial_text));
}

const std::vector<std::string>& Layout::dim(int d) const {
  MESHRT_CHECK_ARG(d >= 0 && d < ndim(), "layout ", to_string(), " has no dimension ", d);
  return dims_[static_cast<size_t>(d)];
}

bool Layout::is_replicated() const {
  return partial_.empty() && std::all_of(dims_.begin(), dims_.end(), [](const auto& d) { return d.empty(); });
}

int Layout::dim_of(const std::string& axis) const {
  for (size_t d = 0; d < dims_.size(); ++d) {
    if (std::find(dims_[d].begin(), dims_[d].end(), axis) != dims_[d].end()) return static_cast<int>(d);
  }
  return -1;
}

bool Layout::is_partial_over(const std::string& axis) const {
  return std::find(partial_.begin(), partial_.end(), axis) != partial_.end();
}

Layout Layout::with_dim(int d, std::vector<std::string> axes) const {
  dim(d);
  auto dims = dims_;
  dims[static_cast<size_t>(d)] = std::move(axes);
  return Layout(std::move(dims), partial_);
}

Layout Layout::with_partial(std::vector<std::string> axes) const { return Layout(dims_, std::move(axes)); }

Layout Layout::without_axis(const std::string& axis) const {
  auto dims = dims_;
  for (auto& d : dims) d.erase(std::remove(d.begin(), d.end(), axis), d.end());
  auto partial = partial_;
  partial.erase(std::remove(partial.begin(), partial.end(), axis), partial.end());
  return Layout(std::move(dims), std::move(partial));
}

void Layout::check(const Mesh& mesh, const Shape& global, const std::string& name) const {
  MESHRT_CHECK_SHAPE(ndim() == global.ndim(), "layout ", to_string(), " of ", name, " has ", ndim(),
                     " dimensions but ", name, " has global shape ", global, " (", global.ndim(), ")");
  for (const auto& a : partial_) mesh.axis_index(a);
  for (int d = 0; d < ndim(); ++d) {
    const auto& axes = dims_[static_cast<size_t>(d)];
    if (axes.empty()) continue;
    int64_t n = parts(mesh, d);
    if (global[d] % n == 0) continue;
    std::string which = axes.size() == 1 ? "mesh axis '" + axes[0] + "'" : "mesh axes (";
    if (axes.size() > 1) {
      for (size_t i = 0; i < axes.size(); ++i) which += (i ? ", '" : "'") + axes[i] + "'";
      which += ")";
    }
    throw Error(ErrorKind::kShape,
                detail::cat("dimension ", d, " of ", name, " (global size ", global[d], ") is sharded over ",
                            which, " of size ", n, ": ", global[d], " is not divisible by ", n,
                            " (layout ", to_string(), " on ", mesh.to_string(), ")"));
  }
}

int64_t Layout::parts(const Mesh& mesh, int d) const {
  int64_t n = 1;
  for (const auto& a : dim(d)) n *= mesh.axis_size(a);
  return n;
}

int64_t Layout::block_index(const Mesh& mesh, int d, const std::vector<int>& coordinates) const {
  int64_t index = 0;
  for (const auto& a : dim(d)) {
    index = index * mesh.axis_size(a) + coordinates[static_cast<size_t>(mesh.axis_index(a))];
  }
  return index;
}

Shape Layout::local_shape(const Mesh& mesh, const Shape& global) const {
  std::vector<int64_t> dims = global.dims();
  for (int d = 0; d < ndim(); ++d) dims[static_cast<size_t>(d)] /= parts(mesh, d);
  return Shape(std::move(dims));
}

std::string Layout::to_string() const {
  std::string s = "[";
  for (size_t d = 0; d < dims_.size(); ++d) {
    if (d) s += ", ";
    if (dims_[d].empty()) {
      s += "R";
      continue;
    }
    s += "S(";
    for (size_t i = 0; i < dims_[d].size(); ++i) s += (i ? "," : "") + dims_[d][i];
    s += ")";
  }
  s += "]";
  if (!partial_.empty()) {
    s += " P(";
    for (size_t i = 0; i < partial_.size(); ++i) s += (i ? "," : "") + partial_[i];
    s += ")";
  }
  return s;
}

}  // namespace meshrt::sharding
