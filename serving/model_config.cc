#include "serving/model_config.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "device/error.h"
#include "io/json_limits.h"

namespace meshrt::serving {

namespace {
using json = nlohmann::json;

// Reading a config: every error names the file and the field.
class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw Error(ErrorKind::kInvalidArgument, path_ + ": " + field + ": " + what);
  }

  const json& need(const json& object, const std::string& key, const std::string& field) const {
    if (!object.is_object() || !object.contains(key)) fail(field, "missing");
    return object[key];
  }

  std::string string(const json& v, const std::string& field) const {
    if (!v.is_string()) fail(field, "expected a string, got " + io::json_limits::brief(v));
    return v.get<std::string>();
  }

  int64_t integer(const json& v, const std::string& field, int64_t min, int64_t max) const {
    if (!v.is_number_integer()) fail(field, "expected an integer, got " + io::json_limits::brief(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(max)) {
      fail(field, detail::cat("expected an integer from ", min, " to ", max, ", got ", io::json_limits::brief(v)));
    }
    int64_t i = v.get<int64_t>();
    if (i < min || i > max) fail(field, detail::cat("expected an integer from ", min, " to ", max, ", got ", i));
    return i;
  }

  // Refuses fields of an object that are not in allowed.
  void only(const json& object, std::initializer_list<const char*> allowed, const std::string& field) const {
    for (auto it = object.begin(); it != object.end(); ++it) {
      bool known = false;
      for (const char* a : allowed) known = known || it.key() == a;
      if (!known) fail(field + "." + it.key(), "unknown field");
    }
  }

  TensorSpec tensor(const json& v, const std::string& field) const {
    if (!v.is_object()) fail(field, "expected an object {name, datatype, shape}, got " + io::json_limits::brief(v));
    only(v, {"name", "datatype", "shape"}, field);
    TensorSpec t;
    t.name = string(need(v, "name", field + ".name"), field + ".name");
    if (t.name.empty()) fail(field + ".name", "expected a non-empty name");
    std::string datatype = string(need(v, "datatype", field + ".datatype"), field + ".datatype");
    try {
      t.dtype = parse_kserve_datatype(datatype);
    } catch (const Error& e) {
      fail(field + ".datatype", e.message());
    }
    const json& shape = need(v, "shape", field + ".shape");
    if (!shape.is_array() || shape.size() < 2 || shape.size() > 8) {
      fail(field + ".shape", "expected [-1, ..., width] (2 to 8 dimensions), got " + io::json_limits::brief(shape));
    }
    if (!shape[0].is_number_integer() || shape[0].get<int64_t>() != -1) {
      fail(field + ".shape", "the first dimension must be -1 (the batch axis), got " + io::json_limits::brief(shape));
    }
    t.shape = {-1};
    // Between the batch axis and the last: an extent, or -1 (any extent).
    for (size_t d = 1; d + 1 < shape.size(); ++d) {
      std::string f = detail::cat(field, ".shape[", d, "]");
      t.shape.push_back(shape[d].is_number_integer() && shape[d].get<int64_t>() == -1 ? -1 : integer(shape[d], f, 1, 1 << 24));
    }
    t.shape.push_back(integer(shape[shape.size() - 1], detail::cat(field, ".shape[", shape.size() - 1, "]"), 1, 1 << 24));
    return t;
  }

  // One layer: its type's registry entry says which fields it reads and how
  // (models/layers.h); every other field is refused, so a misspelt or
  // misplaced field is not silently ignored. saved: the "save" names of the
  // stage's earlier layers (this layer's is added).
  LayerConfig layer(const json& v, const std::string& field, std::set<std::string>& saved) const {
    if (!v.is_object()) fail(field, "expected an object with a \"type\"");
    LayerConfig layer;
    layer.where = field;
    layer.type = string(need(v, "type", field + ".type"), field + ".type");
    const models::LayerType* type = models::find_layer_type(layer.type);
    if (!type) {
      std::string names;
      for (const std::string& n : models::layer_type_names()) names += (names.empty() ? "" : ", ") + n;
      fail(field + ".type", "expected one of " + names + ", got \"" + layer.type + "\"");
    }
    for (auto it = v.begin(); it != v.end(); ++it) {
      bool known = it.key() == "type" || it.key() == "save";
      for (const models::FieldSpec& spec : type->fields) known = known || it.key() == spec.name;
      if (!known) fail(field + "." + it.key(), "unknown field");
    }
    for (const models::FieldSpec& spec : type->fields) {
      std::string f = field + "." + spec.name;
      bool given = v.contains(spec.name);
      if (!given && spec.required) {
        fail(f, spec.kind == models::FieldKind::kTensor ? "missing (a tensor name in the weights)" : "missing");
      }
      switch (spec.kind) {
        case models::FieldKind::kTensor:
        case models::FieldKind::kSaved:
          if (!given) break;
          layer.text[spec.name] = string(v[spec.name], f);
          if (layer.text[spec.name].empty()) fail(f, "expected a non-empty name");
          if (spec.kind == models::FieldKind::kSaved && !saved.count(layer.text[spec.name])) {
            fail(f, "expected the \"save\" name of an earlier layer of this stage, got \"" + layer.text[spec.name] + "\"");
          }
          break;
        case models::FieldKind::kChoice: {
          std::string choice = given ? string(v[spec.name], f) : spec.default_choice;
          if (std::find(spec.choices.begin(), spec.choices.end(), choice) == spec.choices.end()) {
            std::string list;
            for (size_t i = 0; i < spec.choices.size(); ++i) {
              list += (i == 0 ? "" : i + 1 == spec.choices.size() ? " or " : ", ") + spec.choices[i];
            }
            fail(f, "expected " + list + ", got \"" + choice + "\"");
          }
          layer.text[spec.name] = choice;
          break;
        }
        case models::FieldKind::kNumber:
          if (given && (!v[spec.name].is_number() || v[spec.name].get<double>() < spec.minimum)) {
            fail(f, std::isinf(spec.minimum) ? std::string("expected a number") : detail::cat("expected a number >= ", spec.minimum));
          }
          layer.numbers[spec.name] = given ? v[spec.name].get<double>() : spec.default_number;
          break;
      }
    }
    if (v.contains("save")) {
      layer.save = string(v["save"], field + ".save");
      if (layer.save.empty()) fail(field + ".save", "expected a non-empty name");
      saved.insert(layer.save);
    }
    return layer;
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
// The optional "batching" object of a config (layer config or meshrt.json).
void read_batching(const Reader& r, const json& v, BatchingConfig& out) {
  if (v.contains("batching")) {
    const json& b = v["batching"];
    if (!b.is_object()) r.fail("batching", "expected an object");
    static const std::set<std::string> fields = {"enabled", "max_batch_size", "max_queue_delay_us",
                                                 "preferred_batch_sizes", "micro_batches", "max_queue_size",
                                                 "start_when_idle"};
    for (auto it = b.begin(); it != b.end(); ++it) {
      if (!fields.count(it.key())) r.fail("batching." + it.key(), "unknown field");
    }
    if (b.contains("enabled")) {
      if (!b["enabled"].is_boolean()) r.fail("batching.enabled", "expected true or false");
      out.enabled = b["enabled"].get<bool>();
    }
    if (b.contains("start_when_idle")) {
      if (!b["start_when_idle"].is_boolean()) r.fail("batching.start_when_idle", "expected true or false");
      out.start_when_idle = b["start_when_idle"].get<bool>();
    }
    if (b.contains("max_batch_size")) {
      out.max_batch_size = r.integer(b["max_batch_size"], "batching.max_batch_size", 1, 1 << 20);
    }
    if (b.contains("max_queue_delay_us")) {
      out.max_queue_delay_us = r.integer(b["max_queue_delay_us"], "batching.max_queue_delay_us", 0, 60000000);
    }
    if (b.contains("micro_batches")) {
      out.micro_batches = static_cast<int>(r.integer(b["micro_batches"], "batching.micro_batches", 1, 1024));
    }
    if (b.contains("max_queue_size")) {
      out.max_queue_size = r.integer(b["max_queue_size"], "batching.max_queue_size", 1, 1 << 20);
    }
    if (b.contains("preferred_batch_sizes")) {
      const json& p = b["preferred_batch_sizes"];
      if (!p.is_array()) r.fail("batching.preferred_batch_sizes", "expected a list of integers");
      for (size_t i = 0; i < p.size(); ++i) {
        int64_t size = r.integer(p[i], detail::cat("batching.preferred_batch_sizes[", i, "]"), 1, 1 << 20);
        if (size > out.max_batch_size) {
          r.fail(detail::cat("batching.preferred_batch_sizes[", i, "]"),
                 detail::cat("expected at most max_batch_size (", out.max_batch_size, "), got ", size));
        }
        out.preferred_batch_sizes.push_back(size);
      }
      std::sort(out.preferred_batch_sizes.begin(), out.preferred_batch_sizes.end());
    }
  }
}

}  // namespace

namespace {
// The text of a config file of at most kMaxModelConfigBytes.
std::string read_config_text(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(ErrorKind::kInvalidArgument, path + ": cannot be read");
  if (static_cast<uint64_t>(st.st_size) > kMaxModelConfigBytes) Reader(path).fail("(file)", "larger than 1 MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::kInvalidArgument, path + ": cannot be read");
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

json parse_config_json(std::string_view text, const Reader& r) {
  if (text.size() > kMaxModelConfigBytes) r.fail("(file)", "larger than 1 MiB");
  json v;
  try {
    v = io::json_limits::parse(text);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, r.path() + ": not valid JSON: " + e.what());
  } catch (const std::length_error& e) {
    throw Error(ErrorKind::kInvalidArgument, r.path() + ": " + e.what());
  }
  if (!v.is_object()) r.fail("(top level)", "expected a JSON object");
  return v;
}

// "version_policy": {"latest": {"num_versions": N}} | {"all": {}} |
// {"specific": {"versions": [...]}} (Triton's JSON form).
void read_version_policy(const Reader& r, const json& v, VersionPolicy& p) {
  if (!v.contains("version_policy")) return;
  const json& j = v["version_policy"];
  if (!j.is_object() || j.size() != 1) {
    r.fail("version_policy", "expected one of {\"latest\": {\"num_versions\": N}}, {\"all\": {}}, "
                             "{\"specific\": {\"versions\": [...]}}");
  }
  const std::string choice = j.begin().key();
  if (!j.begin()->is_object()) r.fail("version_policy." + choice, "expected an object");
  if (j.contains("latest")) {
    p.kind = VersionPolicy::Kind::kLatest;
    r.only(j["latest"], {"num_versions"}, "version_policy.latest");
    if (j["latest"].contains("num_versions")) {
      p.num_versions = static_cast<int>(r.integer(j["latest"]["num_versions"], "version_policy.latest.num_versions", 1, 1 << 20));
    }
  } else if (j.contains("all")) {
    p.kind = VersionPolicy::Kind::kAll;
    r.only(j["all"], {}, "version_policy.all");
  } else if (j.contains("specific")) {
    p.kind = VersionPolicy::Kind::kSpecific;
    r.only(j["specific"], {"versions"}, "version_policy.specific");
    const json& list = r.need(j["specific"], "versions", "version_policy.specific.versions");
    if (!list.is_array() || list.empty()) r.fail("version_policy.specific.versions", "expected a non-empty list of versions");
    for (size_t i = 0; i < list.size(); ++i) {
      p.versions.push_back(r.integer(list[i], detail::cat("version_policy.specific.versions[", i, "]"), 0, int64_t{1} << 62));
    }
  } else {
    r.fail("version_policy", "expected \"latest\", \"all\" or \"specific\"");
  }
}

// name (the folder's), version, rank_size and stage_size, shared by both formats.
void read_identity(const Reader& r, const json& v, const std::string& model_dir, bool name_required, ModelConfig& c) {
  std::string folder = model_dir.substr(model_dir.find_last_of('/') + 1);
  c.name = name_required || v.contains("name") ? r.string(r.need(v, "name", "name"), "name") : folder;
  if (c.name != folder) r.fail("name", "expected \"" + folder + "\" (the model's folder name), got \"" + c.name + "\"");
  if (v.contains("version")) {
    c.version = r.string(v["version"], "version");
    if (c.version.empty() || c.version.find('/') != std::string::npos) r.fail("version", "expected a plain version name");
  }
  c.rank_size = static_cast<int>(r.integer(r.need(v, "rank_size", "rank_size"), "rank_size", 1, 1 << 16));
  c.stage_size = static_cast<int>(r.integer(r.need(v, "stage_size", "stage_size"), "stage_size", 1, c.rank_size));
  if (c.rank_size % c.stage_size != 0) {
    r.fail("stage_size", detail::cat("expected a divisor of rank_size (", c.rank_size, "), got ", c.stage_size));
  }
}
}  // namespace

ModelConfig load_model_config(const std::string& model_dir) {
  if (is_file(model_dir + "/" + kHfServingConfig)) {
    return parse_hf_serving_config(read_config_text(model_dir + "/" + kHfServingConfig), model_dir);
  }
  return parse_model_config(read_config_text(model_dir + "/config.json"), model_dir);
}

ModelConfig parse_hf_serving_config(std::string_view text, const std::string& model_dir, const std::string& files_dir) {
  const std::string& files = files_dir.empty() ? model_dir : files_dir;
  ModelConfig c;
  c.format = ModelFormat::kHuggingFace;
  c.directory = files;
  c.config_path = model_dir + "/" + kHfServingConfig;
  c.weights_path = files;
  c.batching.max_batch_size = kHfDefaultMaxBatchSize;
  Reader r(c.config_path);
  json v = parse_config_json(text, r);
  static const std::set<std::string> known = {"name", "version", "rank_size", "stage_size", "compute_dtype", "batching",
                                              "kv_cache", "description", "version_policy"};
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!known.count(it.key())) {
      r.fail(it.key(), "unknown field (meshrt.json takes rank_size, stage_size, name, version, compute_dtype, batching, "
                       "kv_cache, description, version_policy)");
    }
  }
  if (v.contains("kv_cache")) {
    const json& k = v["kv_cache"];
    if (!k.is_object()) r.fail("kv_cache", "expected an object {\"block_size\": N, \"num_blocks\": M}");
    r.only(k, {"block_size", "num_blocks"}, "kv_cache");
    if (k.contains("block_size")) c.kv_cache.block_size = r.integer(k["block_size"], "kv_cache.block_size", 1, 4096);
    if (k.contains("num_blocks")) c.kv_cache.num_blocks = r.integer(k["num_blocks"], "kv_cache.num_blocks", 1, 1 << 24);
  }
  read_identity(r, v, model_dir, false, c);
  if (v.contains("compute_dtype")) {
    std::string dtype = r.string(v["compute_dtype"], "compute_dtype");
    if (dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
      r.fail("compute_dtype", "expected \"float32\", \"bfloat16\" or \"float16\" (torch_dtype's names), got \"" + dtype + "\"");
    }
    c.compute_dtype = dtype;
  }
  read_batching(r, v, c.batching);
  read_version_policy(r, v, c.version_policy);
  if (!is_file(files + "/config.json")) {
    r.fail("(folder)", files == model_dir ? "a Hugging Face model folder needs its config.json beside meshrt.json"
                                          : "version folder " + files + " needs the checkpoint's config.json");
  }
  return c;
}

ModelConfig parse_model_config(std::string_view text, const std::string& model_dir, const std::string& files_dir,
                               const std::string& servable_library) {
  const std::string& files = files_dir.empty() ? model_dir : files_dir;
  ModelConfig c;
  c.directory = files;
  c.config_path = model_dir + "/config.json";
  Reader r(c.config_path);
  json v = parse_config_json(text, r);
  static const std::set<std::string> known = {"name",    "version", "rank_size", "stage_size",       "inputs",
                                              "outputs", "weights", "stages",    "batching",         "description",
                                              "servable_library", "parameters", "version_policy"};
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!known.count(it.key())) r.fail(it.key(), "unknown field");
  }
  read_identity(r, v, model_dir, true, c);
  if (v.contains("servable_library")) {
    std::string library = r.string(v["servable_library"], "servable_library");
    if (library.empty()) r.fail("servable_library", "expected the path of a shared library");
    c.servable_library = library[0] == '/' ? library : model_dir + "/" + library;
  }
  if (!servable_library.empty()) c.servable_library = servable_library;
  // A library defines the servable from what the config gives it: inputs,
  // outputs and weights are then optional, and stages are its own.
  bool library = !c.servable_library.empty();
  if (v.contains("parameters")) {
    const json& p = v["parameters"];
    if (!p.is_object()) r.fail("parameters", "expected an object of strings, numbers or booleans");
    for (auto it = p.begin(); it != p.end(); ++it) {
      if (it->is_string()) {
        c.parameters[it.key()] = it->get<std::string>();
      } else if (it->is_number() || it->is_boolean()) {
        c.parameters[it.key()] = it->dump();
      } else {
        r.fail("parameters." + it.key(), "expected a string, a number or a boolean, got " + io::json_limits::brief(*it));
      }
    }
  }
  // One input and one output, both or neither (a library's servable sets its own then).
  if (!library || v.contains("inputs") || v.contains("outputs")) {
    const json& inputs = r.need(v, "inputs", "inputs");
    if (!inputs.is_array() || inputs.size() != 1) r.fail("inputs", "expected a list of exactly one input");
    c.input = r.tensor(inputs[0], "inputs[0]");
    const json& outputs = r.need(v, "outputs", "outputs");
    if (!outputs.is_array() || outputs.size() != 1) r.fail("outputs", "expected a list of exactly one output");
    c.output = r.tensor(outputs[0], "outputs[0]");
  }
  // The layers' rules; a library's servable may map shapes and dtypes as it likes.
  if (!library && (c.output.shape.size() != c.input.shape.size() ||
                   !std::equal(c.input.shape.begin(), c.input.shape.end() - 1, c.output.shape.begin()))) {
    std::string expected = "[";
    for (size_t d = 0; d + 1 < c.input.shape.size(); ++d) expected += std::to_string(c.input.shape[d]) + ", ";
    r.fail("outputs[0].shape", "expected " + expected + "width]: the layers act on the last axis and keep the others");
  }
  if (!library && c.output.dtype != c.input.dtype) {
    r.fail("outputs[0].datatype", std::string("expected ") + kserve_datatype(c.input.dtype) +
                                      " like the input (one dtype flows through the stages)");
  }

  // A library's stages may bring or compute their own weights.
  if (!library || v.contains("weights")) {
    std::string weights = r.string(r.need(v, "weights", "weights"), "weights");
    if (weights.empty() || weights.find("..") != std::string::npos || weights[0] == '/') {
      r.fail("weights", "expected a file or folder name inside the model folder, got \"" + weights + "\"");
    }
    c.weights_path = files + "/" + weights;
    if (!is_file(c.weights_path) && !is_file(c.weights_path + "/model.safetensors.index.json")) {
      r.fail("weights", "expected a safetensors file or checkpoint folder, but " + c.weights_path + " is neither");
    }
  }
  if (library && !v.contains("stages")) {
    read_batching(r, v, c.batching);
    read_version_policy(r, v, c.version_policy);
    return c;
  }

  const json& stages = r.need(v, "stages", "stages");
  if (!stages.is_array() || static_cast<int>(stages.size()) != c.stage_size) {
    r.fail("stages", detail::cat("expected a list of stage_size (", c.stage_size, ") stages"));
  }
  for (size_t s = 0; s < stages.size(); ++s) {
    std::string sf = detail::cat("stages[", s, "]");
    if (!stages[s].is_object()) r.fail(sf, "expected an object {\"layers\": [...]}");
    r.only(stages[s], {"layers"}, sf);
    const json& layers = r.need(stages[s], "layers", sf + ".layers");
    if (!layers.is_array()) r.fail(sf + ".layers", "expected a list of layers");
    StageConfig stage;
    std::set<std::string> saved;
    for (size_t l = 0; l < layers.size(); ++l) {
      std::string lf = detail::cat(sf, ".layers[", l, "]");
      stage.layers.push_back(r.layer(layers[l], lf, saved));
    }
    c.stages.push_back(stage);
  }

  read_batching(r, v, c.batching);
  read_version_policy(r, v, c.version_policy);
  return c;
}

