#include "sharding/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "io/file.h"
#include "io/json_limits.h"
#include "sharding/redistribute.h"
#include "io/safetensors.h"

namespace meshrt::sharding {

using io::File;
using io::io_error;
using io::make_safetensors_header;
using io::read_safetensors_header;
using io::SafetensorsEntry;
using io::sync_directory;

namespace {

constexpr uint64_t kMaxIndexBytes = 64ull << 20;

std::string join(const std::string& dir, const std::string& file) { return dir + "/" + file; }

// A file name from an index must stay inside the checkpoint folder.
void check_file_name(const std::string& file, const std::string& index) {
  MESHRT_CHECK_ARG(!file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
                   "checkpoint index ", index, " names the file '", file,
                   "': files must be plain names inside the checkpoint folder");
}

struct Index {
  std::map<std::string, std::string> weight_map;   // tensor -> file
  std::map<std::string, std::string> layouts;      // tensor -> saved layout
  std::map<std::string, std::vector<SavedBlock>> blocks;  // tensor -> the blocks its save wrote
};

// The blocks the index records for a tensor (informational: loading computes
// its own blocks from the shape; a malformed entry is ignored).
std::vector<SavedBlock> parse_blocks(const nlohmann::json& list) {
  std::vector<SavedBlock> out;
  if (!list.is_array()) return out;
  for (const auto& b : list) {
    if (!b.is_object() || !b.contains("rank") || !b.contains("offsets") || !b.contains("shape")) continue;
    try {
      out.push_back({b["rank"].get<int>(), b["offsets"].get<std::vector<int64_t>>(),
                     Shape(b["shape"].get<std::vector<int64_t>>())});
    } catch (const std::exception&) {
      continue;
    }
  }
  return out;
}

Index read_index(const std::string& dir) {
  std::string path = join(dir, kCheckpointIndex);
  struct stat st {};
  MESHRT_CHECK_ARG(::stat(path.c_str(), &st) == 0, "no checkpoint in ", dir, ": cannot open ", path);
  MESHRT_CHECK_ARG(static_cast<uint64_t>(st.st_size) <= kMaxIndexBytes, "checkpoint index ", path, " is larger than ",
                   kMaxIndexBytes, " bytes");
  std::ifstream in(path, std::ios::binary);
  MESHRT_CHECK_ARG(in.good(), "no checkpoint in ", dir, ": cannot open ", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json json;
  try {
    json = io::json_limits::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, detail::cat("checkpoint index ", path, " is not valid JSON: ", e.what()));
  } catch (const std::length_error& e) {
    throw Error(ErrorKind::kInvalidArgument, detail::cat("checkpoint index ", path, ": ", e.what()));
  }
  MESHRT_CHECK_ARG(json.is_object() && json.contains("weight_map") && json["weight_map"].is_object(),
                   "checkpoint index ", path, " has no \"weight_map\" object");
  Index index;
  for (auto it = json["weight_map"].begin(); it != json["weight_map"].end(); ++it) {
    MESHRT_CHECK_ARG(it.value().is_string(), "checkpoint index ", path, ": the file of '", it.key(),
                     "' is not a string");
    std::string file = it.value().get<std::string>();
    check_file_name(file, path);
    index.weight_map[it.key()] = file;
  }
  if (json.contains("metadata") && json["metadata"].is_object() && json["metadata"].contains("layouts") &&
      json["metadata"]["layouts"].is_object()) {
    for (auto it = json["metadata"]["layouts"].begin(); it != json["metadata"]["layouts"].end(); ++it) {
      if (it.value().is_string()) index.layouts[it.key()] = it.value().get<std::string>();
    }
  }
  if (json.contains("metadata") && json["metadata"].is_object() && json["metadata"].contains("blocks") &&
      json["metadata"]["blocks"].is_object()) {
    for (auto it = json["metadata"]["blocks"].begin(); it != json["metadata"]["blocks"].end(); ++it) {
      index.blocks[it.key()] = parse_blocks(it.value());
    }
  }
  return index;
}

// Calls run(global_element_offset, block_element_offset, elements) for each
// contiguous run of a block (at offsets, with extents block) inside a
// row-major tensor of shape global.
void for_each_run(const Shape& global, const std::vector<int64_t>& offsets, const Shape& block,
                  const std::function<void(int64_t, int64_t, int64_t)>& run) {
  int n = global.ndim();
  if (block.numel() == 0) return;
  if (n == 0) {
    run(0, 0, 1);
    return;
  }
  // j: the innermost dimension the block does not cover whole; runs span it and
  // everything after it.
  int j = n - 1;
  while (j > 0 && block[j] == global[j]) --j;
  std::vector<int64_t> stride(static_cast<size_t>(n), 1);
  for (int d = n - 2; d >= 0; --d) stride[static_cast<size_t>(d)] = stride[static_cast<size_t>(d) + 1] * global[d + 1];
  int64_t run_elements = block[j] * stride[static_cast<size_t>(j)];
  std::vector<int64_t> index(static_cast<size_t>(j), 0);
  int64_t block_offset = 0;
  for (;;) {
    int64_t offset = offsets[static_cast<size_t>(j)] * stride[static_cast<size_t>(j)];
    for (int d = 0; d < j; ++d) offset += (offsets[static_cast<size_t>(d)] + index[static_cast<size_t>(d)]) * stride[static_cast<size_t>(d)];
    run(offset, block_offset, run_elements);
    block_offset += run_elements;
    int d = j - 1;
    while (d >= 0 && ++index[static_cast<size_t>(d)] == block[d]) index[static_cast<size_t>(d--)] = 0;
    if (d < 0) break;
  }
}

// Whether the rank at coordinates writes its block: one replica per block, the
// one at coordinate 0 of every mesh axis the layout does not shard with.
bool writes_block(const Mesh& mesh, const Layout& layout, const std::vector<int>& coordinates) {
  for (int i = 0; i < mesh.ndim(); ++i) {
    const MeshAxis& a = mesh.axes()[static_cast<size_t>(i)];
    if (layout.dim_of(a.name) < 0 && coordinates[static_cast<size_t>(i)] != 0) return false;
  }
  return true;
}

bool writes_block(const Mesh& mesh, const Layout& layout) {
  return writes_block(mesh, layout, mesh.coordinates(mesh.rank()));
}

// The blocks a save writes, for the index: each block's rank, offsets and shape.
nlohmann::json saved_blocks(const DTensor& t) {
  const Mesh& mesh = t.mesh();
  nlohmann::json blocks = nlohmann::json::array();
  for (int r = 0; r < mesh.size(); ++r) {
    std::vector<int> coordinates = mesh.coordinates(r);
    if (!writes_block(mesh, t.layout(), coordinates)) continue;
    blocks.push_back({{"rank", r},
                      {"offsets", t.layout().block_offsets(mesh, t.global_shape(), coordinates)},
                      {"shape", t.layout().local_shape(mesh, t.global_shape(), coordinates).dims()}});
  }
  return blocks;
}

// All ranks agree whether every rank succeeded; ok is this rank's result.
bool everyone_ok(const Mesh& mesh, bool ok) {
  DeviceTensor flag = to_device(HostTensor::full<int32_t>({1}, ok ? 1 : 0), mesh.device());
  mesh.world_communicator().all_reduce(flag, ReduceOp::kMin).wait();
  return meshrt::to_host(flag).data<int32_t>()[0] == 1;
}

std::string new_save_id(const Mesh& mesh) {
  uint64_t id = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) ^
                (static_cast<uint64_t>(::getpid()) << 40);
  DeviceTensor t = to_device(HostTensor::full<int64_t>({1}, static_cast<int64_t>(id)), mesh.device());
  mesh.world_communicator().broadcast(t, 0).wait();
  std::ostringstream out;
  out << std::hex << static_cast<uint64_t>(meshrt::to_host(t).data<int64_t>()[0]);
  return out.str();
}

// The names of meshrt's checkpoint data files: model-<save id>-NNNNN-of-NNNNN.safetensors,
// and the same with .partial while a save writes them.
bool is_checkpoint_data_file(const std::string& name) {
  static const std::regex pattern("model-[0-9a-f]+-[0-9]{5}-of-[0-9]{5}\\.safetensors(\\.partial)?");
  return std::regex_match(name, pattern);
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) out.emplace_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

}  // namespace

