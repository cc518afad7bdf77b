#include "sharding/layout.h"

#include <algorithm>
#include <set>
#include <sstream>

namespace meshrt::sharding {

namespace {
std::vector<Partial> sums(std::vector<std::string> axes) {
  std::vector<Partial> out;
  for (auto& a : axes) out.push_back({std::move(a), ReduceOp::kSum});
  return out;
}
}  // namespace

std::vector<int64_t> chunk_extents(int64_t n, int64_t k) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < k; ++i) out.push_back(chunk_extent(n, k, i).size);
  return out;
}

Extent chunk_extent(int64_t n, int64_t k, int64_t i) {
  MESHRT_CHECK_ARG(n >= 0 && k >= 1 && i >= 0 && i < k, "chunk_extent: piece ", i, " of ", n, " elements over ", k);
  int64_t piece = (n + k - 1) / k;
  int64_t offset = std::min(n, i * piece);
  return {offset, std::min(piece, n - offset)};
}

Layout::Layout(std::vector<std::vector<std::string>> dims, std::vector<std::string> partial)
    : Layout(std::move(dims), sums(std::move(partial)), 0) {}

Layout::Layout(std::vector<std::vector<std::string>> dims, std::vector<Partial> partials, int)
    : dims_(std::move(dims)), partials_(std::move(partials)) {
  std::set<std::string> used;
  auto use = [&](const std::string& axis) {
    MESHRT_CHECK_ARG(!axis.empty(), "a layout names an empty mesh axis");
    MESHRT_CHECK_ARG(used.insert(axis).second, "mesh axis '", axis, "' is used twice in layout ",
                     to_string());
  };
  for (const auto& d : dims_) for (const auto& a : d) use(a);
  for (const auto& p : partials_) {
    use(p.axis);
    MESHRT_CHECK_ARG(p.op != ReduceOp::kProd, "layout ", to_string(),
                     ": a pending product is not supported (sum, avg, max and min are)");
  }
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
  std::vector<Partial> partials;
  if (!partial_text.empty()) {
    for (const std::string& entry : split_axes(partial_text)) {
      size_t colon = entry.find(':');
      Partial p{trim(entry.substr(0, colon)), ReduceOp::kSum};
      if (colon != std::string::npos) {
        std::string op = trim(entry.substr(colon + 1));
        if (op != "sum" && op != "avg" && op != "max" && op != "min") {
          throw bad("P(" + entry + "): the reduction must be sum, avg, max or min");
        }
        p.op = parse_reduce_op(op);
      }
      partials.push_back(std::move(p));
    }
  }
  return Layout(std::move(dims), std::move(partials), 0);
}

const std::vector<std::string>& Layout::dim(int d) const {
  MESHRT_CHECK_ARG(d >= 0 && d < ndim(), "layout ", to_string(), " has no dimension ", d);
  return dims_[static_cast<size_t>(d)];
}

bool Layout::is_replicated() const {
  return partials_.empty() && std::all_of(dims_.begin(), dims_.end(), [](const auto& d) { return d.empty(); });
}

int Layout::dim_of(const std::string& axis) const {
  for (size_t d = 0; d < dims_.size(); ++d) {
    if (std::find(dims_[d].begin(), dims_[d].end(), axis) != dims_[d].end()) return static_cast<int>(d);
  }
  return -1;
}

std::vector<std::string> Layout::partial() const {
  std::vector<std::string> axes;
  for (const Partial& p : partials_) axes.push_back(p.axis);
  return axes;
}

bool Layout::is_partial_over(const std::string& axis) const {
  return std::any_of(partials_.begin(), partials_.end(), [&](const Partial& p) { return p.axis == axis; });
}

ReduceOp Layout::partial_op(const std::string& axis) const {
  for (const Partial& p : partials_) {
    if (p.axis == axis) return p.op;
  }
  throw Error(ErrorKind::kInternal, detail::cat("layout ", to_string(), " is not partial over '", axis, "'"));
}

bool Layout::holds_value(const Mesh& mesh) const {
  return std::all_of(partials_.begin(), partials_.end(),
                     [&](const Partial& p) { return p.op != ReduceOp::kSum || mesh.coordinate(p.axis) == 0; });
}

Layout Layout::with_dim(int d, std::vector<std::string> axes) const {
  dim(d);
  auto dims = dims_;
  dims[static_cast<size_t>(d)] = std::move(axes);
  return Layout(std::move(dims), partials_, 0);
}

Layout Layout::with_partial(std::vector<std::string> axes) const { return Layout(dims_, std::move(axes)); }

Layout Layout::with_partials(std::vector<Partial> partials) const { return Layout(dims_, std::move(partials), 0); }

Layout Layout::without_axis(const std::string& axis) const {
  auto dims = dims_;
  for (auto& d : dims) d.erase(std::remove(d.begin(), d.end(), axis), d.end());
  auto partials = partials_;
  std::erase_if(partials, [&](const Partial& p) { return p.axis == axis; });
  return Layout(std::move(dims), std::move(partials), 0);
}

void Layout::check(const Mesh& mesh, const Shape& global, const std::string& name) const {
  MESHRT_CHECK_SHAPE(ndim() == global.ndim(), "layout ", to_string(), " of ", name, " has ", ndim(),
                     " dimensions but ", name, " has global shape ", global, " (", global.ndim(), ")");
  for (const auto& p : partials_) mesh.axis_index(p.axis);
  for (const auto& axes : dims_) {
    for (const auto& a : axes) mesh.axis_index(a);
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

Extent Layout::block(const Mesh& mesh, int d, const std::vector<int>& coordinates, int64_t n) const {
  Extent e{0, n};
  for (const auto& a : dim(d)) {
    Extent piece = chunk_extent(e.size, mesh.axis_size(a), coordinates[static_cast<size_t>(mesh.axis_index(a))]);
    e = {e.offset + piece.offset, piece.size};
  }
  return e;
}

std::vector<int64_t> Layout::block_offsets(const Mesh& mesh, const Shape& global) const {
  return block_offsets(mesh, global, mesh.coordinates(mesh.rank()));
}

std::vector<int64_t> Layout::block_offsets(const Mesh& mesh, const Shape& global,
                                           const std::vector<int>& coordinates) const {
  std::vector<int64_t> offsets;
  for (int d = 0; d < ndim(); ++d) offsets.push_back(block(mesh, d, coordinates, global[d]).offset);
  return offsets;
}

Shape Layout::local_shape(const Mesh& mesh, const Shape& global) const {
  return local_shape(mesh, global, mesh.coordinates(mesh.rank()));
}

Shape Layout::local_shape(const Mesh& mesh, const Shape& global, const std::vector<int>& coordinates) const {
  std::vector<int64_t> dims = global.dims();
  for (int d = 0; d < ndim(); ++d) dims[static_cast<size_t>(d)] = block(mesh, d, coordinates, global[d]).size;
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
  if (!partials_.empty()) {
    s += " P(";
    for (size_t i = 0; i < partials_.size(); ++i) {
      s += (i ? "," : "") + partials_[i].axis;
      if (partials_[i].op != ReduceOp::kSum) s += std::string(":") + meshrt::to_string(partials_[i].op);
    }
    s += ")";
  }
  return s;
}

}  // namespace meshrt::sharding
