// Command lines of the apps: short and long options, help text from the
// descriptions, defaults shown in the help, checked choices. A thin layer over
// CLI11, which Debian ships header-only (2.1.2, no compiled mode) and which
// costs ~10 s of code generation in every file that uses it: cli.cc is the one
// translation unit that includes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace meshrt::apps {

class CommandLine {
 public:
  // description: the first lines of --help.
  explicit CommandLine(const std::string& description);
  ~CommandLine();
  CommandLine(const CommandLine&) = delete;
  CommandLine& operator=(const CommandLine&) = delete;

  // One option as given to add()/flag(), for the settings that follow.
  class Option {
   public:
    // Shows the variable's value at the time of the call as "[default]" in --help.
    Option& show_default();
    Option& required();
    // Refuses any value but these.
    Option& one_of(const std::vector<std::string>& choices);
    // Whether the command line gave it (after parse()).
    bool given() const;

   private:
    friend class CommandLine;
    explicit Option(CLI::Option* option) : option_(option) {}
    CLI::Option* option_;
  };

  // names: "-b,--minbytes" or "--model"; the value is written when given.
  Option add(const std::string& names, std::string& value, const std::string& help);
  Option add(const std::string& names, std::vector<std::string>& values, const std::string& help);
  Option add(const std::string& names, int& value, const std::string& help);
  Option add(const std::string& names, int64_t& value, const std::string& help);
  Option add(const std::string& names, uint16_t& value, const std::string& help);
  Option add(const std::string& names, size_t& value, const std::string& help);
  Option add(const std::string& names, float& value, const std::string& help);
  Option add(const std::string& names, double& value, const std::string& help);
  // A boolean that takes a value (Triton's style: "--log-info false", "--log-info=0";
  // true/false, 1/0, on/off, yes/no).
  Option add(const std::string& names, bool& value, const std::string& help);
  Option flag(const std::string& names, bool& value, const std::string& help);

  // Lets parse() accept options it does not know: they are kept, in order, for extras().
  void allow_extras();
  // What parse() did not know (after allow_extras()), e.g. {"--model", "m", "--batching=off"}.
  std::vector<std::string> extras() const;

  // Parses the command line. Returns nothing when the program should go on, or
  // the exit code when it should stop: 0 after --help, 2 after a bad command
  // line (an unknown option, a bad value, a missing required one: the usage
  // error code of sysexits' tradition and of the apps' own argument checks).
  // Help, and errors with a hint to --help, are printed unless quiet (ranks
  // other than 0 of an MPI job).
  std::optional<int> parse(int argc, char** argv, bool quiet = false);

 private:
  std::unique_ptr<CLI::App> app_;
};

}  // namespace meshrt::apps
