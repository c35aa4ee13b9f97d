// Internal: the table file format (see docs/table_format.md).
//
//   offset 0     header (kHeaderBytes = 4096, fields little-endian)
//   offset 4096  rows, each row_stride bytes (a multiple of 64), zero padded
//
// Files are written once, through TableFileWriter, and never modified.
#ifndef EMBSTORE_STORAGE_TABLE_FILE_H_
#define EMBSTORE_STORAGE_TABLE_FILE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "embstore/status.h"
#include "embstore/types.h"

namespace embstore::storage {

inline constexpr char kTableMagic[8] = {'E', 'M', 'B', 'S', 'T', 'B', 'L', '\0'};
inline constexpr uint32_t kTableFormatVersion = 1;
inline constexpr uint64_t kHeaderBytes = 4096;

// The decoded header. PERSISTED layout (byte offsets):
//   0 magic[8]  8 format_version u32  12 dtype u32  16 rows u64  24 dim u64
//   32 row_stride u64  40 data_offset u64  48 data_bytes u64
//   56 data_checksum u64 (xxh64, seed 0, of the data region)
//   64 header_checksum u64 (xxh64, seed 0, of bytes [0, 64))
//   72..4096 zero (reserved)
struct TableHeader {
  uint32_t format_version = kTableFormatVersion;
  DType dtype = DType::kF32;
  uint64_t rows = 0;
  uint64_t dim = 0;
  uint64_t row_stride = 0;
  uint64_t data_offset = kHeaderBytes;
  uint64_t data_bytes = 0;
  uint64_t data_checksum = 0;
};

// Serializes into exactly kHeaderBytes bytes.
void EncodeHeader(const TableHeader& h, uint8_t* out);
// Checks magic, version, header checksum, dtype and internal consistency.
Result<TableHeader> DecodeHeader(std::span<const uint8_t> bytes, const std::string& path);

// Streams rows into a temporary file and publishes it with Finish().
// Destroying an unfinished writer removes the temporary file.
class TableFileWriter {
 public:
  TableFileWriter() = default;
  ~TableFileWriter();
  TableFileWriter(const TableFileWriter&) = delete;
  TableFileWriter& operator=(const TableFileWriter&) = delete;

  // Creates `tmp_path` (O_EXCL) sized for the table.
  Status Open(const std::string& tmp_path, DType dtype, int64_t rows, int64_t dim);
  // Appends `count` encoded rows (count * row_stride bytes, padding zeroed).
  Status AppendRows(std::span<const uint8_t> encoded, int64_t count);
  // Writes the header, fsyncs, renames to `final_path` and fsyncs `dir`.
  Result<TableHeader> Finish(const std::string& final_path, const std::string& dir);

  uint64_t row_stride() const { return header_.row_stride; }

 private:
  std::string tmp_path_;
  int fd_ = -1;
  TableHeader header_;
  uint64_t rows_written_ = 0;
  struct HashState;
  std::unique_ptr<HashState, void (*)(HashState*)> hash_{nullptr, nullptr};
};

// A read-only mapping of a table file (Boost.Interprocess).
class MappedTableFile {
 public:
  // Maps `path` and validates its header (not the data checksum).
  // advise_random: MADV_RANDOM; huge_pages: MADV_HUGEPAGE (both advice only).
  static Result<std::unique_ptr<MappedTableFile>> Open(const std::string& path, bool advise_random,
                                                       bool huge_pages = false);
  // Whether the kernel took MADV_HUGEPAGE for this mapping.
  bool huge_pages() const { return huge_pages_; }
  ~MappedTableFile();

  const TableHeader& header() const { return header_; }
  const uint8_t* data() const { return data_; }

 private:
  MappedTableFile() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  TableHeader header_;
  const uint8_t* data_ = nullptr;
  bool huge_pages_ = false;
};

// Reads the header and recomputes the data checksum of the file at `path`,
// streaming (bounded memory). Corruption names what differs.
Result<TableHeader> VerifyTableFile(const std::string& path);

// xxh64 (seed 0) of a buffer.
uint64_t Checksum64(const void* data, size_t n);

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_TABLE_FILE_H_
