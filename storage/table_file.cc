#include "storage/table_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <boost/interprocess/file_mapping.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "util/io_util.h"

namespace embstore::storage {
namespace {

void Put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }  // x86/ARM little-endian hosts
void Put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint32_t Get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

static_assert(std::endian::native == std::endian::little, "table files are little-endian");

}  // namespace

uint64_t Checksum64(const void* data, size_t n) { return XXH64(data, n, 0); }

void EncodeHeader(const TableHeader& h, uint8_t* out) {
  std::memset(out, 0, kHeaderBytes);
  std::memcpy(out, kTableMagic, 8);
  Put32(out + 8, h.format_version);
  Put32(out + 12, static_cast<uint32_t>(h.dtype));
  Put64(out + 16, h.rows);
  Put64(out + 24, h.dim);
  Put64(out + 32, h.row_stride);
  Put64(out + 40, h.data_offset);
  Put64(out + 48, h.data_bytes);
  Put64(out + 56, h.data_checksum);
  Put64(out + 64, Checksum64(out, 64));
}

Result<TableHeader> DecodeHeader(std::span<const uint8_t> b, const std::string& path) {
  auto bad = [&](const std::string& what) {
    return Status::Corruption("table file '" + path + "': " + what);
  };
  if (b.size() < 72) return bad("shorter than its header");
  if (std::memcmp(b.data(), kTableMagic, 8) != 0)
    return bad("bad magic (not an embstore table file)");
  if (Get64(b.data() + 64) != Checksum64(b.data(), 64)) return bad("header checksum mismatch");
  TableHeader h;
  h.format_version = Get32(b.data() + 8);
  if (h.format_version != kTableFormatVersion) {
    return Status::NotSupported("table file '" + path + "' has format version " +
                                std::to_string(h.format_version) + "; this build reads version " +
                                std::to_string(kTableFormatVersion));
  }
  const uint32_t dt = Get32(b.data() + 12);
  if (!IsKnownDType(dt)) return bad("unknown dtype code " + std::to_string(dt));
  h.dtype = static_cast<DType>(dt);
  h.rows = Get64(b.data() + 16);
  h.dim = Get64(b.data() + 24);
  h.row_stride = Get64(b.data() + 32);
  h.data_offset = Get64(b.data() + 40);
  h.data_bytes = Get64(b.data() + 48);
  h.data_checksum = Get64(b.data() + 56);
  if (h.dim == 0 || h.dim > (uint64_t{1} << 32)) return bad("bad dim");
  if (h.row_stride != RowStrideBytes(h.dtype, static_cast<int64_t>(h.dim)))
    return bad("bad row stride");
  if (h.data_offset != kHeaderBytes) return bad("bad data offset");
  if (h.rows > (uint64_t{1} << 48) / h.row_stride || h.data_bytes != h.rows * h.row_stride) {
    return bad("data size does not match rows x row stride");
  }
  return h;
}

// ---- Writer ---------------------------------------------------------------------------

struct TableFileWriter::HashState {
  XXH64_state_t* state;
};

TableFileWriter::~TableFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());
  }
}

Status TableFileWriter::Open(const std::string& tmp_path, DType dtype, int64_t rows, int64_t dim) {
  if (rows < 0 || dim <= 0) return Status::InvalidArgument("a table needs rows >= 0 and dim >= 1");
  tmp_path_ = tmp_path;
  header_.dtype = dtype;
  header_.rows = static_cast<uint64_t>(rows);
  header_.dim = static_cast<uint64_t>(dim);
  header_.row_stride = RowStrideBytes(dtype, dim);
  if (__builtin_mul_overflow(header_.rows, header_.row_stride, &header_.data_bytes) ||
      header_.data_bytes > static_cast<uint64_t>(INT64_MAX) - kHeaderBytes) {
    return Status::InvalidArgument("a table of " + std::to_string(rows) + " rows of dimension " +
                                   std::to_string(dim) + " is larger than a file can be");
  }
  // Exclusively: an existing file or a planted link at this name is an error,
  // never followed or overwritten.
  fd_ = ::open(tmp_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd_ < 0) return ErrnoStatus("cannot create", tmp_path, errno);
  // Reserve the whole file up front: a full disk fails here, not half way.
  const off_t total = static_cast<off_t>(kHeaderBytes + header_.data_bytes);
  int rc = ::posix_fallocate(fd_, 0, total);
  if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL)
    return ErrnoStatus("cannot allocate", tmp_path, rc);
  if (rc != 0 && ::ftruncate(fd_, total) != 0) return ErrnoStatus("cannot size", tmp_path, errno);
  hash_ = std::unique_ptr<HashState, void (*)(HashState*)>(new HashState{XXH64_createState()},
                                                           [](HashState* s) {
                                                             XXH64_freeState(s->state);
                                                             delete s;
                                                           });
  XXH64_reset(hash_->state, 0);
  return Status::OK();
}

Status TableFileWriter::AppendRows(std::span<const uint8_t> encoded, int64_t count) {
  if (fd_ < 0) return Status::Internal("TableFileWriter::AppendRows before Open");
  if (encoded.size() != static_cast<size_t>(count) * header_.row_stride ||
      rows_written_ + static_cast<uint64_t>(count) > header_.rows) {
    return Status::Internal("TableFileWriter::AppendRows: wrong row count or size");
  }
  const uint64_t off = kHeaderBytes + rows_written_ * header_.row_stride;
  EMBSTORE_RETURN_IF_ERROR(PWriteFull(fd_, encoded.data(), encoded.size(), off, tmp_path_));
  XXH64_update(hash_->state, encoded.data(), encoded.size());
  rows_written_ += static_cast<uint64_t>(count);
  return Status::OK();
}

