#include "cluster/ps_server.h"

#include <sys/stat.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>
#include <nlohmann/json.hpp>

#include "cluster/ps_client.h"
#include "cluster/wire.h"
#include "device/error.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "kernels/movement.h"
#include "rpc/proto/cluster.grpc.pb.h"
#include "rpc/status.h"
#include "training/optimizers.h"
#include "training/parameter.h"

namespace meshrt::cluster {

namespace {

using nlohmann::json;

// A call's answer other than status_for_error's (NOT_FOUND for an unknown
// variable, FAILED_PRECONDITION for a checkpoint file that cannot be written
// or read: the server is up, retrying elsewhere would not help).
struct Refusal {
  grpc::StatusCode code;
  std::string message;
};

[[noreturn]] void not_found(const std::string& name) {
  throw Refusal{grpc::StatusCode::NOT_FOUND, "no variable \"" + name + "\" on this parameter server"};
}

// Where a checkpoint's metadata keeps the variables' optimizer configs:
// {"<var>": {"kind": "sgd", "learning_rate": 0.1, ...}, ...}.
constexpr const char* kOptimizersKey = "meshrt.ps.optimizers";
constexpr const char* kFormatKey = "meshrt.ps.format";
constexpr const char* kFormat = "1";

json config_json(const OptimizerConfig& c) {
  return {{"kind", c.kind()},   {"learning_rate", c.learning_rate()}, {"momentum", c.momentum()},
          {"rho", c.rho()},     {"beta1", c.beta1()},                 {"beta2", c.beta2()},
          {"epsilon", c.epsilon()}};
}

OptimizerConfig config_from_json(const json& j, const std::string& what) {
  MESHRT_CHECK_ARG(j.is_object() && j.contains("kind") && j["kind"].is_string(), what,
                   ": an optimizer config needs a \"kind\"");
  OptimizerConfig c;
  c.set_kind(j["kind"].get<std::string>());
  auto number = [&](const char* key) {
    if (!j.contains(key)) return 0.0;
    MESHRT_CHECK_ARG(j[key].is_number(), what, ": optimizer field \"", key, "\" is not a number");
    return j[key].get<double>();
  };
  c.set_learning_rate(number("learning_rate"));
  c.set_momentum(number("momentum"));
  c.set_rho(number("rho"));
  c.set_beta1(number("beta1"));
  c.set_beta2(number("beta2"));
  c.set_epsilon(number("epsilon"));
  return c;
}

std::string shape_text(DType dtype, const Shape& shape) { return meshrt::detail::cat(to_string(dtype), " ", shape); }

}  // namespace

// One variable shard. Its dtype and shape never change (a restore refuses
// another); everything else is guarded by mu.
struct Shard {
  Shard(std::string name, DType dtype, Shape shape) : name(std::move(name)), dtype(dtype), shape(std::move(shape)) {}

  const std::string name;
  const DType dtype;
  const Shape shape;

  std::mutex mu;
  OptimizerConfig config;
  // The optimizer keys its slots by the parameter's address: both live here.
  std::unique_ptr<training::Parameter> parameter;
  std::unique_ptr<training::Optimizer> optimizer;
  std::set<int64_t> applied;  // step ids at or above the server's fence (those below are done)
  int64_t updates = 0;        // steps applied, ever (checkpointed)
};

// A gradient of an Apply request, checked against its shard before any is applied.
struct CheckedGradient {
  std::shared_ptr<Shard> shard;
  HostTensor dense;
  HostTensor ids, rows;  // sparse: i64 [count], [count, row...]
  size_t bytes = 0;
};

class PsService final : public ParameterServer::CallbackService {
 public:
  explicit PsService(int task_index) : task_index_(task_index) {}

  grpc::ServerUnaryReactor* CreateVariable(grpc::CallbackServerContext* context, const CreateVariableRequest* request,
                                           CreateVariableResponse* response) override {
    return answer(context, [&] { response->set_created(create(*request)); });
  }