void save_checkpoint(const std::string& dir, const std::vector<DTensor>& tensors_in, const CheckpointOptions& options) {
  MESHRT_CHECK_ARG(!tensors_in.empty(), "save_checkpoint: no tensors to save");
  const Mesh& mesh = tensors_in[0].mesh();
  std::set<std::string> names;
  std::vector<DTensor> tensors;
  for (const DTensor& t : tensors_in) {
    MESHRT_CHECK_ARG(t.defined(), "save_checkpoint: an undefined DTensor");
    MESHRT_CHECK_ARG(t.mesh() == mesh, "save_checkpoint: ", t.description(), " is not on ", mesh.to_string());
    MESHRT_CHECK_ARG(!t.name().empty() && names.insert(t.name()).second, "save_checkpoint: the name '", t.name(),
                     "' is empty or used twice");
    // Partial values are reduced first: the file holds the value.
    tensors.push_back(t.layout().is_partial() ? redistribute(t, t.layout().with_partial({})) : t);
  }
  std::sort(tensors.begin(), tensors.end(), [](const DTensor& a, const DTensor& b) { return a.name() < b.name(); });

  // Group into files and lay the data out (the same on every rank).
  std::vector<std::vector<SafetensorsEntry>> files;
  uint64_t in_file = 0;
  for (const DTensor& t : tensors) {
    uint64_t bytes = static_cast<uint64_t>(t.global_shape().numel()) * size_of(t.dtype());
    if (files.empty() || (in_file > 0 && in_file + bytes > options.max_file_bytes)) {
      files.emplace_back();
      in_file = 0;
    }
    files.back().push_back({t.name(), t.dtype(), t.global_shape(), in_file, in_file + bytes});
    in_file += bytes;
  }
  std::string id = new_save_id(mesh);
  std::vector<std::string> file_names;
  for (size_t i = 0; i < files.size(); ++i) {
    char name[128];
    std::snprintf(name, sizeof name, "model-%s-%05zu-of-%05zu.safetensors", id.c_str(), i + 1, files.size());
    file_names.push_back(name);
  }
  auto temp_path = [&](size_t i) { return join(dir, file_names[i] + ".partial"); };
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"producer", "meshrt"}, {"save_id", id}};

  // 1. Rank 0 creates the files at full size with their headers.
  bool ok = true;
  std::string failure;
  std::vector<uint64_t> data_start(files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    std::vector<uint8_t> header = make_safetensors_header(files[i], metadata);
    data_start[i] = header.size();
  }
  if (mesh.rank() == 0) {
    try {
      ::mkdir(dir.c_str(), 0755);  // may exist
      for (size_t i = 0; i < files.size(); ++i) {
        std::vector<uint8_t> header = make_safetensors_header(files[i], metadata);
        File f(temp_path(i), O_WRONLY | O_CREAT | O_TRUNC);
        f.resize(header.size() + (files[i].empty() ? 0 : files[i].back().end));
        f.write_at(header.data(), header.size(), 0);
      }
    } catch (const std::exception& e) {
      ok = false;
      failure = e.what();
    }
  }
  MESHRT_CHECK(everyone_ok(mesh, ok), ErrorKind::kUnavailable, "save_checkpoint to ", dir,
               " failed creating the files", failure.empty() ? "" : ": " + failure);

  // 2. Every rank writes its blocks and flushes them.
  try {
    for (size_t i = 0; i < files.size(); ++i) {
      std::unique_ptr<File> f;
      for (const SafetensorsEntry& e : files[i]) {
        const DTensor& t = *std::find_if(tensors.begin(), tensors.end(), [&](const DTensor& x) { return x.name() == e.name; });
        if (!writes_block(mesh, t.layout())) continue;
        if (!f) f = std::make_unique<File>(temp_path(i), O_WRONLY);
        HostTensor block = meshrt::to_host(t.block_until_ready().local());  // its collectives rethrow here
        size_t element = size_of(t.dtype());
        for_each_run(t.global_shape(), t.layout().block_offsets(mesh, t.global_shape()), block.shape(),
                     [&](int64_t global, int64_t local, int64_t count) {
                       f->write_at(static_cast<const char*>(block.raw_data()) + static_cast<size_t>(local) * element,
                                   static_cast<size_t>(count) * element,
                                   data_start[i] + e.begin + static_cast<uint64_t>(global) * element);
                     });
      }
      if (f) f->sync();
    }
  } catch (const std::exception& e) {
    ok = false;
    failure = e.what();
  }
  MESHRT_CHECK(everyone_ok(mesh, ok), ErrorKind::kUnavailable, "save_checkpoint to ", dir,
               " failed writing the data", failure.empty() ? "" : ": " + failure);
  MESHRT_CHECK(!options.fail_before_commit, ErrorKind::kUnavailable, "save_checkpoint to ", dir,
               ": stopped before the commit (CheckpointOptions::fail_before_commit)");

  // 3. Rank 0 commits: data files into place, then the index by rename.
  if (mesh.rank() == 0) {
    try {
      for (size_t i = 0; i < files.size(); ++i) {
        if (::rename(temp_path(i).c_str(), join(dir, file_names[i]).c_str()) != 0) io_error("cannot rename", temp_path(i));
      }
      nlohmann::json index;
      uint64_t total = 0;
      for (const auto& f : files) total += f.empty() ? 0 : f.back().end;
      index["metadata"] = {{"total_size", total}, {"producer", "meshrt"}, {"save_id", id}, {"mesh", mesh.to_string()}};
      for (size_t i = 0; i < files.size(); ++i) {
        for (const SafetensorsEntry& e : files[i]) index["weight_map"][e.name] = file_names[i];
      }
      for (const DTensor& t : tensors_in) index["metadata"]["layouts"][t.name()] = t.layout().to_string();
      for (const DTensor& t : tensors) index["metadata"]["blocks"][t.name()] = saved_blocks(t);
      std::string text = index.dump(2);
      std::string index_temp = join(dir, std::string(kCheckpointIndex) + ".partial");
      {
        File f(index_temp, O_WRONLY | O_CREAT | O_TRUNC);
        f.write_at(text.data(), text.size(), 0);
        f.sync();
      }
      sync_directory(dir);
      if (::rename(index_temp.c_str(), join(dir, kCheckpointIndex).c_str()) != 0) io_error("cannot rename", index_temp);
      sync_directory(dir);
      // The new checkpoint is committed: remove every other data file of ours
      // (the previous checkpoint's, and leftovers of interrupted saves).
      std::set<std::string> current(file_names.begin(), file_names.end());
      for (const std::string& f : files_in(dir)) {
        if (is_checkpoint_data_file(f) && !current.count(f)) ::unlink(join(dir, f).c_str());
      }
    } catch (const std::exception& e) {
      ok = false;
      failure = e.what();
    }
  }
  MESHRT_CHECK(everyone_ok(mesh, ok), ErrorKind::kUnavailable, "save_checkpoint to ", dir,
               " failed committing", failure.empty() ? "" : ": " + failure);
}

