// Channel: host-side messages between ranks (MPI point-to-point): requests,
// results, control. It carries host memory only.
//
// A DeviceTensor cannot be handed to send(): that does not compile, and the
// compiler says to call to_host() first. Device memory must not go onto a
// message that may cross a node; the receiving side would get a dangling device
// address ("Unable to get buffer"). Raw pointers that enter from outside
// (send_bytes) are checked at run time and device memory is refused.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "device/tensor.h"

namespace meshrt {

// What a Channel can carry: host tensors, strings and bytes.
template <class T>
concept Sendable = std::same_as<std::remove_cvref_t<T>, HostTensor> ||
                   std::same_as<std::remove_cvref_t<T>, std::string> ||
                   std::same_as<std::remove_cvref_t<T>, std::vector<uint8_t>> ||
                   std::same_as<std::remove_cvref_t<T>, std::span<const std::byte>>;

class Channel {
 public:
  static constexpr int kAnySource = -1;
  // Tags are 0 .. kMaxTag (the MPI standard's guaranteed minimum).
  static constexpr int kMaxTag = 32767;

  // A channel over all ranks of the World (collective: every rank calls it).
  static Channel world();
  ~Channel();
  Channel(Channel&&) noexcept;
  Channel& operator=(Channel&&) noexcept;

  int rank() const;
  int size() const;
  // Deadline of each send and receive (default: MESHRT_COMM_TIMEOUT, 300 s).
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

  // Sends message to rank dest; returns when the message buffer may be reused.
  // Throws Error(kDeadlineExceeded) if it is not taken within timeout().
  template <class T>
  void send(const T& message, int dest, int tag = 0) const {
    static_assert(!std::is_same_v<std::remove_cvref_t<T>, DeviceTensor>,
                  "meshrt::Channel carries host memory only: call to_host() on the DeviceTensor "
                  "first (device memory must not go onto a message that may cross a node)");
    static_assert(Sendable<T>,
                  "meshrt::Channel::send takes a HostTensor, std::string, std::vector<uint8_t> "
                  "or std::span<const std::byte>");
    if constexpr (std::is_same_v<std::remove_cvref_t<T>, HostTensor>) {
      send_tensor(message, dest, tag);
    } else if constexpr (std::is_same_v<std::remove_cvref_t<T>, std::string>) {
      send_message(kString, message.data(), message.size(), dest, tag);
    } else {
      send_message(kBytes, message.data(), message.size(), dest, tag);
    }
  }

  // Sends size bytes at data, a pointer from outside meshrt's types. Device memory
  // (a GPU pointer, or memory of the cpu device allocator) is refused with
  // Error(kInvalidArgument): call to_host() first.
  void send_bytes(const void* data, size_t size, int dest, int tag = 0) const;

  // Receives from source (or kAnySource); each throws Error(kShape) if the next
  // message on (source, tag) is of another kind, and Error(kDeadlineExceeded)
  // past timeout(). from, when given, receives the sender's rank.
  HostTensor recv_tensor(int source, int tag = 0, int* from = nullptr) const;
  std::vector<uint8_t> recv_bytes(int source, int tag = 0, int* from = nullptr) const;
  std::string recv_string(int source, int tag = 0, int* from = nullptr) const;

  // The sender of a message waiting on (source, tag), without receiving it.
  std::optional<int> probe(int source = kAnySource, int tag = 0) const;

 private:
  enum Kind : uint8_t { kBytes = 1, kString = 2, kTensor = 3 };
  struct Impl;
  explicit Channel(Impl* impl);
  void send_tensor(const HostTensor& tensor, int dest, int tag) const;
  void send_message(Kind kind, const void* data, size_t size, int dest, int tag,
                    const HostTensor* tensor = nullptr) const;

  Impl* impl_ = nullptr;
  std::chrono::milliseconds timeout_;
};

}  // namespace meshrt
