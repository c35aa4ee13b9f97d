#include "checkpoint/zip_reader.h"

#include <zip.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>

namespace embstore::storage::ckpt {
namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndOfCentralDirSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kEocdSize = 22;
constexpr uint64_t kMaxCommentSize = 0xffff;

uint16_t U16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t U32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t U64(const uint8_t* p) { return U32(p) | (static_cast<uint64_t>(U32(p + 4)) << 32); }

Result<zip_t*> OpenLibzip(const std::string& path) {
  int error = 0;
  zip_t* archive = zip_open(path.c_str(), ZIP_RDONLY, &error);
  if (archive == nullptr) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, error);
    std::string msg = zip_error_strerror(&ze);
    zip_error_fini(&ze);
    return Status::Corruption("cannot open '" + path + "' as a zip archive: " + msg);
  }
  return archive;
}

// A deflated member, decompressed front to back by libzip. Restarts the stream
// when asked for an offset behind the current position.
class ZipStreamSource final : public ByteSource {
 public:
  // With `borrowed` (an open archive of `path` that outlives this source), no
  // archive of its own is opened.
  ZipStreamSource(std::string path, ZipMember member, uint64_t skip, zip_t* borrowed = nullptr)
      : path_(std::move(path)), member_(std::move(member)), skip_(skip), borrowed_(borrowed) {}
  ~ZipStreamSource() override { Close(); }

  uint64_t size() const override { return member_.uncompressed_size - skip_; }
  bool random_access() const override { return false; }

  Status ReadAt(uint64_t offset, void* buf, size_t n) override {
    if (offset > size() || n > size() - offset)
      return Status::Internal("read past the end of a zip member");
    const uint64_t target = offset + skip_;
    if (file_ == nullptr || target < position_) EMBSTORE_RETURN_IF_ERROR(Reopen());
    if (position_ < target) {
      std::vector<uint8_t> scratch(
          static_cast<size_t>(std::min<uint64_t>(target - position_, 64 << 10)));
      while (position_ < target) {
        const size_t step =
            static_cast<size_t>(std::min<uint64_t>(scratch.size(), target - position_));
        EMBSTORE_RETURN_IF_ERROR(Read(scratch.data(), step));
      }
    }
    return Read(buf, n);
  }

 private:
  std::string Where() const { return "'" + path_ + "' member '" + member_.name + "'"; }

  void Close() {
    if (file_ != nullptr) zip_fclose(file_);
    if (archive_ != nullptr && archive_ != borrowed_) zip_discard(archive_);
    file_ = nullptr;
    archive_ = nullptr;
  }

  Status Reopen() {
    Close();
    position_ = 0;
    if (borrowed_ != nullptr) {
      archive_ = borrowed_;
    } else {
      EMBSTORE_ASSIGN_OR_RETURN(archive_, OpenLibzip(path_));
    }
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(archive_, member_.index, ZIP_FL_ENC_RAW, &st) != 0 || st.name == nullptr ||
        member_.name != st.name || st.size != member_.uncompressed_size ||
        st.comp_size != member_.compressed_size) {
      Close();
      return Status::Corruption(Where() + ": the zip directory is inconsistent");
    }
    file_ = zip_fopen_index(archive_, member_.index, 0);
    if (file_ == nullptr) {
      Status s = Status::Corruption(Where() + ": " + zip_strerror(archive_));
      Close();
      return s;
    }
    return Status::OK();
  }

  Status Read(void* buf, size_t n) {
    auto* p = static_cast<uint8_t*>(buf);
    while (n > 0) {
      zip_int64_t got = zip_fread(file_, p, n);
      if (got < 0) {
        Status s =
            Status::Corruption(Where() + " cannot be decompressed: " + zip_file_strerror(file_));
        Close();
        return s;
      }
      if (got == 0) {
        Close();
        return Status::Corruption(Where() +
                                  " is shorter than its directory entry says (truncated?)");
      }
      p += got;
      n -= static_cast<size_t>(got);
      position_ += static_cast<uint64_t>(got);
    }
    if (position_ == member_.uncompressed_size) {
      // At the declared end: one more read makes libzip check the CRC and that
      // the stream really ends here.
      uint8_t extra;
      const zip_int64_t got = zip_fread(file_, &extra, 1);
      if (got != 0) {
        Status s = Status::Corruption(
            Where() + (got < 0
                           ? std::string(" fails its integrity check: ") + zip_file_strerror(file_)
                           : std::string(" is longer than its directory entry says")));
        Close();
        return s;
      }
    }
    return Status::OK();
  }

  std::string path_;
  ZipMember member_;
  uint64_t skip_;
  zip_t* borrowed_;
  zip_t* archive_ = nullptr;
  zip_file_t* file_ = nullptr;
  uint64_t position_ = 0;  // uncompressed bytes consumed from file_
};