TensorStore::TensorStore(const std::string& path) : path_(path) {
  struct stat st {};
  bool folder = ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  auto add = [&](const SafetensorsEntry& e, const std::string& file, size_t header, const std::string& layout,
                 std::vector<SavedBlock> blocks) {
    by_name_[e.name] = {entries_.size(), header};
    entries_.push_back({e.name, e.dtype, e.shape, file, layout, std::move(blocks)});
  };
  if (!folder) {
    headers_.emplace_back(path, read_safetensors_header(path));
    for (const SafetensorsEntry& e : headers_[0].second.tensors) add(e, path.substr(path.find_last_of('/') + 1), 0, "", {});
    return;
  }
  Index index = read_index(path);
  std::map<std::string, size_t> header_of;  // file -> index in headers_
  for (const auto& [name, file] : index.weight_map) {
    auto it = header_of.find(file);
    if (it == header_of.end()) {
      it = header_of.emplace(file, headers_.size()).first;
      headers_.emplace_back(join(path, file), read_safetensors_header(join(path, file)));
    }
    auto layout = index.layouts.find(name);
    auto blocks = index.blocks.find(name);
    add(headers_[it->second].second.find(name), file, it->second, layout == index.layouts.end() ? "" : layout->second,
        blocks == index.blocks.end() ? std::vector<SavedBlock>{} : blocks->second);
  }
}

