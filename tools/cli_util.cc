#include "tools/cli_util.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "checkpoint/npy.h"

namespace embstore::cli {

int ExitCodeFor(const Status& status) {
  switch (status.code()) {
    case Status::Code::kOk:
      return kExitOk;
    case Status::Code::kIOError:
    case Status::Code::kCorruption:
    case Status::Code::kInternal:
      return kExitIO;
    default:
      return kExitUsage;
  }
}

namespace {

std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t start = 0;
  while (true) {
    size_t comma = s.find(',', start);
    std::string item =
        s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    // trim spaces
    size_t a = item.find_first_not_of(" \t");
    size_t b = item.find_last_not_of(" \t");
    out.push_back(a == std::string::npos ? std::string() : item.substr(a, b - a + 1));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

constexpr uint64_t kMaxSpecBytes = uint64_t{8} << 30;

}  // namespace

Result<int64_t> ParseInteger(const std::string& text, const std::string& what) {
  int64_t v = 0;
  const char* b = text.data();
  const char* e = text.data() + text.size();
  if (!text.empty() && *b == '+') ++b;
  // from_chars takes a '-' itself: a sign after the '+' ("+-1") is not a number.
  const bool extra_sign = b != text.data() && b != e && (*b == '-' || *b == '+');
  auto [p, ec] = std::from_chars(b, e, v);
  if (extra_sign || ec != std::errc() || p != e || b == e) {
    if (text.find_first_of(".eE") != std::string::npos) {
      return Status::InvalidArgument(what + ": '" + text +
                                     "' is not an integer (float values are not indices)");
    }
    return Status::InvalidArgument(what + ": '" + text + "' is not an integer");
  }
  return v;
}

Result<double> ParseNumber(const std::string& text, const std::string& what) {
  if (text == "inf" || text == "+inf" || text == "Inf")
    return std::numeric_limits<double>::infinity();
  if (text == "-inf" || text == "-Inf") return -std::numeric_limits<double>::infinity();
  if (text.empty()) return Status::InvalidArgument(what + ": empty number");
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) {
    return Status::InvalidArgument(what + ": '" + text + "' is not a number");
  }
  // ERANGE on overflow (+-HUGE_VAL) is an error; on underflow strtod returns
  // the nearest subnormal or zero, which is what the text means.
  if (errno == ERANGE && std::isinf(v)) {
    return Status::InvalidArgument(what + ": '" + text + "' is out of range");
  }
  return v;
}

namespace {

std::atomic<bool> g_map_inputs{false};
// For the SIGBUS handler: two fixed buffers and the index of the complete
// one (-1: none), so that the handler never reads a path being written.
char g_output_to_remove[2][4096] = {};
std::atomic<int> g_output_slot{-1};
static_assert(std::atomic<int>::is_always_lock_free);

void OnSigbus(int) {
  const int slot = g_output_slot.load();
  if (slot >= 0) ::unlink(g_output_to_remove[slot]);
  static const char kMessage[] =
      "embstore: error: a file this process was reading was truncated under it (an input .npy "
      "or a table file); the --out file was not written\n";
  const ssize_t ignored = ::write(2, kMessage, sizeof kMessage - 1);
  (void)ignored;
  ::_exit(kExitIO);
}

Result<storage::NpyArray> LoadSpecNpy(const std::string& path) {
  return g_map_inputs.load() ? storage::MapOrLoadNpy(path, kMaxSpecBytes)
                             : storage::LoadNpy(path, kMaxSpecBytes);
}

}  // namespace

void EnableMappedInputs() {
  struct sigaction sa {};
  sa.sa_handler = OnSigbus;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, nullptr);
  g_map_inputs.store(true);
}

void SetOutputToRemove(const std::string& path) {
  if (path.empty() || path.size() >= sizeof g_output_to_remove[0]) {
    g_output_slot.store(-1);  // none (or too long to keep: not removed)
    return;
  }
  const int slot = g_output_slot.load() == 0 ? 1 : 0;  // the one not in use
  std::memset(g_output_to_remove[slot], 0, sizeof g_output_to_remove[slot]);
  std::memcpy(g_output_to_remove[slot], path.data(), path.size());
  g_output_slot.store(slot);
}

IndexArray IntArray::view() const {
  if (file.data.empty()) return IndexArray(std::span<const int64_t>(inline_values));
  // LoadNpy's buffer is 64-byte aligned and holds exactly Count() items.
  const auto n = static_cast<size_t>(Count());
  if (type == IndexType::kInt64) {
    return IndexArray(
        std::span<const int64_t>(reinterpret_cast<const int64_t*>(file.data.data()), n));  // NOLINT
  }
  return IndexArray(
      std::span<const int32_t>(reinterpret_cast<const int32_t*>(file.data.data()), n));  // NOLINT
}

