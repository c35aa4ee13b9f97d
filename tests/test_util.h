// Shared helpers for embstore tests: temp dirs, small .npy files, running the CLI.
#ifndef EMBSTORE_TESTS_TEST_UTIL_H_
#define EMBSTORE_TESTS_TEST_UTIL_H_

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/npy.h"

namespace embstore::testing {

// A fresh directory removed at scope exit.
class TempDir {
 public:
  TempDir() : TempDir(std::filesystem::temp_directory_path().string()) {}
  // A fresh directory inside `base` (absolute path kept).
  explicit TempDir(const std::string& base) {
    std::string tmpl = (std::filesystem::absolute(base) / "embstore-test-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    path_ = ::mkdtemp(buf.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

inline void WriteF32Npy(const std::string& path, const std::vector<int64_t>& shape,
                        const std::vector<float>& v) {
  auto st = storage::WriteNpy(
      path, "<f4", shape, {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)});
  if (!st.ok()) std::abort();
}

inline std::vector<float> ReadF32Npy(const std::string& path,
                                     std::vector<int64_t>* shape = nullptr) {
  auto a = storage::LoadNpy(path);
  if (!a.ok() || a->header.descr != "<f4") return {};
  if (shape) *shape = a->header.shape;
  std::vector<float> v(a->data.size() / 4);
  if (!v.empty()) std::memcpy(v.data(), a->data.data(), a->data.size());
  return v;
}

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// How a child is set up before it runs the CLI.
struct CliSetup {
  std::string stdout_path;  // default: captured into CommandResult::out
  // Symbolic links (name -> target) the child makes before it runs the CLI;
  // "{pid}" in a name is the child's pid, the pid the CLI runs with.
  std::vector<std::pair<std::string, std::string>> links;
  rlim_t file_size_limit = RLIM_INFINITY;      // RLIMIT_FSIZE
  rlim_t address_space_limit = RLIM_INFINITY;  // RLIMIT_AS
};

// Runs `embstore` (path from the EMBSTORE_CLI compile definition) with args
// in a child set up as `setup`, capturing stdout and stderr.
inline CommandResult RunCliWith(const std::vector<std::string>& args, const CliSetup& setup) {
  static std::atomic<int> counter{0};
  std::string base =
      (std::filesystem::temp_directory_path() /
       ("embstore-cli-" + std::to_string(::getpid()) + "-" + std::to_string(counter++)))
          .string();
  std::fflush(nullptr);  // a child must not write out our buffered output again
  pid_t pid = ::fork();
  if (pid == 0) {
    for (const auto& [name, target] : setup.links) {
      std::string n = name;
      const size_t at = n.find("{pid}");
      if (at != std::string::npos) n.replace(at, 5, std::to_string(::getpid()));
      if (::symlink(target.c_str(), n.c_str()) != 0) _exit(126);
    }
    const std::string out = setup.stdout_path.empty() ? base + ".out" : setup.stdout_path;
    if (!std::freopen(out.c_str(), "w", stdout)) _exit(125);
    if (!std::freopen((base + ".err").c_str(), "w", stderr)) _exit(125);
    if (setup.file_size_limit != RLIM_INFINITY) {
      rlimit l{setup.file_size_limit, setup.file_size_limit};
      ::setrlimit(RLIMIT_FSIZE, &l);
    }
    if (setup.address_space_limit != RLIM_INFINITY) {
      rlimit l{setup.address_space_limit, setup.address_space_limit};
      ::setrlimit(RLIMIT_AS, &l);
    }
    std::vector<char*> argv;
    std::string exe = EMBSTORE_CLI;
    argv.push_back(exe.data());
    std::vector<std::string> copy = args;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (setup.stdout_path.empty()) r.out = ReadBytes(base + ".out");
  r.err = ReadBytes(base + ".err");
  std::filesystem::remove(base + ".out");
  std::filesystem::remove(base + ".err");
  return r;
}

// Runs `embstore` with args, capturing stdout and stderr.
inline CommandResult RunCli(const std::vector<std::string>& args) {
  return RunCliWith(args, CliSetup());
}

}  // namespace embstore::testing

#endif  // EMBSTORE_TESTS_TEST_UTIL_H_
