// The commands of the embstore CLI: one class per command (tools/commands/),
// over a shared base that declares and parses options, checks the ones every
// command has in common, and opens the store.
//
// A command's life: the constructor declares its options (in the order its
// --help lists them); Main() parses argv, prints --help, refuses unknown,
// repeated and missing required options and bad writer options (all exit 1,
// "embstore CMD: error: ... (see `embstore CMD --help`)"), then calls Run().
#ifndef EMBSTORE_TOOLS_COMMAND_H_
#define EMBSTORE_TOOLS_COMMAND_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "embstore/status.h"
#include "embstore/store.h"
#include "tools/cli_util.h"

namespace embstore::cli {

class Command {
 public:
  // `name`: as typed after `embstore`; `summary`: its line in `embstore
  // --help`; `description`: the text atop `embstore NAME --help`.
  Command(std::string name, std::string summary, const std::string& description);
  virtual ~Command();
  Command(const Command&) = delete;
  Command& operator=(const Command&) = delete;

  const std::string& name() const { return name_; }
  const std::string& summary() const { return summary_; }

  // Parses argv (argv[0] is the command's name) and runs the command; returns
  // the exit code.
  int Main(int argc, char** argv);

 protected:
  // Whether an option is refused when absent ("--NAME is required"), checked
  // after parsing in the order the options were declared.
  enum class Need { kOptional, kRequired };

  // ---- Declaring options (constructor only) ----
  // An option taking a string value (parsed by the command).
  void AddValue(const std::string& name, const std::string& help, Need need = Need::kOptional);
  // A string option with a default (--help shows it).
  void AddValueWithDefault(const std::string& name, const std::string& help,
                           const std::string& default_value);
  // Integer options, read with Int() / Int64() (the parser refuses other
  // text).
  void AddInt(const std::string& name, const std::string& help, const std::string& default_value);
  void AddInt64(const std::string& name, const std::string& help);
  // A boolean flag: --name or --name=true sets it, --name=false leaves it off.
  void AddFlag(const std::string& name, const std::string& help);
  // A string option that may be given several times (every other option
  // given twice is refused: it would silently keep its last value).
  void AddRepeatable(const std::string& name, const std::string& help);
  // A positional argument (`help_word` names it in the usage line).
  void AddPositional(const std::string& name, const std::string& help,
                     const std::string& help_word);
  // The options of every command that writes a store, --lock-wait and
  // --keep-versions; read into store_options() before Run().
  void AddWriterOptions();

  // ---- Reading options (Run only) ----
  bool Has(const std::string& name) const;    // given (a default does not count)
  bool IsSet(const std::string& name) const;  // a flag given and not =false
  std::string Str(const std::string& name) const;
  std::vector<std::string> Strings(const std::string& name) const;  // a repeatable option
  int Int(const std::string& name) const;
  int64_t Int64(const std::string& name) const;
  // An option's value as a number ("inf" allowed) or an integer; errors name
  // the flag.
  Result<double> Number(const std::string& name) const;
  Result<int64_t> Integer(const std::string& name) const;
  // An optional SPEC option (see ParseIntSpec, ParseFloatSpec); nullopt when
  // it is absent.
  Result<std::optional<IntArray>> IntSpec(const std::string& name) const;
  Result<std::optional<FloatArray>> FloatSpec(const std::string& name) const;

  // Runs the command once the options are parsed and checked.
  virtual int Run() = 0;

  // Prints "embstore CMD: error: MESSAGE" and returns the exit code for `st`.
  int Fail(const Status& st) const;
  // Prints the usage error "embstore CMD: error: MESSAGE (see `embstore CMD
  // --help`)" and returns kExitUsage.
  int Usage(const std::string& message) const;

  // OK when the command has no --out or it names a path outside the store
  // `db` (see CheckOutputOutsideStore).
  Status CheckOutOption(const std::string& db) const;
  // Opens the store at `db` with store_options(); the library's "no store"
  // message gets the CLI's advice (how to create one).
  Result<std::unique_ptr<Store>> OpenStore(const std::string& db, bool create) const;
  // The writer options given (defaults for commands that only read).
  const StoreOptions& store_options() const { return store_options_; }

 private:
  // The checks of Main() after parsing; nullopt to go on to Run().
  std::optional<int> CheckParsed();
  std::optional<int> ReadWriterOptions();

  struct Parser;  // the cxxopts declarations and parse result (command.cc)

  std::string name_;
  std::string summary_;
  std::unique_ptr<Parser> parser_;
  std::vector<std::string> required_;  // in declaration order
  bool writer_ = false;
  StoreOptions store_options_;
};

}  // namespace embstore::cli

#endif  // EMBSTORE_TOOLS_COMMAND_H_
