#include "rpc/relay.h"

#include <atomic>
#include <map>
#include <mutex>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include "device/error.h"
#include "rpc/client.h"

namespace meshrt::rpc {

struct Relay::Impl : grpc::CallbackGenericService {
  Impl(const ServerOptions& options, Upstream upstream) : options_(options), upstream_(std::move(upstream)) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override;

  // One channel per upstream target (a relaunched job is a new target).
  std::shared_ptr<grpc::Channel> channel(const std::string& target) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& c = channels_[target];
    if (!c) c = make_channel(target, options_.max_message_bytes);
    return c;
  }

  ServerOptions options_;
  Upstream upstream_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
  std::atomic<size_t> in_flight_{0};
  std::unique_ptr<Server> server_;
};

namespace {

// A call relayed: the public side (a generic server reactor) and the upstream
// side (a generic client reactor). It deletes itself once both are done.
class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Relay::Impl& relay, grpc::GenericCallbackServerContext* context) : relay_(relay), upstream_(*this) {
    ++relay_.in_flight_;
    std::string why;
    std::optional<std::string> target = relay_.upstream_(&why);
    if (!target) {
      upstream_done_ = true;
      server_finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, why));
      release();  // the upstream side, which there is none of, is done
      return;
    }
    if (context->deadline() != std::chrono::system_clock::time_point::max()) {
      upstream_context_.set_deadline(context->deadline());
    }
    grpc::GenericStub stub(relay_.channel(*target));
    stub.PrepareBidiStreamingCall(&upstream_context_, context->method(), grpc::StubOptions(), &upstream_);
    upstream_.StartRead(&from_upstream_);
    upstream_.StartCall();
    StartRead(&from_client_);
  }

  // The public side.
  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (upstream_done_) return;
    if (ok) {
      upstream_.StartWrite(&from_client_);
    } else {
      upstream_.StartWritesDone();  // the client sent its last message
    }
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mutex_);
    writing_to_client_ = false;
    if (upstream_done_) {
      if (!finished_) server_finish_locked(upstream_status_);
      return;
    }
    if (!ok) {
      upstream_context_.TryCancel();  // the client is gone
      return;
    }
    upstream_.StartRead(&from_upstream_);
  }
  void OnCancel() override { upstream_context_.TryCancel(); }
  void OnDone() override { release(); }

 private:
  class Upstream : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Upstream(Call& call) : call_(call) {}
    void OnReadDone(bool ok) override { call_.upstream_read(ok); }
    void OnWriteDone(bool ok) override { call_.upstream_wrote(ok); }
    void OnDone(const grpc::Status& status) override { call_.upstream_finished(status); }

   private:
    Call& call_;
  };

  void upstream_read(bool ok) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ok || finished_) return;  // upstream's messages ended: its status comes with OnDone
    writing_to_client_ = true;
    StartWrite(&from_upstream_);
  }
  void upstream_wrote(bool ok) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ok && !finished_ && !upstream_done_) StartRead(&from_client_);  // the next message of the client
  }
  void upstream_finished(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      upstream_done_ = true;
      upstream_status_ = status;
      // A message on its way to the client goes first; then the status.
      if (!writing_to_client_ && !finished_) server_finish_locked(status);
    }
    release();
  }

  void server_finish(const grpc::Status& status) {
    std::lock_guard<std::mutex> lock(mutex_);
    server_finish_locked(status);
  }
  void server_finish_locked(const grpc::Status& status) {
    finished_ = true;
    Finish(status);
  }

  // Called once by each side when it is done (the upstream side also when
  // there was no upstream call); the second deletes the call.
  void release() {
    if (releases_.fetch_add(1) == 1) {
      --relay_.in_flight_;
      delete this;
    }
  }

  Relay::Impl& relay_;
  Upstream upstream_;
  grpc::ClientContext upstream_context_;
  grpc::ByteBuffer from_client_, from_upstream_;
  std::mutex mutex_;
  bool upstream_done_ = false, finished_ = false, writing_to_client_ = false;
  grpc::Status upstream_status_;
  std::atomic<int> releases_{0};
};

}  // namespace

grpc::ServerGenericBidiReactor* Relay::Impl::CreateReactor(grpc::GenericCallbackServerContext* context) {
  return new Call(*this, context);
}

Relay::Relay(const ServerOptions& options, Upstream upstream)
    : impl_(std::make_unique<Impl>(options, std::move(upstream))) {
  impl_->server_ = std::make_unique<Server>(options, std::vector<grpc::Service*>{}, impl_.get());
}

Relay::~Relay() { shutdown(std::chrono::milliseconds(0)); }

uint16_t Relay::port() const { return impl_->server_->port(); }

size_t Relay::in_flight() const { return impl_->in_flight_.load(); }

void Relay::shutdown(std::chrono::milliseconds grace) { impl_->server_->shutdown(grace); }

}  // namespace meshrt::rpc
