#include "cluster/worker.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "device/error.h"
#include "rpc/proto/cluster.grpc.pb.h"
#include "rpc/status.h"

namespace meshrt::cluster {

namespace {

template <class Map>
std::string names_of(const Map& map) {
  std::string out;
  for (const auto& [name, _] : map) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? "none" : out;
}

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void FunctionRegistry::add_function(const std::string& name, StepFunction function) {
  MESHRT_CHECK_ARG(function != nullptr, "FunctionRegistry: function \"", name, "\" is empty");
  MESHRT_CHECK_ARG(functions_.emplace(name, std::move(function)).second, "FunctionRegistry: function \"", name,
                   "\" is registered already");
}

const StepFunction& FunctionRegistry::function(const std::string& name) const {
  auto it = functions_.find(name);
  MESHRT_CHECK_ARG(it != functions_.end(), "no step function \"", name, "\" in this binary (registered: ",
                   names_of(functions_), ")");
  return it->second;
}

std::vector<std::string> FunctionRegistry::function_names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : functions_) out.push_back(name);
  return out;
}

WorkerContext::WorkerContext(int worker_index, int num_workers, Device device, std::vector<PsClient> ps)
    : worker_index_(worker_index), num_workers_(num_workers), device_(device), ps_(std::move(ps)) {}

Dataset& WorkerContext::dataset(const std::string& key, const DatasetFunction& make) {
  auto it = datasets_.find(key);
  if (it == datasets_.end()) {
    MESHRT_CHECK_ARG(make != nullptr, "dataset \"", key, "\": no dataset function");
    std::unique_ptr<Dataset> made = make(worker_index_, num_workers_);
    MESHRT_CHECK_ARG(made != nullptr, "dataset \"", key, "\" made nothing");
    it = datasets_.emplace(key, std::move(made)).first;
  }
  return *it->second;
}

// Run calls are queued to one thread, which runs them in order and finishes
// each call from there (a step may take long; gRPC's callback threads must
// not wait for it). Ping answers at once.
class WorkerService final : public Worker::CallbackService {
 public:
  WorkerService(int index, const ClusterSpec& cluster, const FunctionRegistry& registry, const WorkerOptions& options)
      : index_(index),
        started_ms_(unix_ms()),
        context_(index, cluster.num_tasks(TaskType::kWorker), options.device, clients(cluster, options.ps)),
        registry_(registry),
        thread_([this] { loop(); }) {}

  ~WorkerService() override {
    stop();
    thread_.join();
  }

  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* context, const RunRequest* request,
                                RunResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stopping_) {
        jobs_.push_back(Job{context, request, response, reactor});
        cv_.notify_one();
        return reactor;
      }
    }
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker " + std::to_string(index_) + " is stopping"));
    return reactor;
  }

  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* context, const PingRequest*,
                                 PingResponse* response) override {
    response->set_worker_index(index_);
    response->set_started_unix_ms(started_ms_);
    response->set_steps_run(steps_run_.load());
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  int64_t steps_run() const { return steps_run_.load(); }

  // From now on queued and new calls are answered UNAVAILABLE without running
  // (the server's shutdown then waits for the running step only).
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

 private:
  struct Job {
    grpc::CallbackServerContext* context;
    const RunRequest* request;
    RunResponse* response;
    grpc::ServerUnaryReactor* reactor;
  };

  static std::vector<PsClient> clients(const ClusterSpec& cluster, const PsClientOptions& options) {
    std::vector<PsClient> out;
    for (int i = 0; i < cluster.num_tasks(TaskType::kPs); ++i) {
      out.emplace_back(i, cluster.address({TaskType::kPs, i}), options);
    }
    return out;
  }

  void loop() {
    for (;;) {
      Job job;
      bool stopping;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = jobs_.front();
        jobs_.pop_front();
        stopping = stopping_;
      }
      if (stopping) {
        job.reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker " + std::to_string(index_) + " is stopping"));
      } else if (job.context->IsCancelled()) {
        // The coordinator gave up on this call (its deadline, or a cluster
        // failure) and may have sent the step elsewhere: do not run it too.
        job.reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled before it ran"));
      } else {
        job.reactor->Finish(run(*job.request, *job.response));
      }
    }
  }

  grpc::Status run(const RunRequest& request, RunResponse& response) {
    try {
      const StepFunction& function = registry_.function(request.function());
      context_.set_step_id(request.step_id());
      context_.set_done_below(request.done_below());
      response.set_result(function(context_, request.args()));
      response.set_worker_index(index_);
      response.set_started_unix_ms(started_ms_);
      steps_run_.fetch_add(1);
      return grpc::Status::OK;
    } catch (const Error& e) {
      // A parameter server out of reach is the cluster's failure, not this worker's.
      if (e.kind() == ErrorKind::kUnavailable) return grpc::Status(grpc::StatusCode::ABORTED, e.message());
      grpc::Status status = rpc::status_for_error(e);
      // These codes tell the coordinator that this worker is lost; a step's own error is not that.
      if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
          status.error_code() == grpc::StatusCode::UNAVAILABLE || status.error_code() == grpc::StatusCode::CANCELLED) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, e.message());
      }
      return status;
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, std::string("step function ") + request.function() + ": " +
                                                          e.what());
    }
  }

  const int index_;
  const int64_t started_ms_;
  WorkerContext context_;
  const FunctionRegistry& registry_;
  std::atomic<int64_t> steps_run_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::thread thread_;
};

WorkerServer::WorkerServer(int index, const ClusterSpec& cluster, const FunctionRegistry& registry,
                           WorkerOptions options) {
  MESHRT_CHECK_ARG(cluster.has({TaskType::kWorker, index}), "WorkerServer: the cluster has no worker ", index);
  service_ = std::make_unique<WorkerService>(index, cluster, registry, options);
  server_ = std::make_unique<rpc::Server>(options.server, std::vector<grpc::Service*>{service_.get()});
}

WorkerServer::~WorkerServer() { shutdown(std::chrono::milliseconds(1000)); }

uint16_t WorkerServer::port() const { return server_->port(); }

int64_t WorkerServer::steps_run() const { return service_->steps_run(); }

void WorkerServer::shutdown(std::chrono::milliseconds grace) {
  service_->stop();
  if (server_) server_->shutdown(grace);
}

}  // namespace meshrt::cluster