std::vector<std::string> repository_models(const std::string& repository_dir) {
  if (!is_directory(repository_dir)) {
    throw Error(ErrorKind::kInvalidArgument, "model repository " + repository_dir + " is not a folder");
  }
  std::vector<std::string> names;
  if (DIR* d = ::opendir(repository_dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string dir = repository_dir + "/" + name;
      if (is_file(dir + "/config.json") || is_file(dir + "/" + kHfServingConfig)) names.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<ModelConfig> load_repository(const std::string& repository_dir,
                                         const std::map<std::string, std::string>& servable_libraries) {
  std::vector<std::string> names = repository_models(repository_dir);
  if (names.empty()) {
    throw Error(ErrorKind::kInvalidArgument,
                "model repository " + repository_dir + " holds no model (no folder with a config.json or a meshrt.json)");
  }
  for (const auto& [name, library] : servable_libraries) {
    MESHRT_CHECK_ARG(std::find(names.begin(), names.end(), name) != names.end(), "servable library ", library,
                     " is given for model '", name, "', which is not in the repository ", repository_dir);
    MESHRT_CHECK_ARG(!is_file(repository_dir + "/" + name + "/" + kHfServingConfig), "servable library ", library,
                     " is given for model '", name, "', a Hugging Face folder (meshrt.json): only config.json models "
                     "are served by a library");
  }
  std::vector<ModelConfig> out;
  for (const auto& n : names) {
    auto library = servable_libraries.find(n);
    for (ModelConfig& c : load_model_versions(repository_dir + "/" + n,
                                              library == servable_libraries.end() ? "" : library->second)) {
      out.push_back(std::move(c));
    }
  }
  return out;
}

std::vector<ModelConfig> load_model_versions(const std::string& model_dir, const std::string& servable_library) {
  std::vector<int64_t> found;
  if (DIR* d = ::opendir(model_dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      // Positive numbers without leading zeros, as Triton takes them ("0", "01": not versions).
      bool numeric = !name.empty() && name.size() <= 18 && name.find_first_not_of("0123456789") == std::string::npos &&
                     name[0] != '0';
      if (numeric && is_directory(model_dir + "/" + name)) found.push_back(std::stoll(name));
    }
    ::closedir(d);
  }
  if (found.empty()) {
    ModelConfig c = servable_library.empty()
                        ? load_model_config(model_dir)
                        : parse_model_config(read_config_text(model_dir + "/config.json"), model_dir, "", servable_library);
    // A policy picks among version folders; without any it would be reported and not followed.
    if (c.version_policy.kind != VersionPolicy::Kind::kLatest || c.version_policy.num_versions != 1) {
      throw Error(ErrorKind::kInvalidArgument, c.config_path + ": version_policy: the model has no version folders (" +
                                                   model_dir + "/1, ...) to choose from");
    }
    return {std::move(c)};
  }
  std::sort(found.begin(), found.end());
  const bool hf = is_file(model_dir + "/" + kHfServingConfig);
  const std::string config_path = model_dir + "/" + (hf ? kHfServingConfig : "config.json");
  const std::string text = read_config_text(config_path);
  auto parse = [&](const std::string& files) {
    return hf ? parse_hf_serving_config(text, model_dir, files)
              : parse_model_config(text, model_dir, files, servable_library);
  };
  Reader r(config_path);
  // The policy and the version key, read before any version folder is looked at.
  json v = parse_config_json(text, r);
  if (v.contains("version")) {
    r.fail("version", "a model with version folders (" + model_dir + "/" + std::to_string(found.front()) +
                          ", ...) takes its versions from them: remove \"version\"");
  }
  VersionPolicy policy;
  read_version_policy(r, v, policy);
  std::vector<int64_t> chosen;
  switch (policy.kind) {
    case VersionPolicy::Kind::kAll: chosen = found; break;
    case VersionPolicy::Kind::kLatest: {
      size_t n = std::min(found.size(), static_cast<size_t>(policy.num_versions));
      chosen.assign(found.end() - static_cast<std::ptrdiff_t>(n), found.end());
      break;
    }
    case VersionPolicy::Kind::kSpecific:
      for (int64_t want : policy.versions) {
        if (!std::binary_search(found.begin(), found.end(), want)) {
          r.fail("version_policy.specific.versions", detail::cat("version ", want, " has no folder ", model_dir, "/", want));
        }
      }
      chosen = policy.versions;
      std::sort(chosen.begin(), chosen.end());
      chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
      break;
  }
  std::vector<ModelConfig> out;
  for (int64_t version : chosen) {
    ModelConfig c = parse(model_dir + "/" + std::to_string(version));
    c.version = std::to_string(version);
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace meshrt::serving