const CheckpointEntry* TensorStore::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second.entry];
}

HostTensor TensorStore::read_block(const std::string& name, const std::vector<int64_t>& offsets,
                                   const Shape& shape) const {
  auto it = by_name_.find(name);
  MESHRT_CHECK_ARG(it != by_name_.end(), path_, " has no tensor '", name, "'");
  const auto& [file, header] = headers_[it->second.header];
  const SafetensorsEntry& e = header.find(name);
  MESHRT_CHECK_SHAPE(static_cast<int>(offsets.size()) == e.shape.ndim() && shape.ndim() == e.shape.ndim(),
                     "read_block of '", name, "' ", e.shape, " in ", path_, ": ", offsets.size(),
                     " offsets and the block ", shape, " must have one entry per dimension");
  for (int d = 0; d < e.shape.ndim(); ++d) {
    int64_t o = offsets[static_cast<size_t>(d)];
    MESHRT_CHECK_SHAPE(o >= 0 && shape[d] >= 0 && o + shape[d] <= e.shape[d], "read_block of '", name, "' ", e.shape,
                       " in ", path_, ": dimension ", d, " [", o, ", ", o + shape[d], ") is outside the tensor");
  }
  HostTensor block = HostTensor::empty(shape, e.dtype);
  size_t element = size_of(e.dtype);
  File f(file, O_RDONLY);
  uint64_t start = header.data_start + e.begin;  // (clang 14 cannot capture a structured binding)
  for_each_run(e.shape, offsets, shape, [&](int64_t global, int64_t at, int64_t count) {
    f.read_at(static_cast<char*>(block.raw_data()) + static_cast<size_t>(at) * element, static_cast<size_t>(count) * element,
              start + static_cast<uint64_t>(global) * element);
  });
  return block;
}

