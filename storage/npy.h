// Internal: NumPy .npy reading and writing (format versions 1.0, 2.0, 3.0).
#ifndef EMBSTORE_STORAGE_NPY_H_
#define EMBSTORE_STORAGE_NPY_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "embstore/status.h"

namespace embstore::storage {

// A parsed .npy header.
struct NpyHeader {
  std::string descr;  // e.g. "<f4"
  char kind = 0;      // 'f', 'i', 'u', 'b', ... (numpy's kind letter)
  int item_size = 0;  // bytes per element
  bool fortran_order = false;
  std::vector<int64_t> shape;     // as stored
  uint64_t data_offset = 0;       // bytes from the start of the file to the data
  uint64_t data_bytes = 0;        // product(shape) * item_size
  std::string DTypeName() const;  // "f32", "f64", "f16", "int64", ... or the descr
};

// Parses the header at the start of `prefix` (the first bytes of a file; at
// least 10 bytes, and the whole header for success). `file_size` bounds the
// data. Errors name what is wrong (magic, version, length, dict syntax, dtype,
// shape, size).
Result<NpyHeader> ParseNpyHeader(std::span<const uint8_t> prefix, uint64_t file_size);
// Reads and parses the header of the file at `path`.
Result<NpyHeader> ReadNpyHeader(const std::string& path);

// A whole small array loaded into memory (used for query inputs given as
// @file.npy). Refuses files over `max_bytes` of data.
struct NpyArray {
  NpyHeader header;
  std::vector<uint8_t> data;  // row-major (C order), little-endian
};
Result<NpyArray> LoadNpy(const std::string& path, uint64_t max_bytes = uint64_t{1} << 32);

// Writes a .npy file atomically: to "<path>.tmp-<pid>", fsync, rename. On any
// error the destination is untouched and the temporary removed. `descr` is
// "<f4" or "<f2"; `data` holds product(shape) elements of that type.
Status WriteNpy(const std::string& path, const std::string& descr,
                const std::vector<int64_t>& shape, std::span<const uint8_t> data);

// Streaming writer for large arrays: header first, then Append() chunks, then
// Commit() (fsync + rename). Destroying an uncommitted writer removes the
// temporary file.
class NpyWriter {
 public:
  NpyWriter() = default;
  ~NpyWriter();
  NpyWriter(const NpyWriter&) = delete;
  NpyWriter& operator=(const NpyWriter&) = delete;
  Status Open(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape);
  Status Append(std::span<const uint8_t> bytes);
  Status Commit();

 private:
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t expected_bytes_ = 0;
  uint64_t written_bytes_ = 0;
};

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_NPY_H_
