// NumPy .npz archives (np.savez / np.savez_compressed): a zip of .npy members.
// Stored members are pread in place; deflated ones are decompressed as a stream.
#include <string>

#include "checkpoint/checkpoint_internal.h"
#include "checkpoint/npy.h"
#include "checkpoint/zip_reader.h"

namespace embstore::storage::ckpt {

// An adapter over the shared grammar that keeps every member listable: object,
// structured, big-endian and unknown dtypes parse fine and are refused only when
// their data is asked for (CheckImportable, ReadElement).
Status ParseNpyHeader(std::string_view prefix, NpyHeader* header, size_t* needed) {
  Result<RawNpyHeader> raw = ParseNpyHeaderPrefix(prefix, needed);
  if (!raw.ok()) {
    // A damaged member is Corruption here, like every structural fault of a checkpoint.
    const Status& s = raw.status();
    return s.code() == Status::Code::kInvalidArgument ? Status::Corruption(s.message()) : s;
  }
  if (*needed != 0) return Status::OK();
  NpyHeader h;
  h.dtype = raw->dtype.name;
  // Big-endian types are named by their descr (">f4"), so they map to kOther.
  h.source_dtype = SourceDTypeFromName(h.dtype);
  h.item_size = raw->dtype.item_size;
  h.fortran_order = raw->fortran_order;
  h.shape = std::move(raw->shape);  // its product fits int64: ReadHeaders relies on it
  h.data_offset = raw->data_offset;
  *header = std::move(h);
  return Status::OK();
}

namespace {

class NpzFile final : public CheckpointFile {
 public:
  static Result<std::unique_ptr<CheckpointFile>> Open(const std::string& path) {
    EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<File> file, File::Open(path));
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ZipArchive> zip, ZipArchive::Open(file));
    std::unique_ptr<NpzFile> npz(new NpzFile(path, std::move(zip)));
    EMBSTORE_RETURN_IF_ERROR(npz->ReadHeaders());
    return std::unique_ptr<CheckpointFile>(std::move(npz));
  }

  const std::vector<TensorEntry>& tensors() const override { return entries_; }

  Result<std::unique_ptr<TensorReader>> OpenTensor(size_t index) override {
    const Member& m = members_[index];
    int64_t rows, dim;
    EMBSTORE_RETURN_IF_ERROR(CheckImportable(entries_[index], &rows, &dim));
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source,
                              zip_->OpenMember(*m.zip_member, m.header.data_offset));
    TensorLayout layout;
    layout.dtype = m.header.source_dtype;
    layout.rows = rows;
    layout.dim = dim;
    layout.row_stride = m.header.fortran_order ? 1 : dim;
    layout.col_stride = m.header.fortran_order ? rows : 1;
    const std::string name = path_ + ":" + entries_[index].key;
    EMBSTORE_RETURN_IF_ERROR(ValidateLayout(layout, source->size(), name));
    return std::unique_ptr<TensorReader>(
        std::make_unique<StridedTensorReader>(name, layout, std::move(source)));
  }

  Result<double> ReadTensorScalar(size_t index) override {
    const Member& m = members_[index];
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source,
                              zip_->OpenMember(*m.zip_member, m.header.data_offset));
    return ReadElement(*source, m.header.dtype, 0);
  }

 private:
  struct Member {
    const ZipMember* zip_member;
    NpyHeader header;
  };

  NpzFile(std::string path, std::unique_ptr<ZipArchive> zip)
      : path_(std::move(path)), zip_(std::move(zip)) {}

  Status ReadHeaders() {
    for (const ZipMember& zm : zip_->members()) {
      if (zm.name.size() < 4 || zm.name.compare(zm.name.size() - 4, 4, ".npy") != 0) continue;
      const std::string where = "'" + path_ + "' member '" + zm.name + "'";
      NpyHeader header;
      size_t want = 4096, needed = 0;
      for (int attempt = 0; attempt < 3; ++attempt) {
        EMBSTORE_ASSIGN_OR_RETURN(std::string prefix, zip_->ReadMemberPrefix(zm, want));
        Status s = ParseNpyHeader(prefix, &header, &needed);
        if (!s.ok()) return Status(s).WithContext(where);
        if (needed == 0) break;
        if (prefix.size() < want || needed <= want) {
          return Status::Corruption(where + ": the .npy header is truncated");
        }
        want = needed;
      }
      if (needed != 0) return Status::Corruption(where + ": the .npy header is truncated");
      if (header.item_size > 0 && header.dtype != "object") {
        const int64_t numel = *NumElements(header.shape);
        const __int128 bytes = static_cast<__int128>(numel) * header.item_size;
        const uint64_t available = zm.uncompressed_size - header.data_offset;
        if (header.data_offset > zm.uncompressed_size || bytes > static_cast<__int128>(available)) {
          return Status::Corruption(where + ": shape " + ShapeString(header.shape) + " of " +
                                    header.dtype +
                                    " needs more bytes than the member holds (truncated?)");
        }
      }
      TensorEntry e;
      e.key = zm.name.substr(0, zm.name.size() - 4);
      e.dtype = header.dtype;
      e.shape = header.shape;
      entries_.push_back(std::move(e));
      members_.push_back(Member{&zm, std::move(header)});
    }
    if (entries_.empty()) {
      return Status::InvalidArgument("'" + path_ +
                                     "' is a zip archive without .npy members (not a .npz)");
    }
    return Status::OK();
  }

  std::string path_;
  std::unique_ptr<ZipArchive> zip_;
  std::vector<TensorEntry> entries_;
  std::vector<Member> members_;
};

}  // namespace

Result<std::unique_ptr<CheckpointFile>> OpenNpzFile(const std::string& path) {
  return NpzFile::Open(path);
}

}  // namespace embstore::storage::ckpt
