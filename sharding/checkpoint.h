// Sharded checkpoints in safetensors, loadable onto another mesh shape or number
// of ranks.
//
// A checkpoint is a folder: safetensors files holding each tensor whole
// (row-major, the global value) and model.safetensors.index.json naming the file
// of each tensor (the Hugging Face index format, plus meshrt's metadata: each
// tensor's layout when saved and the blocks written, each with its rank,
// offsets and shape). When saving, each rank writes only its own block (one
// replica per block writes); when loading, each rank reads only the bytes of
// the block its layout gives it. Blocks follow torch.chunk's sizes (layout.h),
// so a checkpoint saved on any mesh loads onto any mesh and any number of
// ranks, whether the sizes divide or not.
//
// Saving is atomic: files are written under new names (a per-save id), flushed
// with fsync, and the index is replaced last by rename(); the previous
// checkpoint's files are removed only after that. A crash at any point before
// the rename leaves the previous checkpoint whole and loadable (the next save
// removes the crashed one's files). One save at a time per folder.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sharding/dtensor.h"
#include "io/safetensors.h"

namespace meshrt::sharding {

inline constexpr const char* kCheckpointIndex = "model.safetensors.index.json";

struct CheckpointOptions {
  // Tensors are grouped (by name) into files of at most this many bytes of data
  // (a larger tensor gets a file of its own).
  uint64_t max_file_bytes = 2ull << 30;
  // For tests: stop with an error after every byte is written and before the
  // commit, as a crash there would.
  bool fail_before_commit = false;
};

// Saves tensors under their names. Collective over their (common) mesh; partial
// tensors are reduced first. Throws Error(kUnavailable) on an I/O error, on every
// rank, with nothing committed.
void save_checkpoint(const std::string& dir, const std::vector<DTensor>& tensors,
                     const CheckpointOptions& options = {});

// A block a save wrote: by which rank, where in the global tensor, its shape.
struct SavedBlock {
  int rank = 0;
  std::vector<int64_t> offsets;
  Shape shape;
};

struct CheckpointEntry {
  std::string name;
  DType dtype;
  Shape shape;
  std::string file;         // inside the checkpoint folder
  std::string saved_layout; // the layout it had when saved (informational)
  std::vector<SavedBlock> saved_blocks;  // the blocks written (informational)
};

// Tensors stored in safetensors: one file, or a checkpoint folder. The index and
// every header are read and validated once, when the store is made; load() then
// reads only the bytes of this rank's block. Errors name the path.
class TensorStore {
 public:
  explicit TensorStore(const std::string& path);
  const std::string& path() const { return path_; }
  const std::vector<CheckpointEntry>& entries() const { return entries_; }
  // The entry called name, or null.
  const CheckpointEntry* find(const std::string& name) const;
  // name on mesh with layout (for a partial layout, coordinate 0 of the partial
  // axes reads, the others get zeros). No communication.
  DTensor load(const std::string& name, const Mesh& mesh, const Layout& layout) const;
  // The block of name starting at offsets with extents shape, on the host:
  // reads only its bytes (a fused weight's pieces, say). Error(kShape) when the
  // block leaves the tensor.
  HostTensor read_block(const std::string& name, const std::vector<int64_t>& offsets, const Shape& shape) const;

 private:
  struct Located {
    size_t entry;   // in entries_
    size_t header;  // in headers_
  };
  std::string path_;
  std::vector<CheckpointEntry> entries_;
  std::vector<std::pair<std::string, io::SafetensorsHeader>> headers_;  // file path, header
  std::map<std::string, Located> by_name_;
};

// The tensors of the checkpoint in dir (reads and validates the index and every
// file's header).
std::vector<CheckpointEntry> list_checkpoint(const std::string& dir);

// Loads name onto mesh with layout: each rank reads only its block's bytes (for a
// partial layout, coordinate 0 of the partial axes reads, the others get zeros).
// No communication. Bad files are refused with Error(kInvalidArgument).
DTensor load_tensor(const std::string& dir, const std::string& name, const Mesh& mesh, const Layout& layout);

}  // namespace meshrt::sharding
