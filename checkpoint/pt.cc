// PyTorch torch.save checkpoints (the zip format of torch >= 1.6, 1.x and 2.x):
//   <prefix>/data.pkl     the pickled object (read by the restricted pickle VM)
//   <prefix>/data/<key>   one member per storage, raw little-endian elements
//   <prefix>/byteorder    "little" or "big" (absent in older files: little)
// The prefix directory varies ("archive", the file's stem, ...).
#include <algorithm>

#include "checkpoint/checkpoint_internal.h"
#include "checkpoint/pickle.h"
#include "checkpoint/zip_reader.h"

namespace embstore::storage::ckpt {
namespace {

constexpr uint64_t kMaxPickleBytes = uint64_t{256} << 20;

class TorchFile final : public CheckpointFile {
 public:
  static Result<std::unique_ptr<CheckpointFile>> Open(const std::string& path) {
    EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<File> file, File::Open(path));
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ZipArchive> zip, ZipArchive::Open(file));
    std::unique_ptr<TorchFile> pt(new TorchFile(path, std::move(zip)));
    EMBSTORE_RETURN_IF_ERROR(pt->Load());
    return std::unique_ptr<CheckpointFile>(std::move(pt));
  }

  const std::vector<TensorEntry>& tensors() const override { return entries_; }

  Result<std::unique_ptr<TensorReader>> OpenTensor(size_t index) override {
    int64_t rows, dim;
    EMBSTORE_RETURN_IF_ERROR(CheckImportable(entries_[index], &rows, &dim));
    const pickle::TensorRef& t = tensors_[index];
    const std::string name = path_ + ":" + entries_[index].key;
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source, StorageSource(t, name));
    TensorLayout layout;
    layout.dtype = SourceDTypeFromName(entries_[index].dtype);
    layout.rows = rows;
    layout.dim = dim;
    layout.offset = t.storage_offset;
    layout.row_stride = t.stride[0];
    layout.col_stride = t.stride.size() == 2 ? t.stride[1] : 1;
    EMBSTORE_RETURN_IF_ERROR(ValidateLayout(layout, source->size(), name));
    return std::unique_ptr<TensorReader>(
        std::make_unique<StridedTensorReader>(name, layout, std::move(source)));
  }

  Result<double> ReadTensorScalar(size_t index) override {
    const pickle::TensorRef& t = tensors_[index];
    const std::string name = path_ + ":" + entries_[index].key;
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source, StorageSource(t, name));
    return ReadElement(*source, entries_[index].dtype, t.storage_offset);
  }

  std::optional<double> NumericLeaf(const std::string& key) const override {
    for (const auto& [k, v] : numbers_) {
      if (k == key) return v;
    }
    return std::nullopt;
  }

 private:
  TorchFile(std::string path, std::unique_ptr<ZipArchive> zip)
      : path_(std::move(path)), zip_(std::move(zip)) {}

  Status Load() {
    // The pickle sits at <prefix>/data.pkl, one directory deep.
    const ZipMember* pkl = nullptr;
    for (const ZipMember& m : zip_->members()) {
      const size_t slash = m.name.find('/');
      if (slash != std::string::npos &&
          m.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
        pkl = &m;
        prefix_ = m.name.substr(0, slash + 1);
        break;
      }
    }
    if (pkl == nullptr) {
      return Status::InvalidArgument(
          "'" + path_ + "' is a zip archive without <dir>/data.pkl (not a torch.save file)");
    }
    if (const ZipMember* bo = zip_->Find(prefix_ + "byteorder")) {
      EMBSTORE_ASSIGN_OR_RETURN(std::string order, zip_->ReadMember(*bo, 64));
      if (order != "little") {
        return Status::NotSupported("'" + path_ + "' was saved with byteorder '" +
                                    order.substr(0, 16) +
                                    "'; only little-endian checkpoints are supported");
      }
    }
    EMBSTORE_ASSIGN_OR_RETURN(std::string data, zip_->ReadMember(*pkl, kMaxPickleBytes));
    Result<pickle::Contents> contents = pickle::ParseTorchPickle(data);
    if (!contents.ok()) return contents.status().WithContext("'" + path_ + "'");
    storages_ = std::move(contents->storages);
    for (pickle::Leaf& leaf : contents->leaves) {
      if (leaf.kind == pickle::Leaf::Kind::kNumber) {
        numbers_.emplace_back(std::move(leaf.key), leaf.number);
        continue;
      }
      TensorEntry e;
      e.key = leaf.key;
      e.dtype = storages_[leaf.tensor.storage].dtype;
      e.shape = leaf.tensor.size;
      entries_.push_back(std::move(e));
      tensors_.push_back(std::move(leaf.tensor));
    }
    return Status::OK();
  }

  // The bytes of a tensor's storage, checked against the size the pickle claims.
  Result<std::unique_ptr<ByteSource>> StorageSource(const pickle::TensorRef& t,
                                                    const std::string& name) {
    const pickle::StorageRef& s = storages_[t.storage];
    const std::string member_name = prefix_ + "data/" + s.key;
    const ZipMember* m = zip_->Find(member_name);
    if (m == nullptr) {
      return Status::Corruption(name + ": storage member '" + member_name +
                                "' is missing from the archive");
    }
    const __int128 claimed = static_cast<__int128>(s.numel) * s.element_size;
    if (claimed > static_cast<__int128>(m->uncompressed_size)) {
      return Status::Corruption(name + ": storage '" + member_name + "' should hold " +
                                std::to_string(s.numel) + " elements but has only " +
                                std::to_string(m->uncompressed_size) + " bytes");
    }
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source, zip_->OpenMember(*m));
    // Bytes past the storage's numel do not belong to it: views must stay inside numel.
    if (static_cast<uint64_t>(claimed) < source->size()) {
      return NarrowSource(std::move(source), static_cast<uint64_t>(claimed));
    }
    return source;
  }

  static std::unique_ptr<ByteSource> NarrowSource(std::unique_ptr<ByteSource> inner,
                                                  uint64_t size) {
    class Narrow final : public ByteSource {
     public:
      Narrow(std::unique_ptr<ByteSource> inner, uint64_t size)
          : inner_(std::move(inner)), size_(size) {}
      uint64_t size() const override { return size_; }
      Status ReadAt(uint64_t offset, void* buf, size_t n) override {
        if (offset > size_ || n > size_ - offset)
          return Status::Internal("read past the end of a storage");
        return inner_->ReadAt(offset, buf, n);
      }
      bool random_access() const override { return inner_->random_access(); }

     private:
      std::unique_ptr<ByteSource> inner_;
      uint64_t size_;
    };
    return std::make_unique<Narrow>(std::move(inner), size);
  }

  std::string path_;
  std::unique_ptr<ZipArchive> zip_;
  std::string prefix_;
  std::vector<pickle::StorageRef> storages_;
  std::vector<TensorEntry> entries_;
  std::vector<pickle::TensorRef> tensors_;  // parallel to entries_
  std::vector<std::pair<std::string, double>> numbers_;
};

}  // namespace

Result<std::unique_ptr<CheckpointFile>> OpenTorchFile(const std::string& path) {
  return TorchFile::Open(path);
}

}  // namespace embstore::storage::ckpt
