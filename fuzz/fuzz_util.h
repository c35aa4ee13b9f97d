// Shared helpers of the checkpoint fuzz targets: the readers take paths, so each
// input is written to an in-memory file (memfd) first, then opened through the
// public entry points and read in full with bounded effort.
#ifndef EMBSTORE_FUZZ_FUZZ_UTIL_H_
#define EMBSTORE_FUZZ_FUZZ_UTIL_H_

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "checkpoint/tensor_reader.h"
#include "embstore/checkpoint.h"

namespace embstore::fuzz {

// A file holding the current input, reachable by path. One per process.
class InputFile {
 public:
  InputFile() {
    fd_ = memfd_create("embstore-fuzz", 0);
    if (fd_ >= 0) {
      path_ = "/proc/self/fd/" + std::to_string(fd_);
    } else {
      path_ = "/tmp/embstore-fuzz-" + std::to_string(getpid());
    }
  }
  const std::string& Write(const uint8_t* data, size_t size) {
    if (fd_ >= 0) {
      if (ftruncate(fd_, 0) != 0 || pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size))
        std::abort();
    } else {
      FILE* f = std::fopen(path_.c_str(), "wb");
      if (f == nullptr || std::fwrite(data, 1, size, f) != size) std::abort();
      std::fclose(f);
    }
    return path_;
  }

 private:
  int fd_ = -1;
  std::string path_;
};

// Reads every row of `reader` in odd-sized chunks (capped so a huge expanded
// view cannot make one input run for minutes), then reads a chunk again from
// the start to exercise restarts.
inline void DrainReader(storage::TensorReader& reader) {
  const int64_t rows = reader.rows(), dim = reader.dim();
  if (rows < 0 || dim < 0) std::abort();  // readers must never report negative sizes
  if (dim == 0 || rows == 0 || dim > (int64_t{1} << 16)) return;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(7, (int64_t{1} << 16) / dim));
  std::vector<float> out(static_cast<size_t>(chunk * dim));
  int64_t budget = int64_t{1} << 18;  // elements per input
  for (int64_t first = 0; first < rows && budget > 0; first += chunk, budget -= chunk * dim) {
    const int64_t n = std::min(chunk, rows - first);
    if (!reader.ReadRows(first, n, out.data()).ok()) return;
  }
  (void)reader.ReadRows(0, std::min(chunk, rows), out.data());
}

// Inspects the file, opens and drains each tensor, and reads each key as a scalar.
inline void ExerciseCheckpoint(const std::string& path) {
  auto entries = InspectCheckpoint(path);
  if (!entries.ok()) {
    (void)storage::OpenTensor(path, "");
    return;
  }
  size_t opened = 0;
  for (const TensorEntry& e : *entries) {
    if (++opened > 16) break;
    auto reader = storage::OpenTensor(path, e.key);
    if (reader.ok()) DrainReader(**reader);
    (void)ReadCheckpointScalar(path, e.key);
  }
  (void)storage::OpenTensor(path, "");
  (void)storage::OpenTensor(path, "no.such.key");
}

}  // namespace embstore::fuzz

#endif  // EMBSTORE_FUZZ_FUZZ_UTIL_H_
