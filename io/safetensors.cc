#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "device/error.h"
#include "io/file.h"
#include "io/json_limits.h"

namespace meshrt::io {

namespace {
struct DTypeName {
  const char* name;
  DType dtype;
};
constexpr DTypeName kDTypes[] = {{"F32", DType::kF32}, {"F64", DType::kF64}, {"F16", DType::kF16},
                                 {"BF16", DType::kBF16}, {"I32", DType::kI32}, {"I64", DType::kI64},
                                 {"U8", DType::kU8},   {"BOOL", DType::kBool}};

[[noreturn]] void refuse(const std::string& source, const std::string& what) {
  throw Error(ErrorKind::kInvalidArgument, "safetensors file " + source + ": " + what);
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
}  // namespace

const SafetensorsEntry& SafetensorsHeader::find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return t;
  }
  std::string some;
  for (size_t i = 0; i < tensors.size() && i < 5; ++i) some += (i ? ", " : "") + tensors[i].name;
  throw Error(ErrorKind::kInvalidArgument,
              detail::cat("no tensor '", name, "' in this safetensors file (it has ", tensors.size(),
                          " tensors", tensors.empty() ? "" : ": " + some, tensors.size() > 5 ? ", ..." : "", ")"));
}

const char* safetensors_dtype_name(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

DType parse_safetensors_dtype(const std::string& name) {
  for (const auto& d : kDTypes) {
    if (name == d.name) return d.dtype;
  }
  throw Error(ErrorKind::kInvalidArgument,
              detail::cat("dtype \"", name, "\" is not supported (expected F32, F64, F16, BF16, I32, I64, U8 or BOOL)"));
}

SafetensorsHeader parse_safetensors_header(std::span<const uint8_t> prefix, uint64_t file_size,
                                           const std::string& source) {
  if (file_size < 8 || prefix.size() < 8) {
    refuse(source, detail::cat("the file is ", file_size, " bytes, too short for the 8-byte header length"));
  }
  SafetensorsHeader h;
  h.header_bytes = read_u64_le(prefix.data());
  if (h.header_bytes > kMaxSafetensorsHeaderBytes) {
    refuse(source, detail::cat("the header length ", h.header_bytes, " exceeds the limit of ",
                               kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (h.header_bytes > file_size - 8) {
    refuse(source, detail::cat("the header length ", h.header_bytes, " runs past the end of the ", file_size,
                               "-byte file (truncated?)"));
  }
  if (prefix.size() < 8 + h.header_bytes) {
    refuse(source, detail::cat("only ", prefix.size(), " bytes were given for a header of ", h.header_bytes));
  }
  h.data_start = 8 + h.header_bytes;
  h.data_bytes = file_size - h.data_start;

  nlohmann::json json;
  try {
    json = json_limits::parse(std::string_view(reinterpret_cast<const char*>(prefix.data()) + 8, h.header_bytes));
  } catch (const nlohmann::json::exception& e) {
    refuse(source, std::string("the header is not valid JSON: ") + e.what());
  } catch (const std::length_error& e) {
    refuse(source, std::string("the header is not accepted: ") + e.what());
  }
  if (!json.is_object()) refuse(source, "the header is not a JSON object");

  for (auto it = json.begin(); it != json.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) refuse(source, "__metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) refuse(source, "__metadata__ value of '" + m.key() + "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    std::string where = "tensor '" + name + "'";
    if (name.empty()) refuse(source, "a tensor has an empty name");
    if (!v.is_object()) refuse(source, where + " is not an object");
    for (auto f = v.begin(); f != v.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        refuse(source, where + " has an unknown field '" + f.key() + "'");
      }
    }
    if (!v.contains("dtype") || !v["dtype"].is_string()) refuse(source, where + ": dtype is missing or not a string");
    if (!v.contains("shape") || !v["shape"].is_array()) refuse(source, where + ": shape is missing or not an array");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2) {
      refuse(source, where + ": data_offsets must be an array [begin, end]");
    }
    SafetensorsEntry e;
    e.name = name;
    try {
      e.dtype = parse_safetensors_dtype(v["dtype"].get<std::string>());
    } catch (const Error& err) {
      refuse(source, where + ": " + err.message());
    }
    std::vector<int64_t> dims;
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) refuse(source, where + ": shape entries must be non-negative integers, got " + json_limits::brief(d));
      uint64_t extent = d.get<uint64_t>();
      if (extent > (1ull << 58) || (extent != 0 && numel > (1ull << 58) / extent)) {
        refuse(source, where + ": the shape " + json_limits::brief(v["shape"]) + " has too many elements");
      }
      numel *= extent;
      dims.push_back(static_cast<int64_t>(extent));
    }
    if (dims.size() > 16) refuse(source, where + ": more than 16 dimensions");
    e.shape = Shape(dims);
    const auto& offsets = v["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      refuse(source, where + ": data_offsets must be non-negative integers, got " + json_limits::brief(offsets));
    }
    e.begin = offsets[0].get<uint64_t>();
    e.end = offsets[1].get<uint64_t>();
    if (e.end < e.begin) refuse(source, detail::cat(where, ": data_offsets [", e.begin, ", ", e.end, "] end before they begin"));
    uint64_t expected = numel * size_of(e.dtype);  // numel <= 2^58 (below): no overflow
    if (e.end - e.begin != expected) {
      refuse(source, detail::cat(where, ": shape ", e.shape, " of ", safetensors_dtype_name(e.dtype), " needs ", expected,
                                 " bytes but data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin));
    }
    if (e.end > h.data_bytes) {
      refuse(source, detail::cat(where, ": data_offsets [", e.begin, ", ", e.end, "] run past the ", h.data_bytes,
                                 " bytes of data in the file (truncated?)"));
    }
    h.tensors.push_back(std::move(e));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const auto& e : h.tensors) {
    if (e.begin < at) {
      refuse(source, detail::cat("tensor '", e.name, "' starts at byte ", e.begin, " but '", previous->name,
                                 "' ends at byte ", at, ": the byte ranges overlap"));
    }
    if (e.begin > at) {
      refuse(source, detail::cat("bytes ", at, " to ", e.begin, " of the data belong to no tensor (a hole before '",
                                 e.name, "')"));
    }
    at = e.end;
    previous = &e;
  }
  if (at != h.data_bytes) {
    refuse(source, detail::cat("the tensors cover ", at, " bytes of data but the file holds ", h.data_bytes,
                               " (extra bytes at the end)"));
  }
  return h;
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw Error(ErrorKind::kInvalidArgument,
                detail::cat("cannot open safetensors file ", path, ": ", std::strerror(errno)));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (fstat(fd, &st) != 0) throw Error(ErrorKind::kInvalidArgument, "cannot stat " + path);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  std::vector<uint8_t> prefix(std::min<uint64_t>(size, 8));
  if (pread(fd, prefix.data(), prefix.size(), 0) != static_cast<ssize_t>(prefix.size())) {
    throw Error(ErrorKind::kInvalidArgument, "cannot read " + path);
  }
  if (size >= 8) {
    uint64_t n = read_u64_le(prefix.data());
    if (n <= kMaxSafetensorsHeaderBytes && n <= size - 8) {
      prefix.resize(8 + n);
      if (pread(fd, prefix.data() + 8, n, 8) != static_cast<ssize_t>(n)) {
        throw Error(ErrorKind::kInvalidArgument, "cannot read the header of " + path);
      }
    }
  }
  return parse_safetensors_header(prefix, size, path);
}

std::vector<uint8_t> make_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                             const std::map<std::string, std::string>& metadata) {
  nlohmann::json json = nlohmann::json::object();
  if (!metadata.empty()) json["__metadata__"] = metadata;
  for (const auto& e : entries) {
    json[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)}, {"shape", e.shape.dims()},
                    {"data_offsets", {e.begin, e.end}}};
  }
  std::string text = json_limits::dump(json);
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<uint8_t> out(8 + text.size());
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, text.data(), text.size());
  return out;
}

void write_safetensors_file(const std::string& path, const std::vector<std::pair<std::string, HostTensor>>& tensors,
                            const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsEntry> entries;
  uint64_t at = 0;
  for (const auto& [name, t] : tensors) {
    MESHRT_CHECK_ARG(t.defined(), "write_safetensors_file: tensor '", name, "' is undefined");
    entries.push_back({name, t.dtype(), t.shape(), at, at + t.nbytes()});
    at += t.nbytes();
  }
  std::vector<uint8_t> header = make_safetensors_header(entries, metadata);
  std::string temp = path + ".partial";
  {
    File f(temp, O_WRONLY | O_CREAT | O_TRUNC);
    f.write_at(header.data(), header.size(), 0);
    uint64_t offset = header.size();
    for (const auto& [name, t] : tensors) {
      f.write_at(t.raw_data(), t.nbytes(), offset);
      offset += t.nbytes();
    }
    f.sync();
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) io_error("cannot commit", path);
}

}  // namespace meshrt::io
