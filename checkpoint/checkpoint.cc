// Checkpoint front end: detects the format of a file by its content and hands
// out tensors by key, whatever the format.
#include "embstore/checkpoint.h"

#include <algorithm>
#include <cstring>

#include "checkpoint/checkpoint_internal.h"
#include "checkpoint/tensor_reader.h"
#include "checkpoint/zip_reader.h"

namespace embstore {
namespace storage {
namespace {

using ckpt::CheckpointFile;

// A bare .npy holds one unnamed tensor; its reader is npy.cc's.
class NpyFile final : public CheckpointFile {
 public:
  static Result<std::unique_ptr<CheckpointFile>> Open(const std::string& path) {
    EMBSTORE_ASSIGN_OR_RETURN(std::vector<TensorEntry> entries, InspectNpy(path));
    return std::unique_ptr<CheckpointFile>(new NpyFile(path, std::move(entries)));
  }
  const std::vector<TensorEntry>& tensors() const override { return entries_; }
  Result<std::unique_ptr<TensorReader>> OpenTensor(size_t) override { return OpenNpy(path_); }
  Result<double> ReadTensorScalar(size_t) override {
    EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<ckpt::File> file, ckpt::File::Open(path_));
    ckpt::NpyHeader header;
    size_t want = 4096, needed = 0;
    // A second round when the header is longer than the first read (bounded by the parser).
    for (int round = 0; round < 2; ++round) {
      std::string prefix(static_cast<size_t>(std::min<uint64_t>(file->size(), want)), '\0');
      EMBSTORE_RETURN_IF_ERROR(file->ReadAt(0, prefix.data(), prefix.size()));
      EMBSTORE_RETURN_IF_ERROR(ckpt::ParseNpyHeader(prefix, &header, &needed));
      if (needed <= prefix.size() || prefix.size() == file->size()) break;
      want = needed;
    }
    if (needed != 0) return Status::Corruption("'" + path_ + "': .npy header is truncated");
    if (header.data_offset > file->size())
      return Status::Corruption("'" + path_ + "' is truncated");
    auto source =
        ckpt::MakeFileRegionSource(file, header.data_offset, file->size() - header.data_offset);
    return ckpt::ReadElement(*source, header.dtype, 0);
  }

 private:
  NpyFile(std::string path, std::vector<TensorEntry> entries)
      : path_(std::move(path)), entries_(std::move(entries)) {}
  std::string path_;
  std::vector<TensorEntry> entries_;
};

Result<std::unique_ptr<CheckpointFile>> OpenZip(const std::string& path,
                                                std::shared_ptr<ckpt::File> file) {
  EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ckpt::ZipArchive> zip,
                            ckpt::ZipArchive::Open(std::move(file)));
  bool has_pickle = false, has_npy = false, has_code = false;
  for (const ckpt::ZipMember& m : zip->members()) {
    const size_t slash = m.name.find('/');
    if (slash != std::string::npos) {
      const std::string_view rest = std::string_view(m.name).substr(slash + 1);
      has_pickle |= rest == "data.pkl";
      has_code |= rest == "constants.pkl" || rest.substr(0, 5) == "code/";
    }
    has_npy |= m.name.size() >= 4 && m.name.compare(m.name.size() - 4, 4, ".npy") == 0;
  }
  if (has_code) {
    return Status::NotSupported("'" + path +
                                "' is a TorchScript archive (torch.jit.save); save the model's "
                                "state_dict with torch.save(model.state_dict(), path) instead");
  }
  if (has_pickle) return ckpt::OpenTorchFile(path);
  if (has_npy) return ckpt::OpenNpzFile(path);
  return Status::InvalidArgument("'" + path +
                                 "' is a zip archive but neither a .npz (no .npy members) nor a "
                                 "torch.save checkpoint (no <dir>/data.pkl)");
}

}  // namespace

Result<std::unique_ptr<CheckpointFile>> ckpt::OpenCheckpoint(const std::string& path) {
  EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<ckpt::File> file, ckpt::File::Open(path));
  uint8_t head[16] = {};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(file->size(), sizeof(head)));
  EMBSTORE_RETURN_IF_ERROR(file->ReadAt(0, head, n));
  auto starts = [&](const char* magic, size_t len) {
    return n >= len && std::memcmp(head, magic, len) == 0;
  };
  if (n == 0) return Status::InvalidArgument("'" + path + "' is empty");
  if (starts("\x93NUMPY", 6)) return NpyFile::Open(path);
  if (starts("PK\x03\x04", 4) || starts("PK\x05\x06", 4)) return OpenZip(path, std::move(file));
  if (n >= 9 && head[8] == '{') return ckpt::OpenSafetensorsFile(path);
  if (starts("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 14)) {
    return Status::NotSupported("'" + path +
                                "' uses the legacy torch.save format (torch < 1.6); load it in "
                                "Python and save it again with torch >= 1.6");
  }
  if (head[0] == 0x80) {
    return Status::NotSupported(
        "'" + path +
        "' is a bare Python pickle; embstore reads .npy, .npz, .safetensors "
        "and torch.save zip checkpoints");
  }
  return Status::InvalidArgument("'" + path +
                                 "' is not a checkpoint embstore can read (expected .npy, .npz, "
                                 ".safetensors or a torch.save .pt/.pth file)");
}

