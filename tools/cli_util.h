// Helpers of the embstore CLI: value specs, exit codes, progress, printing.
#ifndef EMBSTORE_TOOLS_CLI_UTIL_H_
#define EMBSTORE_TOOLS_CLI_UTIL_H_

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "checkpoint/npy.h"
#include "embstore/query.h"
#include "embstore/status.h"

namespace embstore::cli {

// Exit codes (documented in the README).
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 1;  // bad usage or bad input
inline constexpr int kExitIO = 2;     // I/O error or corruption
int ExitCodeFor(const Status& status);

// Integer values from a SPEC: "1,2,3" inline, or "@path.npy" (int32/int64,
// used where they were read, without a copy).
struct IntArray {
  std::vector<int64_t> inline_values;  // an inline list
  storage::NpyArray file;              // @path.npy: the file's data as stored
  IndexType type = IndexType::kInt64;
  std::vector<int64_t> shape;
  int64_t size() const { return static_cast<int64_t>(shape.empty() ? 0 : Count()); }
  int64_t Count() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  IndexArray view() const;
};
// Float values from a SPEC: inline, or "@path.npy" (float32 used as read;
// float64 converted).
struct FloatArray {
  std::vector<float> converted;  // an inline list or a float64 file
  storage::NpyArray file;        // a float32 file
  std::vector<int64_t> shape;
  std::span<const float> values() const;
};

// From this call on, ParseIntSpec and ParseFloatSpec map large .npy files
// (storage::MapOrLoadNpy) instead of reading them into fresh memory, and a
// SIGBUS (a mapped input, or a table file, truncated by another process while
// this one reads it) ends the process with a message and exit code 2 after
// removing the output file registered with SetOutputToRemove, instead of
// killing it. For commands that only read their inputs (query).
void EnableMappedInputs();
// The temporary output file the SIGBUS handler removes ("" for none).
void SetOutputToRemove(const std::string& path);

// `what` names the flag in error messages ("--indices").
Result<IntArray> ParseIntSpec(const std::string& spec, const std::string& what);
Result<FloatArray> ParseFloatSpec(const std::string& spec, const std::string& what);
// A single number, accepting "inf", "-inf".
Result<double> ParseNumber(const std::string& text, const std::string& what);
Result<int64_t> ParseInteger(const std::string& text, const std::string& what);

// Rewrites "--flag -1" into "--flag=-1" for flags that take a value, so that
// negative numbers can be given as a separate word.
std::vector<std::string> JoinNegativeValues(const std::vector<std::string>& args);

// A progress bar with ETA on stderr, drawn only when stderr is a terminal.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();
  void Update(int64_t done, int64_t total);

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_;
};

// Refuses an --out path inside the store directory `db`, however it is
// spelled (a symbolic link, "..", a hard link to one of the store's files):
// writing there would replace or corrupt a table. Refuses "" too.
Status CheckOutputOutsideStore(const std::string& db, const std::string& out);

// A tensor key as `inspect` prints it: as it is when it is plain, else in
// double quotes with C escapes (\t, \n, \\, \", \xHH for other control
// bytes), so that empty keys and keys holding tabs, newlines or NULs are
// shown unambiguously. `--tensor` takes either form.
std::string DisplayKey(const std::string& key);
// The key a `--tensor` argument names: a quoted, escaped form is decoded;
// anything else is taken as it is.
Result<std::string> ParseKeyArgument(const std::string& arg);

// Formats bytes as "1.5 MiB".
std::string HumanBytes(uint64_t bytes);

}  // namespace embstore::cli

#endif  // EMBSTORE_TOOLS_CLI_UTIL_H_