std::span<const float> FloatArray::values() const {
  if (file.data.empty()) return converted;
  return {reinterpret_cast<const float*>(file.data.data()), file.data.size() / sizeof(float)};
}

Result<IntArray> ParseIntSpec(const std::string& spec, const std::string& what) {
  IntArray out;
  if (!spec.empty() && spec[0] == '@') {
    const std::string path = spec.substr(1);
    auto arr = LoadSpecNpy(path);
    if (!arr.ok()) return arr.status().WithContext(what);
    const storage::NpyHeader& h = arr->header;
    if (h.kind == 'f') {
      return Status::InvalidArgument(what + ": '" + path + "' holds " + h.DTypeName() +
                                     " values; indices and offsets must be int32 or int64");
    }
    if (h.kind != 'i' || (h.item_size != 4 && h.item_size != 8)) {
      return Status::InvalidArgument(what + ": '" + path + "' has dtype " + h.DTypeName() +
                                     "; expected int32 or int64");
    }
    if (h.shape.size() > 2 || h.shape.empty()) {
      return Status::InvalidArgument(what + ": '" + path + "' must be 1-D or 2-D (has " +
                                     std::to_string(h.shape.size()) + " dimensions)");
    }
    out.shape = h.shape;
    out.type = h.item_size == 8 ? IndexType::kInt64 : IndexType::kInt32;
    out.file = std::move(arr).value();
    return out;
  }
  for (const std::string& item : SplitCommas(spec)) {
    auto v = ParseInteger(item, what);
    if (!v.ok()) return v.status();
    out.inline_values.push_back(*v);
  }
  out.type = IndexType::kInt64;
  out.shape = {static_cast<int64_t>(out.inline_values.size())};
  return out;
}

Result<FloatArray> ParseFloatSpec(const std::string& spec, const std::string& what) {
  FloatArray out;
  if (!spec.empty() && spec[0] == '@') {
    const std::string path = spec.substr(1);
    auto arr = LoadSpecNpy(path);
    if (!arr.ok()) return arr.status().WithContext(what);
    const storage::NpyHeader& h = arr->header;
    if (h.kind != 'f' || (h.item_size != 4 && h.item_size != 8)) {
      return Status::InvalidArgument(what + ": '" + path + "' has dtype " + h.DTypeName() +
                                     "; weights must be float32 (or float64)");
    }
    if (h.shape.size() > 2 || h.shape.empty()) {
      return Status::InvalidArgument(what + ": '" + path + "' must be 1-D or 2-D");
    }
    out.shape = h.shape;
    if (h.item_size == 4) {
      out.file = std::move(arr).value();
    } else {
      const size_t n = arr->data.size() / 8;
      out.converted.resize(n);
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, arr->data.data() + 8 * i, 8);
        out.converted[i] = static_cast<float>(d);
        if (std::isfinite(d) && std::isinf(out.converted[i])) {
          return Status::InvalidArgument(what + ": '" + path + "' holds " + std::to_string(d) +
                                         " at flat position " + std::to_string(i) +
                                         ", outside the float32 range the weights are used in");
        }
      }
    }
    return out;
  }
  for (const std::string& item : SplitCommas(spec)) {
    auto v = ParseNumber(item, what);
    if (!v.ok()) return v.status();
    const auto f = static_cast<float>(*v);
    if (std::isfinite(*v) && std::isinf(f)) {
      return Status::InvalidArgument(what + ": '" + item +
                                     "' is outside the float32 range the weights are used in");
    }
    out.converted.push_back(f);
  }
  out.shape = {static_cast<int64_t>(out.converted.size())};
  return out;
}

std::vector<std::string> JoinNegativeValues(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() > 2 && a.rfind("--", 0) == 0 && a.find('=') == std::string::npos &&
        i + 1 < args.size()) {
      const std::string& next = args[i + 1];
      const bool negative_number =
          next.size() >= 2 && next[0] == '-' &&
          (std::isdigit(static_cast<unsigned char>(next[1])) || next[1] == '.' || next == "-inf");
      if (negative_number) {
        out.push_back(a + "=" + next);
        ++i;
        continue;
      }
    }
    out.push_back(a);
  }
  return out;
}

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)),
      enabled_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

ProgressBar::~ProgressBar() {
  if (drawn_) std::fputc('\n', stderr);
}