// A stored member, read straight from the archive, whose CRC-32 is checked
// as it is read: reads run front to back (an import), and a read past a gap
// reads the gap too, so the sum covers every byte once the last one is read;
// then a mismatch fails that read. (A deflated member's CRC is checked by
// libzip.)
class CrcCheckedSource final : public ByteSource {
 public:
  CrcCheckedSource(std::unique_ptr<ByteSource> member, uint64_t skip, uint32_t want,
                   std::string where)
      : member_(std::move(member)), skip_(skip), want_(want), where_(std::move(where)) {}
  uint64_t size() const override { return member_->size() - skip_; }
  bool random_access() const override { return true; }
  Status ReadAt(uint64_t offset, void* buf, size_t n) override {
    if (offset > size() || n > size() - offset)
      return Status::Internal("read past the end of a zip member");
    const uint64_t at = offset + skip_;  // in member bytes
    if (summed_ < at) EMBSTORE_RETURN_IF_ERROR(SumUpTo(at));
    EMBSTORE_RETURN_IF_ERROR(member_->ReadAt(at, buf, n));
    if (summed_ >= at && summed_ < at + n) {
      const uint64_t from = summed_ - at;
      Add(static_cast<const uint8_t*>(buf) + from, n - from);
    }
    return Check();
  }

 private:
  void Add(const uint8_t* p, uint64_t n) {
    while (n > 0) {
      const uInt chunk = static_cast<uInt>(std::min<uint64_t>(n, 1u << 30));
      crc_ = ::crc32(crc_, p, chunk);
      p += chunk;
      n -= chunk;
      summed_ += chunk;
    }
  }
  // Reads and sums [summed_, end) of the member.
  Status SumUpTo(uint64_t end) {
    std::vector<uint8_t> scratch(static_cast<size_t>(std::min<uint64_t>(end - summed_, 1 << 20)));
    while (summed_ < end) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(end - summed_, scratch.size()));
      EMBSTORE_RETURN_IF_ERROR(member_->ReadAt(summed_, scratch.data(), n));
      Add(scratch.data(), n);
    }
    return Status::OK();
  }
  Status Check() const {
    if (summed_ != member_->size() || crc_ == want_) return Status::OK();
    return Status::Corruption(where_ + " fails its CRC-32 check (the archive is damaged)");
  }

  std::unique_ptr<ByteSource> member_;  // the whole member, from offset 0
  uint64_t skip_;
  uint32_t want_;
  std::string where_;
  uLong crc_ = ::crc32(0L, Z_NULL, 0);
  uint64_t summed_ = 0;  // member bytes [0, summed_) are in crc_
};

}  // namespace

Result<std::unique_ptr<ZipArchive>> ZipArchive::Open(std::shared_ptr<File> file) {
  std::unique_ptr<ZipArchive> zip(new ZipArchive(std::move(file)));
  EMBSTORE_RETURN_IF_ERROR(zip->ParseCentralDirectory());
  return zip;
}