namespace {

std::string DescribeEntry(const TensorEntry& e) {
  return (e.key.empty() ? std::string("(unnamed)") : e.key) + " " + ckpt::ShapeString(e.shape) +
         " " + e.dtype;
}

std::string InspectHint(const std::string& path) { return "`embstore inspect " + path + "`"; }

Result<size_t> SelectTensor(const std::string& path, const std::vector<TensorEntry>& entries,
                            const std::string& key) {
  if (key.empty()) {
    if (entries.size() == 1) return size_t{0};
    if (entries.empty()) return Status::InvalidArgument("'" + path + "' holds no tensors");
    constexpr size_t kShown = 8;
    std::string msg = "'" + path + "' holds " + std::to_string(entries.size()) +
                      " tensors; choose one with a key: ";
    for (size_t i = 0; i < std::min(kShown, entries.size()); ++i) {
      msg += (i > 0 ? ", " : "") + DescribeEntry(entries[i]);
    }
    if (entries.size() > kShown)
      msg += ", ... and " + std::to_string(entries.size() - kShown) + " more";
    return Status::InvalidArgument(msg + " (" + InspectHint(path) + " lists them all)");
  }
  std::vector<size_t> matches;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].key == key) matches.push_back(i);
  }
  if (matches.size() == 1) return matches[0];
  if (matches.size() > 1) {
    return Status::InvalidArgument("key '" + key + "' names " + std::to_string(matches.size()) +
                                   " different tensors in '" + path +
                                   "'; the checkpoint is ambiguous");
  }
  // Suggest keys that end with the requested one ("weight" -> "model.emb.weight").
  std::vector<std::string> similar;
  for (const TensorEntry& e : entries) {
    if (similar.size() < 3 && e.key.size() > key.size() &&
        e.key.compare(e.key.size() - key.size(), key.size(), key) == 0 &&
        e.key[e.key.size() - key.size() - 1] == '.') {
      similar.push_back(e.key);
    }
  }
  std::string msg = "no tensor '" + key + "' in '" + path + "'";
  if (!similar.empty()) {
    msg += "; did you mean ";
    for (size_t i = 0; i < similar.size(); ++i) msg += (i > 0 ? " or '" : "'") + similar[i] + "'";
    msg += "?";
  }
  return Status::NotFound(msg + " (" + InspectHint(path) + " lists the tensors)");
}

}  // namespace

Result<std::unique_ptr<TensorReader>> OpenTensor(const std::string& path, const std::string& key) {
  EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointFile> file, ckpt::OpenCheckpoint(path));
  EMBSTORE_ASSIGN_OR_RETURN(size_t index, SelectTensor(path, file->tensors(), key));
  int64_t rows, dim;
  Status importable = ckpt::CheckImportable(file->tensors()[index], &rows, &dim);
  if (!importable.ok()) return importable.WithContext("'" + path + "'");
  return file->OpenTensor(index);
}

}  // namespace storage

Result<std::vector<TensorEntry>> InspectCheckpoint(const std::string& path) {
  EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<storage::ckpt::CheckpointFile> file,
                            storage::ckpt::OpenCheckpoint(path));
  return file->tensors();
}

// Numbers come from the pickle of a torch.save file ("epoch": 3, "bias": 0.5) or
// from any tensor holding exactly one element (0-D, [1], [1, 1]; floating,
// integer or bool), in every format.
Result<double> ReadCheckpointScalar(const std::string& path, const std::string& key) {
  using storage::ckpt::CheckpointFile;
  namespace ckpt = storage::ckpt;
  EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointFile> file, ckpt::OpenCheckpoint(path));
  if (std::optional<double> v = file->NumericLeaf(key)) return *v;
  const std::vector<TensorEntry>& entries = file->tensors();
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].key != key) continue;
    const std::optional<int64_t> numel = ckpt::NumElements(entries[i].shape);
    if (!numel || *numel != 1) {
      return Status::InvalidArgument("'" + key + "' in '" + path + "' is a tensor of shape " +
                                     ckpt::ShapeString(entries[i].shape) + ", not a single number");
    }
    return file->ReadTensorScalar(i);
  }
  return Status::NotFound("no number or one-element tensor '" + key + "' in '" + path +
                          "' (`embstore inspect " + path + "` lists the tensors)");
}

}  // namespace embstore