void ProgressBar::Update(int64_t done, int64_t total) {
  if (!enabled_ || total <= 0) return;
  auto now = std::chrono::steady_clock::now();
  if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  const double frac = static_cast<double>(done) / static_cast<double>(total);
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double eta = frac > 0 ? elapsed * (1 - frac) / frac : 0;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), ' ');
  std::fprintf(stderr, "\r%s [%s] %3d%%  %lld/%lld rows  ETA %.0fs ", label_.c_str(), bar.c_str(),
               static_cast<int>(frac * 100), static_cast<long long>(done),
               static_cast<long long>(total), eta);
  std::fflush(stderr);
  drawn_ = true;
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

namespace {

// realpath(3) as a string; "" when `p` cannot be resolved.
std::string RealPath(const std::string& p) {
  char* real = ::realpath(p.c_str(), nullptr);
  if (real == nullptr) return "";
  std::string out = real;
  std::free(real);  // NOLINT(cppcoreguidelines-no-malloc): realpath's buffer
  return out;
}

}  // namespace

Status CheckOutputOutsideStore(const std::string& db, const std::string& out) {
  if (out.empty()) return Status::InvalidArgument("--out must name a file");
  const std::string store = RealPath(db);
  if (store.empty()) return Status::OK();  // no store there: nothing to protect
  const std::string refuse = "--out '" + out + "' is inside the store '" + db +
                             "'; writing there would corrupt it (write the file elsewhere)";
  // The file an existing path leads to, or the resolved directory it would
  // be created in.
  std::string resolved = RealPath(out);
  if (resolved.empty()) {
    const size_t slash = out.find_last_of('/');
    const std::string parent = slash == std::string::npos ? "." : out.substr(0, slash + 1);
    const std::string dir = RealPath(parent);
    if (dir.empty()) return Status::OK();  // the write reports the missing directory
    resolved = dir + "/" + out.substr(slash == std::string::npos ? 0 : slash + 1);
  }
  // Inside: the store directory is the path or one of its ancestors, compared
  // by device and inode (a bind mount or another spelling of it counts).
  struct stat store_st {};
  if (::stat(store.c_str(), &store_st) == 0) {
    for (std::string p = resolved;;) {
      struct stat st {};
      if (::stat(p.c_str(), &st) == 0 && st.st_dev == store_st.st_dev &&
          st.st_ino == store_st.st_ino) {
        return Status::InvalidArgument(refuse);
      }
      const size_t slash = p.find_last_of('/');
      if (slash == std::string::npos || p == "/") break;
      p = slash == 0 ? "/" : p.substr(0, slash);
    }
  }
  // A hard link elsewhere to one of the store's files.
  struct stat st {};
  if (::stat(out.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink > 1) {
    for (const std::string& sub : {std::string(), std::string("/tables")}) {
      DIR* d = ::opendir((store + sub).c_str());
      if (d == nullptr) continue;
      bool same = false;
      while (dirent* e = ::readdir(d)) {
        struct stat other {};
        const std::string p = store + sub + "/" + e->d_name;
        if (::lstat(p.c_str(), &other) == 0 && other.st_dev == st.st_dev &&
            other.st_ino == st.st_ino) {
          same = true;
        }
      }
      ::closedir(d);
      if (same) {
        return Status::InvalidArgument("--out '" + out +
                                       "' is a hard link to a file of the store '" + db +
                                       "'; writing there would corrupt it");
      }
    }
  }
  return Status::OK();
}

std::string DisplayKey(const std::string& key) {
  bool plain = !key.empty() && key.front() != '"';
  // '=' is quoted too: --tensor KEY=TABLE splits at the last '='.
  for (unsigned char c : key) plain &= c >= 0x20 && c != 0x7f && c != '\\' && c != '=';
  if (plain) return key;
  std::string out = "\"";
  for (unsigned char c : key) {
    switch (c) {
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

Result<std::string> ParseKeyArgument(const std::string& arg) {
  if (arg.size() < 2 || arg.front() != '"' || arg.back() != '"') return arg;
  std::string out;
  auto bad = [&] {
    return Status::InvalidArgument("--tensor " + arg +
                                   ": a quoted key takes the escapes \\t \\n \\r \\\\ \\\" \\xHH");
  };
  for (size_t i = 1; i + 1 < arg.size(); ++i) {
    if (arg[i] != '\\') {
      out += arg[i];
      continue;
    }
    if (i + 2 >= arg.size()) return bad();
    const char e = arg[++i];
    if (e == 't')
      out += '\t';
    else if (e == 'n')
      out += '\n';
    else if (e == 'r')
      out += '\r';
    else if (e == '\\' || e == '"')
      out += e;
    else if (e == 'x' && i + 3 < arg.size() &&
             std::isxdigit(static_cast<unsigned char>(arg[i + 1])) &&
             std::isxdigit(static_cast<unsigned char>(arg[i + 2]))) {
      out += static_cast<char>(std::stoi(arg.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      return bad();
    }
  }
  return out;
}

}  // namespace embstore::cli
