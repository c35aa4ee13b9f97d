#include "tools/command.h"

#include <chrono>
#include <cstdio>
#include <cxxopts.hpp>
#include <iostream>
#include <map>
#include <set>

namespace embstore::cli {

// Kept out of command.h: only this file compiles cxxopts.
struct Command::Parser {
  explicit Parser(const std::string& program, const std::string& description)
      : options(program, description) {}
  cxxopts::Options options;
  std::set<std::string> repeatable;
  std::optional<cxxopts::ParseResult> result;
};

Command::Command(std::string name, std::string summary, const std::string& description)
    : name_(std::move(name)),
      summary_(std::move(summary)),
      parser_(std::make_unique<Parser>("embstore " + name_, description)) {}

Command::~Command() = default;

void Command::AddValue(const std::string& name, const std::string& help, Need need) {
  parser_->options.add_options()(name, help, cxxopts::value<std::string>());
  if (need == Need::kRequired) required_.push_back(name);
}

void Command::AddValueWithDefault(const std::string& name, const std::string& help,
                                  const std::string& default_value) {
  parser_->options.add_options()(name, help,
                                 cxxopts::value<std::string>()->default_value(default_value));
}

void Command::AddInt(const std::string& name, const std::string& help,
                     const std::string& default_value) {
  parser_->options.add_options()(name, help, cxxopts::value<int>()->default_value(default_value));
}

void Command::AddInt64(const std::string& name, const std::string& help) {
  parser_->options.add_options()(name, help, cxxopts::value<int64_t>());
}

void Command::AddFlag(const std::string& name, const std::string& help) {
  parser_->options.add_options()(name, help);
}

void Command::AddRepeatable(const std::string& name, const std::string& help) {
  parser_->options.add_options()(name, help, cxxopts::value<std::vector<std::string>>());
  parser_->repeatable.insert(name);
}

void Command::AddPositional(const std::string& name, const std::string& help,
                            const std::string& help_word) {
  parser_->options.add_options()(name, help, cxxopts::value<std::string>());
  parser_->options.parse_positional({name});
  parser_->options.positional_help(help_word);
}

void Command::AddWriterOptions() {
  AddValue("lock-wait", "Seconds to wait for another process's write to end (default 5)");
  AddValue("keep-versions", "Earlier versions of each table to keep for rollback (default 1)");
  writer_ = true;
}

bool Command::Has(const std::string& name) const { return parser_->result->count(name) > 0; }

bool Command::IsSet(const std::string& name) const {
  return Has(name) && (*parser_->result)[name].as<bool>();
}

std::string Command::Str(const std::string& name) const {
  return (*parser_->result)[name].as<std::string>();
}

std::vector<std::string> Command::Strings(const std::string& name) const {
  return (*parser_->result)[name].as<std::vector<std::string>>();
}

int Command::Int(const std::string& name) const { return (*parser_->result)[name].as<int>(); }

int64_t Command::Int64(const std::string& name) const {
  return (*parser_->result)[name].as<int64_t>();
}

Result<double> Command::Number(const std::string& name) const {
  return ParseNumber(Str(name), "--" + name);
}

Result<int64_t> Command::Integer(const std::string& name) const {
  return ParseInteger(Str(name), "--" + name);
}

Result<std::optional<IntArray>> Command::IntSpec(const std::string& name) const {
  if (!Has(name)) return std::optional<IntArray>();
  EMBSTORE_ASSIGN_OR_RETURN(IntArray a, ParseIntSpec(Str(name), "--" + name));
  return std::optional<IntArray>(std::move(a));
}

Result<std::optional<FloatArray>> Command::FloatSpec(const std::string& name) const {
  if (!Has(name)) return std::optional<FloatArray>();
  EMBSTORE_ASSIGN_OR_RETURN(FloatArray a, ParseFloatSpec(Str(name), "--" + name));
  return std::optional<FloatArray>(std::move(a));
}

int Command::Fail(const Status& st) const {
  std::fprintf(stderr, "embstore %s: error: %s\n", name_.c_str(), st.message().c_str());
  return ExitCodeFor(st);
}

int Command::Usage(const std::string& message) const {
  std::fprintf(stderr, "embstore %s: error: %s (see `embstore %s --help`)\n", name_.c_str(),
               message.c_str(), name_.c_str());
  return kExitUsage;
}

Status Command::CheckOutOption(const std::string& db) const {
  return Has("out") ? CheckOutputOutsideStore(db, Str("out")) : Status::OK();
}

Result<std::unique_ptr<Store>> Command::OpenStore(const std::string& db, bool create) const {
  StoreOptions o = store_options_;
  o.create_if_missing = create;
  auto store = Store::Open(db, o);
  if (!store.ok() && store.status().code() == Status::Code::kNotFound &&
      store.status().message().rfind("no embstore store", 0) == 0) {
    // The library's message speaks of the library; this is the CLI's advice.
    return Status::NotFound("no embstore store at '" + db +
                            "' (create one with `embstore init --db " + db +
                            "` or by importing a table)");
  }
  return store;
}

int Command::Main(int argc, char** argv) {
  parser_->options.add_options()("h,help", "Show this help");
  std::vector<std::string> args = JoinNegativeValues(std::vector<std::string>(argv, argv + argc));
  std::vector<char*> ptrs;
  for (std::string& a : args) ptrs.push_back(a.data());
  try {
    parser_->result = parser_->options.parse(static_cast<int>(ptrs.size()), ptrs.data());
  } catch (const cxxopts::exceptions::exception& e) {
    return Usage(e.what());
  }
  if (Has("help")) {
    std::cout << parser_->options.help() << std::endl;
    return kExitOk;
  }
  if (std::optional<int> stop = CheckParsed()) return *stop;
  return Run();
}

std::optional<int> Command::CheckParsed() {
  const cxxopts::ParseResult& result = *parser_->result;
  if (!result.unmatched().empty()) {
    return Usage("unexpected argument '" + result.unmatched()[0] + "'");
  }
  std::map<std::string, int> seen;
  for (const cxxopts::KeyValue& kv : result.arguments()) {
    if (!parser_->repeatable.contains(kv.key()) && ++seen[kv.key()] == 2) {
      return Usage("--" + kv.key() + " is given more than once");
    }
  }
  for (const std::string& name : required_) {
    if (!Has(name)) return Usage("--" + name + " is required");
  }
  return writer_ ? ReadWriterOptions() : std::nullopt;
}

std::optional<int> Command::ReadWriterOptions() {
  if (Has("lock-wait")) {
    auto secs = Number("lock-wait");
    if (!secs.ok() || !(*secs >= 0) || *secs > 86400) {
      return Usage("--lock-wait must be a number of seconds from 0 to 86400");
    }
    store_options_.writer_wait =
        std::chrono::milliseconds(static_cast<int64_t>(*secs * 1000 + 0.5));
  }
  if (Has("keep-versions")) {
    auto n = Integer("keep-versions");
    if (!n.ok() || *n < 0 || *n > 1000000) {
      return Usage("--keep-versions must be an integer from 0 to 1000000");
    }
    store_options_.retain_versions = static_cast<int>(*n);
  }
  return std::nullopt;
}

}  // namespace embstore::cli