DTensor TensorStore::load(const std::string& name, const Mesh& mesh, const Layout& layout) const {
  auto it = by_name_.find(name);
  MESHRT_CHECK_ARG(it != by_name_.end(), path_, " has no tensor '", name, "'");
  const CheckpointEntry& e = entries_[it->second.entry];
  layout.check(mesh, e.shape, name);
  Shape local = layout.local_shape(mesh, e.shape);
  if (!layout.holds_value(mesh)) return DTensor(DeviceTensor::zeros(local, e.dtype, mesh.device()), e.shape, mesh, layout, name);
  HostTensor block = read_block(name, layout.block_offsets(mesh, e.shape), local);
  return DTensor(to_device(block, mesh.device()), e.shape, mesh, layout, name);
}

namespace {
// The store of a checkpoint folder (which must be one).
TensorStore checkpoint_store(const std::string& dir) {
  struct stat st {};
  MESHRT_CHECK_ARG(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "no checkpoint in ", dir, ": not a folder");
  return TensorStore(dir);
}
}  // namespace

std::vector<CheckpointEntry> list_checkpoint(const std::string& dir) { return checkpoint_store(dir).entries(); }

DTensor load_tensor(const std::string& dir, const std::string& name, const Mesh& mesh, const Layout& layout) {
  return checkpoint_store(dir).load(name, mesh, layout);
}

}  // namespace meshrt::sharding
