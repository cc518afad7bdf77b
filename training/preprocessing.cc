#include "training/preprocessing.h"

#include <utility>

#include "device/error.h"

namespace meshrt::training {

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;  // offset basis
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;  // FNV prime
  }
  return h;
}

StringLookup::StringLookup(std::vector<std::string> vocabulary, StringLookupOptions options)
    : vocabulary_(std::move(vocabulary)), options_(std::move(options)) {
  MESHRT_CHECK_ARG(options_.num_oov_indices >= 0, "StringLookup: num_oov_indices ", options_.num_oov_indices,
                   " < 0");
  first_vocabulary_id_ = (options_.mask_token ? 1 : 0) + options_.num_oov_indices;
  ids_.reserve(vocabulary_.size());
  for (size_t i = 0; i < vocabulary_.size(); ++i) {
    const std::string& token = vocabulary_[i];
    MESHRT_CHECK_ARG(!options_.mask_token || token != *options_.mask_token,
                     "StringLookup: the vocabulary holds the mask token \"", token, "\" (it has id 0 already)");
    bool inserted = ids_.emplace(token, first_vocabulary_id_ + static_cast<int64_t>(i)).second;
    MESHRT_CHECK_ARG(inserted, "StringLookup: \"", token, "\" appears twice in the vocabulary");
  }
}

int64_t StringLookup::lookup(const std::string& token) const {
  if (options_.mask_token && token == *options_.mask_token) return 0;
  auto it = ids_.find(token);
  if (it != ids_.end()) return it->second;
  MESHRT_CHECK_ARG(options_.num_oov_indices > 0, "StringLookup: \"", token,
                   "\" is not in the vocabulary and there are no OOV buckets (num_oov_indices 0)");
  const int64_t first_oov = options_.mask_token ? 1 : 0;
  if (options_.num_oov_indices == 1) return first_oov;
  return first_oov + static_cast<int64_t>(fnv1a64(token) % static_cast<uint64_t>(options_.num_oov_indices));
}

DeviceTensor StringLookup::operator()(const std::vector<std::string>& inputs, const Shape& shape,
                                      const Device& device) const {
  MESHRT_CHECK_SHAPE(static_cast<int64_t>(inputs.size()) == shape.numel(), "StringLookup: ", inputs.size(),
                     " strings for shape ", shape, " (", shape.numel(), " elements)");
  std::vector<int64_t> ids;
  ids.reserve(inputs.size());
  for (const std::string& token : inputs) ids.push_back(lookup(token));
  return to_device(HostTensor::from_vector(ids, shape), device);
}

int64_t StringLookup::vocabulary_size() const {
  return first_vocabulary_id_ + static_cast<int64_t>(vocabulary_.size());
}

}  // namespace meshrt::training
