// Log lines of meshrt's programs: levels (info, warning, error, and verbose
// lines of a level 1, 2, ...), on stderr, in one of two formats:
//
//   default: "<program>: <message>", warnings "<program>: warning: <message>",
//            errors "<program>: error: <message>" (the lines meshrt-serve has
//            always printed, which operators and tests grep);
//   json:    one object per line, for log collectors:
//            {"time": "2024-05-01T12:00:00.123Z", "level": "info", "rank": 0, "message": "..."}
//            (time in UTC, ISO 8601 with milliseconds; level info, warning,
//            error or verbose; rank only when known; the message escaped, bytes
//            that are not UTF-8 replaced by U+FFFD).
//
// A facade over spdlog (a private dependency: this header exposes neither
// spdlog nor fmt). Thread-safe; each line is written whole and flushed.
// Programs call configure() once, early (meshrt-serve's --log-verbose,
// --log-format, --log-info/--log-warning/--log-error).
#pragma once

#include <string>
#include <string_view>

namespace meshrt::log {

struct Options {
  std::string program = "meshrt";  // the prefix of the default format
  std::string format = "default";  // "default" or "json"
  int verbose_level = 0;           // verbose(level, ...) lines print when level <= verbose_level
  bool info = true, warning = true, error = true;
  int rank = -1;                   // the MPI rank in JSON lines; -1: unknown (omitted)
};

// Replaces the options; throws Error(kInvalidArgument) for an unknown format or
// a negative verbose level (nothing changes then).
void configure(const Options& options);
Options options();

void info(std::string_view message);
void warn(std::string_view message);
void error(std::string_view message);
// Printed when level <= the verbose level (level >= 1).
void verbose(int level, std::string_view message);
// Whether verbose(level, ...) prints: to skip building a message nobody sees.
bool verbose_enabled(int level);

// A JSON string literal of text (quotes included): ", \ and control characters
// escaped, bytes that are not UTF-8 replaced by U+FFFD.
std::string json_string(std::string_view text);

}  // namespace meshrt::log
