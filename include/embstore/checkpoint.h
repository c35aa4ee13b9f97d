// Reading training checkpoints: list the tensors a file holds.
//
// Supported: NumPy .npy (and, as they land, .npz, .safetensors and torch.save
// .pt/.pth zip files). A checkpoint is untrusted input: readers parse it and
// never execute anything it contains.
//
// Thread-safety: free functions; safe to call concurrently on different files.
#ifndef EMBSTORE_CHECKPOINT_H_
#define EMBSTORE_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "embstore/status.h"

namespace embstore {

struct TensorEntry {
  std::string key;             // dotted key ("model.emb.weight"); "" for a bare .npy
  std::string dtype;           // "f32", "f64", "f16", "bf16", or e.g. "int64" (not importable)
  std::vector<int64_t> shape;  // as stored
};

// Lists every tensor in the file, in file order.
Result<std::vector<TensorEntry>> InspectCheckpoint(const std::string& path);

// Reads a scalar leaf (a Python float or int, or a one-element floating
// tensor) stored under `key`, e.g. the global `bias` of an FM state dict.
Result<double> ReadCheckpointScalar(const std::string& path, const std::string& key);

}  // namespace embstore

#endif  // EMBSTORE_CHECKPOINT_H_