  grpc::ServerUnaryReactor* Read(grpc::CallbackServerContext* context, const ReadRequest* request,
                                 ReadResponse* response) override {
    return answer(context, [&] {
      for (const std::string& name : request->names()) {
        std::shared_ptr<Shard> shard = find(name);
        HostTensor value;
        {
          std::lock_guard<std::mutex> lock(shard->mu);
          value = to_host(shard->parameter->value());
        }
        put_tensor(response->add_values(), value);
      }
    });
  }

  grpc::ServerUnaryReactor* ReadRows(grpc::CallbackServerContext* context, const ReadRowsRequest* request,
                                     ReadRowsResponse* response) override {
    return answer(context, [&] {
      std::shared_ptr<Shard> shard = find(request->name());
      MESHRT_CHECK_ARG(shard->shape.ndim() >= 1, "ReadRows: variable \"", shard->name, "\" is a scalar (",
                       shape_text(shard->dtype, shard->shape), "): it has no rows");
      std::vector<int64_t> ids(request->ids().begin(), request->ids().end());
      for (int64_t id : ids) {
        MESHRT_CHECK_ARG(id >= 0 && id < shard->shape[0], "ReadRows: variable \"", shard->name, "\": id ", id,
                         " outside [0, ", shard->shape[0], ")");
      }
      HostTensor rows;
      if (ids.empty()) {
        rows = HostTensor::empty(shard->shape.with(0, 0), shard->dtype);
      } else {
        const auto count = static_cast<int64_t>(ids.size());
        DeviceTensor index = to_device(HostTensor::from_vector(ids, Shape{count}), Device::cpu());
        std::lock_guard<std::mutex> lock(shard->mu);
        rows = to_host(kernels::index_select(shard->parameter->value(), 0, index));
      }
      put_tensor(response->mutable_rows(), rows);
    });
  }

  grpc::ServerUnaryReactor* Apply(grpc::CallbackServerContext* context, const ApplyRequest* request,
                                  ApplyResponse* response) override {
    return answer(context, [&] { apply(*request, *response); });
  }

  grpc::ServerUnaryReactor* Save(grpc::CallbackServerContext* context, const SaveRequest* request,
                                 SaveResponse* response) override {
    return answer(context, [&] { checkpoint_io("Save", [&] { response->set_bytes(save(request->path())); }); });
  }

  grpc::ServerUnaryReactor* Restore(grpc::CallbackServerContext* context, const RestoreRequest* request,
                                    RestoreResponse* response) override {
    return answer(context, [&] {
      checkpoint_io("Restore", [&] { response->set_variables(restore(request->path())); });
      // From now on, applies of older step ids (the run before the restore,
      // still in flight on workers) are dropped.
      fence_.store(std::max(fence_.load(), request->fence_step_id()));
    });
  }

  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context, const StatusRequest*,
                                   StatusResponse* response) override {
    return answer(context, [&] {
      response->set_task_index(task_index_);
      int64_t updates = 0;
      for (const std::shared_ptr<Shard>& shard : snapshot()) {
        VariableInfo* info = response->add_variables();
        info->set_name(shard->name);
        info->set_dtype(to_string(shard->dtype));
        for (int64_t d : shard->shape) info->add_shape(d);
        std::lock_guard<std::mutex> lock(shard->mu);
        info->set_updates(shard->updates);
        updates += info->updates();
      }
      response->set_updates(updates);
      response->set_update_bytes(update_bytes_.load());
    });
  }

 private:
  // Runs a call's work on the calling (gRPC) thread and finishes it: a
  // meshrt Error as status_for_error maps it, nothing thrown escapes.
  template <class F>
  static grpc::ServerUnaryReactor* answer(grpc::CallbackServerContext* context, F&& work) {
    grpc::Status status;
    try {
      work();
    } catch (const Refusal& r) {
      status = grpc::Status(r.code, r.message);
    } catch (const Error& e) {
      status = rpc::status_for_error(e);
    } catch (const std::exception& e) {
      status = grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }

  // A file that cannot be written or read (io's kUnavailable) is the
  // caller's to fix (a path, a full disk), not this server being down: the
  // client must not take it for an unreachable server.
  template <class F>
  static void checkpoint_io(const char* method, F&& work) {
    try {
      work();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kUnavailable) throw;
      throw Refusal{grpc::StatusCode::FAILED_PRECONDITION, std::string(method) + ": " + e.message()};
    }
  }

