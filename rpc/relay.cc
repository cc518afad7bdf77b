#include "rpc/relay.h"

#include <atomic>
#include <climits>
#include <condition_variable>
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

  // The channel to the current upstream (a relaunched job is a new target; the
  // old one's channel, which may be backing off from its death, is dropped).
  // What comes back is not bounded: an answer may be larger than its question.
  std::shared_ptr<grpc::Channel> channel(const std::string& target) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (target != target_ || !channel_) {
      target_ = target;
      channel_ = make_channel(target, SIZE_MAX);
    }
    return channel_;
  }

  void call_started() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++in_flight_;
  }
  // The last thing a call does (after it deleted itself).
  void call_done() {
    std::lock_guard<std::mutex> lock(mutex_);
    --in_flight_;
    idle_.notify_all();
  }

  ServerOptions options_;
  Upstream upstream_;
  std::mutex mutex_;  // target_, channel_, in_flight_
  std::condition_variable idle_;
  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  size_t in_flight_ = 0;
  std::unique_ptr<Server> server_;
};

namespace {

// A call relayed: the public side (a generic server reactor) and the upstream
// side (a generic client reactor). It deletes itself once both are done.
//
// The upstream call carries a hold (gRPC's rule for operations started from
// outside its own reactions, which the public side's reactions are) from its
// start until its messages end, the client cancels or goes away: until then
// the public side may start upstream writes and reads; after, it starts none.
class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Relay::Impl& relay, grpc::GenericCallbackServerContext* context)
      : relay_(relay), context_(context), upstream_(*this) {
    relay_.call_started();
    std::string why;
    std::optional<std::string> target = relay_.upstream_(&why);
    if (!target) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        upstream_done_ = true;
        server_finish_locked(grpc::Status(grpc::StatusCode::UNAVAILABLE, why));
      }
      release();  // the upstream side, which there is none of, is done
      return;
    }
    if (context->deadline() != std::chrono::system_clock::time_point::max()) {
      upstream_context_.set_deadline(context->deadline());
    }
    grpc::GenericStub stub(relay_.channel(*target));
    stub.PrepareBidiStreamingCall(&upstream_context_, context->method(), grpc::StubOptions(), &upstream_);
    upstream_.AddHold();
    hold_ = true;
    upstream_.StartRead(&from_upstream_);
    upstream_.StartCall();
    StartRead(&from_client_);
  }

  // The public side.
  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!hold_) return;  // the upstream call is ending: nothing more goes to it
    if (ok) {
      upstream_.StartWrite(&from_client_);
    } else if (context_->IsCancelled()) {
      cancel_upstream_locked();  // not the end of the client's messages: the client gave up
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
      cancel_upstream_locked();  // the client is gone
      return;
    }
    if (hold_) upstream_.StartRead(&from_upstream_);
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mutex_);
    cancel_upstream_locked();
  }
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

  void cancel_upstream_locked() {
    upstream_context_.TryCancel();
    drop_hold_locked();
  }
  void drop_hold_locked() {
    if (!hold_) return;
    hold_ = false;
    upstream_.RemoveHold();
  }

  void upstream_read(bool ok) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ok) {
      drop_hold_locked();  // upstream's messages ended: its status comes with OnDone
      return;
    }
    if (finished_) return;
    writing_to_client_ = true;
    StartWrite(&from_upstream_);
  }
  void upstream_wrote(bool ok) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ok && hold_ && !finished_) StartRead(&from_client_);  // the next message of the client
  }
  void upstream_finished(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      upstream_done_ = true;
      // A call the client did not cancel but the upstream ended (the job went
      // down under it) is UNAVAILABLE, as a call that finds no job is.
      upstream_status_ = status.error_code() == grpc::StatusCode::CANCELLED && !context_->IsCancelled()
                             ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                            "the inference job ended the call (" + status.error_message() + ")")
                             : status;
      // A message on its way to the client goes first; then the status.
      if (!writing_to_client_ && !finished_) server_finish_locked(upstream_status_);
    }
    release();
  }

  void server_finish_locked(const grpc::Status& status) {
    finished_ = true;
    Finish(status);
  }

  // Called once by each side when it is done (the upstream side also when
  // there was no upstream call); the second deletes the call.
  void release() {
    if (releases_.fetch_add(1) == 1) {
      Relay::Impl& relay = relay_;
      delete this;
      relay.call_done();
    }
  }

  Relay::Impl& relay_;
  grpc::GenericCallbackServerContext* context_;
  Upstream upstream_;
  grpc::ClientContext upstream_context_;
  grpc::ByteBuffer from_client_, from_upstream_;
  std::mutex mutex_;
  bool hold_ = false, upstream_done_ = false, finished_ = false, writing_to_client_ = false;
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

size_t Relay::in_flight() const {
  std::lock_guard<std::mutex> lock(impl_->mutex_);
  return impl_->in_flight_;
}

void Relay::shutdown(std::chrono::milliseconds grace) {
  impl_->server_->shutdown(grace);
  // The public sides are done; the upstream sides (cancelled with them) end
  // soon after, and must before the relay goes away.
  std::unique_lock<std::mutex> lock(impl_->mutex_);
  impl_->idle_.wait_for(lock, std::chrono::seconds(30), [&] { return impl_->in_flight_ == 0; });
}

}  // namespace meshrt::rpc