Status ZipArchive::ParseCentralDirectory() {
  const std::string where = "'" + file_->path() + "'";
  const uint64_t file_size = file_->size();
  if (file_size < kEocdSize)
    return Status::InvalidArgument(where + " is too short to be a zip archive");
  // The end-of-central-directory record sits in the last 22 + 65535 bytes.
  const uint64_t tail_size = std::min<uint64_t>(file_size, kEocdSize + kMaxCommentSize);
  std::vector<uint8_t> tail(tail_size);
  EMBSTORE_RETURN_IF_ERROR(file_->ReadAt(file_size - tail_size, tail.data(), tail.size()));
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(tail_size - kEocdSize); i >= 0; --i) {
    if (U32(&tail[i]) == kEndOfCentralDirSig && i + kEocdSize + U16(&tail[i + 20]) <= tail_size) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) {
    return Status::Corruption(where + " has no zip end-of-central-directory record (truncated?)");
  }
  const uint64_t eocd_offset = file_size - tail_size + static_cast<uint64_t>(eocd);
  const uint8_t* e = &tail[eocd];
  uint64_t disk = U16(e + 4), cd_disk = U16(e + 6);
  uint64_t entries = U16(e + 10);
  uint64_t cd_size = U32(e + 12), cd_offset = U32(e + 16);
  uint64_t cd_limit = eocd_offset;
  // ZIP64: a locator right before the classic record points at the 64-bit one.
  if (eocd_offset >= 20) {
    uint8_t loc[20];
    EMBSTORE_RETURN_IF_ERROR(file_->ReadAt(eocd_offset - 20, loc, sizeof(loc)));
    if (U32(loc) == kZip64LocatorSig) {
      const uint64_t z64_offset = U64(loc + 8);
      if (z64_offset > eocd_offset - 20 || eocd_offset - 20 - z64_offset < 56) {
        return Status::Corruption(where + ": bad ZIP64 end-of-central-directory locator");
      }
      uint8_t z[56];
      EMBSTORE_RETURN_IF_ERROR(file_->ReadAt(z64_offset, z, sizeof(z)));
      if (U32(z) != kZip64EndSig) {
        return Status::Corruption(where + ": bad ZIP64 end-of-central-directory record");
      }
      disk = U32(z + 16);
      cd_disk = U32(z + 20);
      entries = U64(z + 32);
      cd_size = U64(z + 40);
      cd_offset = U64(z + 48);
      cd_limit = z64_offset;
    }
  }
  if (disk != 0 || cd_disk != 0)
    return Status::NotSupported(where + " is a multi-disk zip archive");
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset) {
    return Status::Corruption(where + ": the zip central directory lies outside the file");
  }
  if (cd_size > kMaxCentralDirectoryBytes || entries > kMaxMembers) {
    return Status::NotSupported(where + ": the zip central directory is too large (" +
                                std::to_string(entries) + " members)");
  }
  central_directory_offset_ = cd_offset;
  std::vector<uint8_t> cd(static_cast<size_t>(cd_size));
  EMBSTORE_RETURN_IF_ERROR(file_->ReadAt(cd_offset, cd.data(), cd.size()));
  size_t pos = 0;
  members_.reserve(static_cast<size_t>(std::min<uint64_t>(entries, cd_size / 46)));
  for (uint64_t i = 0; i < entries; ++i) {
    if (cd.size() - pos < 46 || U32(&cd[pos]) != kCentralHeaderSig) {
      return Status::Corruption(where + ": zip central directory entry " + std::to_string(i) +
                                " is damaged");
    }
    const uint8_t* h = &cd[pos];
    ZipMember m;
    m.index = i;
    m.flags = U16(h + 8);
    m.method = U16(h + 10);
    m.crc32 = U32(h + 16);
    m.compressed_size = U32(h + 20);
    m.uncompressed_size = U32(h + 24);
    const size_t name_len = U16(h + 28), extra_len = U16(h + 30), comment_len = U16(h + 32);
    const uint32_t disk_start = U16(h + 34);
    m.local_header_offset = U32(h + 42);
    if (cd.size() - pos - 46 < name_len + extra_len + comment_len) {
      return Status::Corruption(where + ": zip central directory entry " + std::to_string(i) +
                                " is truncated");
    }
    m.name.assign(reinterpret_cast<const char*>(h + 46), name_len);
    // ZIP64 extra field: 64-bit values for whichever 32-bit fields are saturated.
    const uint8_t* x = h + 46 + name_len;
    for (size_t xp = 0; xp + 4 <= extra_len;) {
      const uint16_t id = U16(x + xp), len = U16(x + xp + 2);
      if (xp + 4 + len > extra_len) break;
      if (id == 0x0001) {
        const uint8_t* f = x + xp + 4;
        size_t left = len;
        auto take = [&](uint64_t* v) {
          if (*v != 0xffffffffu) return true;
          if (left < 8) return false;
          *v = U64(f);
          f += 8;
          left -= 8;
          return true;
        };
        if (!take(&m.uncompressed_size) || !take(&m.compressed_size) ||
            !take(&m.local_header_offset)) {
          return Status::Corruption(where + ": bad ZIP64 extra field for '" + m.name + "'");
        }
      }
      xp += 4 + len;
    }
    if (disk_start != 0 && disk_start != 0xffff) {
      return Status::NotSupported(where + " is a multi-disk zip archive");
    }
    pos += 46 + name_len + extra_len + comment_len;
    by_name_.emplace(m.name, members_.size());  // keeps the first of duplicate names
    members_.push_back(std::move(m));
  }
  return Status::OK();
}