  std::shared_ptr<Shard> find(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shards_.find(name);
    if (it == shards_.end()) not_found(name);
    return it->second;
  }

  std::vector<std::shared_ptr<Shard>> snapshot() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::shared_ptr<Shard>> all;
    for (const auto& [name, shard] : shards_) all.push_back(shard);
    return all;
  }

  bool create(const CreateVariableRequest& request) {
    const std::string& name = request.name();
    MESHRT_CHECK_ARG(!name.empty(), "CreateVariable: a variable needs a name");
    HostTensor initial = get_tensor(request.initial(), "CreateVariable \"" + name + "\": the initial value");
    MESHRT_CHECK_ARG(is_floating(initial.dtype()), "CreateVariable \"", name, "\": a variable is a floating-point ",
                     "tensor, got ", shape_text(initial.dtype(), initial.shape()));
    // Before anything is made: an unknown optimizer is refused here.
    std::unique_ptr<training::Optimizer> optimizer = make_optimizer(request.optimizer());
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shards_.find(name);
    if (it != shards_.end()) {
      const Shard& shard = *it->second;
      MESHRT_CHECK_ARG(shard.dtype == initial.dtype() && shard.shape == initial.shape(), "CreateVariable \"", name,
                       "\": it exists as ", shape_text(shard.dtype, shard.shape), ", not ",
                       shape_text(initial.dtype(), initial.shape()));
      return false;
    }
    auto shard = std::make_shared<Shard>(name, initial.dtype(), initial.shape());
    shard->config = request.optimizer();
    shard->parameter = std::make_unique<training::Parameter>(name, to_device(initial, Device::cpu()));
    shard->optimizer = std::move(optimizer);
    shards_.emplace(name, std::move(shard));
    return true;
  }

  // Every gradient is checked before any is applied: a bad request changes nothing.
  CheckedGradient check(const Gradient& g) {
    CheckedGradient out;
    out.shard = find(g.name());
    const Shard& shard = *out.shard;
    const std::string what = "Apply: variable \"" + shard.name + "\" (" + shape_text(shard.dtype, shard.shape) + ")";
    const bool sparse = g.ids_size() > 0 || g.has_rows();
    MESHRT_CHECK_ARG(g.has_dense() != sparse, what, g.has_dense() ? ": both a dense and a sparse gradient"
                                                                    : ": no gradient (neither dense nor sparse)");
    if (!sparse) {
      out.dense = get_tensor(g.dense(), what + ": the dense gradient");
      MESHRT_CHECK_ARG(out.dense.dtype() == shard.dtype && out.dense.shape() == shard.shape, what,
                       ": a dense gradient ", shape_text(out.dense.dtype(), out.dense.shape()), " does not fit it");
      out.bytes = out.dense.nbytes();
      return out;
    }
    MESHRT_CHECK_ARG(shard.shape.ndim() >= 1, what, ": a scalar has no rows for a sparse gradient");
    out.rows = get_tensor(g.rows(), what + ": the sparse rows");
    const auto count = static_cast<int64_t>(g.ids_size());
    const Shape expected = shard.shape.with(0, count);
    MESHRT_CHECK_ARG(out.rows.dtype() == shard.dtype && out.rows.shape() == expected, what, ": sparse rows ",
                     shape_text(out.rows.dtype(), out.rows.shape()), " for ", count, " ids (expected ",
                     shape_text(shard.dtype, expected), ")");
    std::vector<int64_t> ids(g.ids().begin(), g.ids().end());
    for (int64_t id : ids) {
      MESHRT_CHECK_ARG(id >= 0 && id < shard.shape[0], what, ": id ", id, " outside [0, ", shard.shape[0], ")");
    }
    out.ids = HostTensor::from_vector(ids, Shape{count});
    out.bytes = out.rows.nbytes() + out.ids.nbytes();
    return out;
  }

  void apply(const ApplyRequest& request, ApplyResponse& response) {
    std::vector<CheckedGradient> gradients;
    std::set<std::string> names;
    for (const Gradient& g : request.gradients()) {
      MESHRT_CHECK_ARG(names.insert(g.name()).second, "Apply: variable \"", g.name(),
                       "\" has two gradients in one step");
      gradients.push_back(check(g));
    }
    const int64_t step_id = request.step_id();
    int applied = 0, duplicates = 0;
    // Every step below done_below has finished (the coordinator's word): a
    // late apply of one is dropped, and its id need not be kept.
    int64_t fence = fence_.load();
    while (request.done_below() > fence && !fence_.compare_exchange_weak(fence, request.done_below())) {
    }
    fence = fence_.load();
    const bool fenced = step_id < fence;
    for (CheckedGradient& g : gradients) {
      Shard& shard = *g.shard;
      std::lock_guard<std::mutex> lock(shard.mu);
      shard.applied.erase(shard.applied.begin(), shard.applied.lower_bound(fence));
      if (fenced || shard.applied.count(step_id)) {
        ++duplicates;
        continue;
      }
      training::Parameter& parameter = *shard.parameter;
      // An empty sparse gradient (no rows of this shard in the step) changes
      // nothing; the step id still counts as applied.
      if (g.dense.defined() || g.ids.numel() > 0) {
        try {
          if (g.dense.defined()) {
            parameter.set_grad(to_device(g.dense, Device::cpu()));
          } else {
            parameter.accumulate_sparse({to_device(g.ids, Device::cpu()), to_device(g.rows, Device::cpu())});
          }
          shard.optimizer->step({&parameter});
        } catch (...) {
          parameter.zero_grad();
          throw;
        }
        parameter.zero_grad();
      }
      shard.applied.insert(step_id);
      ++shard.updates;
      update_bytes_ += static_cast<int64_t>(g.bytes);
      ++applied;
    }
    response.set_applied(applied);
    response.set_duplicates(duplicates);
  }

  // --- checkpoints ------------------------------------------------------

  int64_t save(const std::string& path) {
    MESHRT_CHECK_ARG(!path.empty(), "Save: an empty path");
    std::lock_guard<std::mutex> checkpoint(checkpoint_mu_);
    std::vector<std::pair<std::string, HostTensor>> tensors;
    std::set<std::string> taken;
    json optimizers = json::object();
    auto add = [&](std::string name, HostTensor t) {
      // A variable called "<other>/iterations" would overwrite <other>'s entry.
      MESHRT_CHECK_ARG(taken.insert(name).second, "Save: two checkpoint entries are called \"", name,
                       "\" (a variable's name ends as another's slot, iterations or applied_steps)");
      tensors.emplace_back(std::move(name), std::move(t));
    };
    // Each shard as of one moment (its lock held while copied); shards apart
    // may be a few updates apart, as in asynchronous training anyway.
    for (const std::shared_ptr<Shard>& shard : snapshot()) {
      std::lock_guard<std::mutex> lock(shard->mu);
      add(shard->name, to_host(shard->parameter->value()));
      const std::vector<DeviceTensor>& slots = shard->optimizer->slots(*shard->parameter);
      for (size_t k = 0; k < slots.size(); ++k) add(meshrt::detail::cat(shard->name, "/slot_", k), to_host(slots[k]));
      add(shard->name + "/iterations",
          HostTensor::from_vector(std::vector<int64_t>{shard->optimizer->iterations()}, Shape{1}));
      shard->applied.erase(shard->applied.begin(), shard->applied.lower_bound(fence_.load()));
      std::vector<int64_t> steps(shard->applied.begin(), shard->applied.end());
      add(shard->name + "/applied_steps",
          HostTensor::from_vector(steps, Shape{static_cast<int64_t>(steps.size())}));
      add(shard->name + "/updates", HostTensor::from_vector(std::vector<int64_t>{shard->updates}, Shape{1}));
      optimizers[shard->name] = config_json(shard->config);
    }
    std::map<std::string, std::string> metadata{
        {kFormatKey, kFormat}, {kOptimizersKey, optimizers.dump()}, {"meshrt.ps.task_index", std::to_string(task_index_)}};
    io::write_safetensors_file(path, tensors, metadata);
    // The rename is durable once the directory is.
    auto slash = path.find_last_of('/');
    io::sync_directory(slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash));
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) {
      throw Refusal{grpc::StatusCode::FAILED_PRECONDITION, "Save: cannot stat " + path + " after writing it"};
    }
    return static_cast<int64_t>(st.st_size);
  }

  // A shard as a checkpoint holds it, read and checked before any shard changes.
  struct Saved {
    std::string name;
    OptimizerConfig config;
    HostTensor value;
    std::vector<HostTensor> slots;
    int64_t iterations = 0;
    std::set<int64_t> applied;
    int64_t updates = 0;
  };

  int restore(const std::string& path) {
    MESHRT_CHECK_ARG(!path.empty(), "Restore: an empty path");
    std::lock_guard<std::mutex> checkpoint(checkpoint_mu_);
    io::SafetensorsHeader header = io::read_safetensors_header(path);
    auto meta = header.metadata.find(kOptimizersKey);
    MESHRT_CHECK_ARG(meta != header.metadata.end(), "Restore: ", path,
                     " is not a parameter server's checkpoint (no \"", kOptimizersKey, "\" metadata)");
    json optimizers = json::parse(meta->second, nullptr, /*allow_exceptions=*/false);
    MESHRT_CHECK_ARG(optimizers.is_object(), "Restore: ", path, ": the \"", kOptimizersKey,
                     "\" metadata is not a JSON object");
    std::map<std::string, const io::SafetensorsEntry*> entries;
    for (const io::SafetensorsEntry& e : header.tensors) entries[e.name] = &e;

    io::File file(path, O_RDONLY);
    auto read = [&](const std::string& name, bool required) -> HostTensor {
      auto it = entries.find(name);
      if (it == entries.end()) {
        MESHRT_CHECK_ARG(!required, "Restore: ", path, " has no entry \"", name, "\"");
        return {};
      }
      const io::SafetensorsEntry& e = *it->second;
      HostTensor t = HostTensor::empty(e.shape, e.dtype);
      if (e.end > e.begin) file.read_at(t.raw_data(), e.end - e.begin, header.data_start + e.begin);
      return t;
    };
    std::vector<Saved> saved;
    for (const auto& [name, config] : optimizers.items()) {
      Saved s;
      s.name = name;
      const std::string what = "Restore: " + path + ": variable \"" + name + "\"";
      s.config = config_from_json(config, what);
      std::unique_ptr<training::Optimizer> optimizer = make_optimizer(s.config);
      s.value = read(name, true);
      MESHRT_CHECK_ARG(is_floating(s.value.dtype()), what, " is ", shape_text(s.value.dtype(), s.value.shape()),
                       ", not floating-point");
      for (int k = 0;; ++k) {
        HostTensor slot = read(meshrt::detail::cat(name, "/slot_", k), false);
        if (!slot.defined()) break;
        MESHRT_CHECK_ARG(slot.dtype() == s.value.dtype() && slot.shape() == s.value.shape(), what, ": slot ", k,
                         " ", shape_text(slot.dtype(), slot.shape()), " does not fit its value");
        s.slots.push_back(std::move(slot));
      }
      MESHRT_CHECK_ARG(s.slots.empty() || static_cast<int>(s.slots.size()) == optimizer->num_slots(), what, ": ",
                       s.slots.size(), " slots for an optimizer \"", s.config.kind(), "\" that keeps ",
                       optimizer->num_slots());
      HostTensor iterations = read(name + "/iterations", true);
      MESHRT_CHECK_ARG(iterations.dtype() == DType::kI64 && iterations.numel() == 1, what,
                       ": iterations must be one i64");
      s.iterations = iterations.to_vector<int64_t>()[0];
      MESHRT_CHECK_ARG(s.iterations >= 0, what, ": iterations ", s.iterations, " < 0");
      HostTensor steps = read(name + "/applied_steps", true);
      MESHRT_CHECK_ARG(steps.dtype() == DType::kI64 && steps.ndim() == 1, what, ": applied_steps must be i64 [n]");
      for (int64_t step : steps.to_vector<int64_t>()) s.applied.insert(step);
      HostTensor updates = read(name + "/updates", false);
      MESHRT_CHECK_ARG(!updates.defined() || (updates.dtype() == DType::kI64 && updates.numel() == 1), what,
                       ": updates must be one i64");
      s.updates = updates.defined() ? updates.to_vector<int64_t>()[0] : static_cast<int64_t>(s.applied.size());
      {
        // A shard that exists keeps its dtype and shape.
        std::lock_guard<std::mutex> lock(mu_);
        auto it = shards_.find(name);
        if (it != shards_.end()) {
          const Shard& shard = *it->second;
          MESHRT_CHECK_ARG(shard.dtype == s.value.dtype() && shard.shape == s.value.shape(), what, " is ",
                           shape_text(s.value.dtype(), s.value.shape()), " but exists here as ",
                           shape_text(shard.dtype, shard.shape));
        }
      }
      saved.push_back(std::move(s));
    }

    for (Saved& s : saved) {
      std::shared_ptr<Shard> shard;
      {
        std::lock_guard<std::mutex> lock(mu_);
        std::shared_ptr<Shard>& slot = shards_[s.name];
        // Made with its value at once (under the map's lock): no call finds a
        // shard without a parameter.
        if (!slot) {
          slot = std::make_shared<Shard>(s.name, s.value.dtype(), s.value.shape());
          slot->parameter = std::make_unique<training::Parameter>(s.name, to_device(s.value, Device::cpu()));
          slot->optimizer = make_optimizer(s.config);
        }
        shard = slot;
      }
      std::lock_guard<std::mutex> lock(shard->mu);
      // A fresh optimizer, then its state: the checkpoint's config wins.
      auto optimizer = make_optimizer(s.config);
      training::Parameter& parameter = *shard->parameter;
      parameter.zero_grad();
      parameter.set_value(to_device(s.value, Device::cpu()));
      std::vector<DeviceTensor> slots;
      for (const HostTensor& slot : s.slots) slots.push_back(to_device(slot, Device::cpu()));
      optimizer->set_slots(parameter, std::move(slots));
      optimizer->set_iterations(s.iterations);
      shard->optimizer = std::move(optimizer);
      shard->config = s.config;
      shard->applied = std::move(s.applied);
      shard->updates = s.updates;
    }
    return static_cast<int>(saved.size());
  }

  const int task_index_;
  std::atomic<int64_t> fence_{0};  // step ids below it are dropped (RestoreRequest::fence_step_id)
  std::mutex mu_;  // guards shards_ (the map; each shard has its own lock)
  std::map<std::string, std::shared_ptr<Shard>> shards_;
  std::mutex checkpoint_mu_;  // one Save or Restore at a time
  std::atomic<int64_t> update_bytes_{0};
};

PsServer::PsServer(int task_index, const rpc::ServerOptions& options)
    : task_index_(task_index), service_(std::make_unique<PsService>(task_index)) {
  server_ = std::make_unique<rpc::Server>(options, std::vector<grpc::Service*>{service_.get()});
}

PsServer::~PsServer() { shutdown(std::chrono::milliseconds(0)); }

uint16_t PsServer::port() const { return server_->port(); }

void PsServer::shutdown(std::chrono::milliseconds grace) {
  if (server_) server_->shutdown(grace);
}

}  // namespace meshrt::cluster
