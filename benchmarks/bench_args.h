// The benchmark drivers' command lines: `PROGRAM COMMAND --key value --flag
// ...` (side_by_side_bench, serve_bench). A bad or missing argument ends the
// program with exit code 2 and a message naming it.
#ifndef EMBSTORE_BENCHMARKS_BENCH_ARGS_H_
#define EMBSTORE_BENCHMARKS_BENCH_ARGS_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

namespace embstore::bench {

// The program's name in messages (set by main before parsing).
inline const char*& ProgramName() {
  static const char* name = "bench";
  return name;
}

[[noreturn]] inline void Die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", ProgramName(), what.c_str());
  std::exit(2);
}

// --key value / --flag arguments after the command (argv[1]).
class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 2; i < argc; ++i) {
      std::string k = argv[i];
      if (k.rfind("--", 0) != 0) Die("unexpected argument " + k);
      k = k.substr(2);
      if (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0) {
        values_[k] = argv[++i];
      } else {
        values_[k] = "";
      }
    }
  }
  bool Has(const std::string& k) const { return values_.count(k) > 0; }
  std::string Str(const std::string& k, const std::string& def = "") const {
    auto it = values_.find(k);
    return it == values_.end() ? def : it->second;
  }
  std::string Need(const std::string& k) const {
    if (!Has(k)) Die("--" + k + " is required");
    return Str(k);
  }
  int64_t Int(const std::string& k, int64_t def) const { return Has(k) ? std::stoll(Str(k)) : def; }
  double Num(const std::string& k, double def) const { return Has(k) ? std::stod(Str(k)) : def; }

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace embstore::bench

#endif  // EMBSTORE_BENCHMARKS_BENCH_ARGS_H_