const ZipMember* ZipArchive::Find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &members_[it->second];
}

Result<uint64_t> ZipArchive::DataOffset(const ZipMember& m) const {
  const std::string where = "'" + file_->path() + "' member '" + m.name + "'";
  if (m.local_header_offset > central_directory_offset_ ||
      central_directory_offset_ - m.local_header_offset < 30) {
    return Status::Corruption(where + ": local header lies outside the archive");
  }
  uint8_t h[30];
  EMBSTORE_RETURN_IF_ERROR(file_->ReadAt(m.local_header_offset, h, sizeof(h)));
  if (U32(h) != kLocalHeaderSig) return Status::Corruption(where + ": bad local header signature");
  const uint64_t data = m.local_header_offset + 30 + U16(h + 26) + U16(h + 28);
  if (data > central_directory_offset_ || m.compressed_size > central_directory_offset_ - data) {
    return Status::Corruption(where + ": data runs past the end of the archive (truncated?)");
  }
  return data;
}

Result<std::unique_ptr<ByteSource>> ZipArchive::OpenMember(const ZipMember& m,
                                                           uint64_t skip) const {
  const std::string where = "'" + file_->path() + "' member '" + m.name + "'";
  if (m.flags & 0x1) return Status::NotSupported(where + " is encrypted");
  if (skip > m.uncompressed_size) return Status::Internal(where + ": skip beyond the member");
  EMBSTORE_ASSIGN_OR_RETURN(uint64_t data, DataOffset(m));
  if (m.method == 0) {
    if (m.compressed_size != m.uncompressed_size) {
      return Status::Corruption(where + ": stored member with differing sizes");
    }
    return std::unique_ptr<ByteSource>(std::make_unique<CrcCheckedSource>(
        MakeFileRegionSource(file_, data, m.uncompressed_size), skip, m.crc32, where));
  }
  if (m.method == 8) {
    return std::unique_ptr<ByteSource>(std::make_unique<ZipStreamSource>(file_->path(), m, skip));
  }
  return Status::NotSupported(where + " uses zip compression method " + std::to_string(m.method) +
                              "; only stored and deflate members can be read");
}

ZipArchive::~ZipArchive() {
  if (shared_libzip_ != nullptr) zip_discard(shared_libzip_);
}

Result<std::string> ZipArchive::ReadMemberPrefix(const ZipMember& m, uint64_t max_bytes) const {
  if (m.method != 8) {
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> src, OpenMember(m));
    std::string out(static_cast<size_t>(std::min(max_bytes, src->size())), '\0');
    EMBSTORE_RETURN_IF_ERROR(src->ReadAt(0, out.data(), out.size()));
    return out;
  }
  // Deflated: through one libzip handle kept for all small reads (listing an
  // .npz with many members must not reparse its directory per member).
  if (m.flags & 0x1)
    return Status::NotSupported("'" + file_->path() + "' member '" + m.name + "' is encrypted");
  EMBSTORE_RETURN_IF_ERROR(DataOffset(m).status());
  MutexLock lock(&shared_libzip_mu_);
  if (shared_libzip_ == nullptr) {
    EMBSTORE_ASSIGN_OR_RETURN(shared_libzip_, OpenLibzip(file_->path()));
  }
  ZipStreamSource src(file_->path(), m, 0, shared_libzip_);
  std::string out(static_cast<size_t>(std::min(max_bytes, src.size())), '\0');
  EMBSTORE_RETURN_IF_ERROR(src.ReadAt(0, out.data(), out.size()));
  return out;
}

Result<std::string> ZipArchive::ReadMember(const ZipMember& m, uint64_t max_bytes) const {
  if (m.uncompressed_size > max_bytes) {
    return Status::InvalidArgument("'" + file_->path() + "' member '" + m.name +
                                   "' is too large (" + std::to_string(m.uncompressed_size) +
                                   " bytes; at most " + std::to_string(max_bytes) + " accepted)");
  }
  return ReadMemberPrefix(m, max_bytes);
}

}  // namespace embstore::storage::ckpt
