// The one file that compiles CLI11 (see cli.h).
#include "apps/cli.h"

#include <CLI/CLI.hpp>
#include <cstdio>

namespace meshrt::apps {

CommandLine::CommandLine(const std::string& description) : app_(std::make_unique<CLI::App>(description)) {}
CommandLine::~CommandLine() = default;

CommandLine::Option& CommandLine::Option::show_default() {
  option_->capture_default_str();
  return *this;
}

CommandLine::Option& CommandLine::Option::required() {
  option_->required();
  return *this;
}

CommandLine::Option& CommandLine::Option::one_of(const std::vector<std::string>& choices) {
  option_->check(CLI::IsMember(choices));
  return *this;
}

bool CommandLine::Option::given() const { return option_->count() > 0; }

#define MESHRT_CLI_ADD(Type)                                                                       \
  CommandLine::Option CommandLine::add(const std::string& names, Type& value, const std::string& help) { \
    return Option(app_->add_option(names, value, help));                                           \
  }
MESHRT_CLI_ADD(std::string)
MESHRT_CLI_ADD(std::vector<std::string>)
MESHRT_CLI_ADD(int)
MESHRT_CLI_ADD(int64_t)
MESHRT_CLI_ADD(uint16_t)
MESHRT_CLI_ADD(size_t)
MESHRT_CLI_ADD(float)
MESHRT_CLI_ADD(double)
MESHRT_CLI_ADD(bool)
#undef MESHRT_CLI_ADD

CommandLine::Option CommandLine::flag(const std::string& names, bool& value, const std::string& help) {
  return Option(app_->add_flag(names, value, help));
}

void CommandLine::allow_extras() { app_->allow_extras(); }

std::vector<std::string> CommandLine::extras() const { return app_->remaining(); }

std::optional<int> CommandLine::parse(int argc, char** argv, bool quiet) {
  try {
    app_->parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::ParseError& e) {
    // CLI11's own codes (105 for a bad value, 106 for a missing option, 109
    // for an unknown one) become 2, as every rank of a job returns alike.
    int code = e.get_exit_code() == 0 ? 0 : 2;
    if (!quiet) app_->exit(e);  // prints the help, or the error and "Run with --help for more information."
    return code;
  }
}

}  // namespace meshrt::apps
