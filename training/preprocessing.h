// Preprocessing: StringLookup maps strings to integer ids through a
// vocabulary, as Keras's tf.keras.layers.StringLookup (without invert). It
// runs on the host, before the model: tensors hold no strings, so the input is
// a std::vector<std::string> with a shape, and the output the ids as an i64
// device tensor of that shape (an Embedding's input).
//
// Ids, in order: the mask token's 0 (only with a mask token), then the
// num_oov_indices out-of-vocabulary buckets, then the vocabulary in its order.
// With mask "" and 1 OOV bucket, vocabulary {"a", "b"}: "" -> 0, an unknown
// string -> 1, "a" -> 2, "b" -> 3, vocabulary_size() 4. A string outside the
// vocabulary goes to its bucket: with several, FNV-1a 64 of its bytes modulo
// num_oov_indices (stable across runs and machines; Keras hashes with
// FarmHash, so with several buckets a string's bucket differs from Keras's,
// its id range does not). With num_oov_indices 0 an unknown string is an
// error, as in Keras.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "device/tensor.h"

namespace meshrt::training {

struct StringLookupOptions {
  int64_t num_oov_indices = 1;
  // Maps to id 0 and moves every other id up by one; none by default.
  std::optional<std::string> mask_token;
};

class StringLookup {
 public:
  // vocabulary: distinct strings, none equal to the mask token.
  explicit StringLookup(std::vector<std::string> vocabulary, StringLookupOptions options = {});

  // The id of one string.
  int64_t lookup(const std::string& token) const;
  // The ids of inputs (shape.numel() strings, row-major) on device.
  DeviceTensor operator()(const std::vector<std::string>& inputs, const Shape& shape,
                          const Device& device = Device::cpu()) const;

  // Every id's count: vocabulary + OOV buckets + the mask's 1 (if any).
  int64_t vocabulary_size() const;
  // The vocabulary without the mask and OOV entries, in id order.
  const std::vector<std::string>& vocabulary() const { return vocabulary_; }
  const StringLookupOptions& options() const { return options_; }

 private:
  std::vector<std::string> vocabulary_;
  StringLookupOptions options_;
  int64_t first_vocabulary_id_;
  std::unordered_map<std::string, int64_t> ids_;
};

// FNV-1a 64 of the bytes of s: the OOV bucket hash (exposed for tests).
uint64_t fnv1a64(const std::string& s);

}  // namespace meshrt::training