Result<TableHeader> TableFileWriter::Finish(const std::string& final_path, const std::string& dir) {
  if (fd_ < 0) return Status::Internal("TableFileWriter::Finish before Open");
  if (rows_written_ != header_.rows) {
    return Status::Internal("TableFileWriter::Finish: " + std::to_string(rows_written_) + " of " +
                            std::to_string(header_.rows) + " rows written");
  }
  header_.data_checksum = XXH64_digest(hash_->state);
  std::vector<uint8_t> hdr(kHeaderBytes);
  EncodeHeader(header_, hdr.data());
  EMBSTORE_RETURN_IF_ERROR(PWriteFull(fd_, hdr.data(), hdr.size(), 0, tmp_path_));
  if (::fsync(fd_) != 0) return ErrnoStatus("cannot fsync", tmp_path_, errno);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    ::unlink(tmp_path_.c_str());
    return ErrnoStatus("cannot close", tmp_path_, errno);
  }
  if (::rename(tmp_path_.c_str(), final_path.c_str()) != 0) {
    Status st = ErrnoStatus("cannot rename onto", final_path, errno);
    ::unlink(tmp_path_.c_str());
    return st;
  }
  EMBSTORE_RETURN_IF_ERROR(FsyncDir(dir));
  return header_;
}

// ---- Mapping ---------------------------------------------------------------------------

struct MappedTableFile::Impl {
  boost::interprocess::file_mapping file;
  boost::interprocess::mapped_region region;
};

MappedTableFile::~MappedTableFile() = default;

namespace {

// Reads and decodes the header of an open table file and checks that the file
// size matches it, with plain reads: mapping a short file and touching past
// its end would SIGBUS.
Result<TableHeader> ReadCheckedHeader(int fd, const std::string& path) {
  EMBSTORE_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd, path));
  if (size < kHeaderBytes) return Status::Corruption("table file '" + path + "' is truncated");
  std::vector<uint8_t> hdr(kHeaderBytes);
  EMBSTORE_RETURN_IF_ERROR(PReadFull(fd, hdr.data(), hdr.size(), 0, path));
  EMBSTORE_ASSIGN_OR_RETURN(TableHeader h, DecodeHeader(hdr, path));
  if (size != h.data_offset + h.data_bytes) {
    return Status::Corruption("table file '" + path + "' has " + std::to_string(size) +
                              " bytes; its header says " +
                              std::to_string(h.data_offset + h.data_bytes));
  }
  return h;
}

}  // namespace

Result<std::unique_ptr<MappedTableFile>> MappedTableFile::Open(const std::string& path,
                                                               bool advise_random,
                                                               bool huge_pages) {
  namespace bip = boost::interprocess;
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  ScopedFd closer(fd);
  EMBSTORE_ASSIGN_OR_RETURN(TableHeader h, ReadCheckedHeader(fd, path));
  std::unique_ptr<MappedTableFile> m(new MappedTableFile());
  m->impl_ = std::make_unique<Impl>();
  try {
    m->impl_->file = bip::file_mapping(path.c_str(), bip::read_only);
    m->impl_->region = bip::mapped_region(m->impl_->file, bip::read_only);
  } catch (const bip::interprocess_exception& e) {
    return Status::IOError("cannot map table file '" + path + "': " + e.what());
  }
  if (advise_random && h.data_bytes > 0) {
    m->impl_->region.advise(bip::mapped_region::advice_random);
  }
  if (huge_pages && h.data_bytes > 0) {
    // Advice only: EINVAL where the kernel has no transparent huge pages.
    m->huge_pages_ =
        ::madvise(m->impl_->region.get_address(), m->impl_->region.get_size(), MADV_HUGEPAGE) == 0;
  }
  m->header_ = h;
  m->data_ = static_cast<const uint8_t*>(m->impl_->region.get_address()) + h.data_offset;
  return m;
}

Result<TableHeader> VerifyTableFile(const std::string& path) {
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  ScopedFd closer(fd);
  EMBSTORE_ASSIGN_OR_RETURN(TableHeader h, ReadCheckedHeader(fd, path));
  std::vector<uint8_t> buf;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  buf.resize(8u << 20);
  uint64_t off = h.data_offset, left = h.data_bytes;
  Status status;
  while (left > 0) {
    const uint64_t n = std::min<uint64_t>(left, buf.size());
    status = PReadFull(fd, buf.data(), n, off, path);
    if (!status.ok()) break;
    XXH64_update(st, buf.data(), n);
    off += n;
    left -= n;
  }
  const uint64_t sum = XXH64_digest(st);
  XXH64_freeState(st);
  EMBSTORE_RETURN_IF_ERROR(status);
  if (sum != h.data_checksum) {
    return Status::Corruption("table file '" + path + "': data checksum mismatch (header " +
                              std::to_string(h.data_checksum) + ", data " + std::to_string(sum) +
                              ")");
  }
  return h;
}

}  // namespace embstore::storage
