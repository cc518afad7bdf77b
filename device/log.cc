#include "device/log.h"

#include <spdlog/formatter.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>

#include "device/error.h"

namespace meshrt::log {

namespace {

// The length of the valid UTF-8 sequence at text[at] (1-4), or 0 when the
// bytes there are not one (a stray continuation byte, a truncated sequence, an
// overlong form, a surrogate, beyond U+10FFFF).
size_t utf8_sequence(std::string_view text, size_t at) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  unsigned char b = byte(at);
  if (b < 0x80) return 1;
  size_t n = 0;
  unsigned char low = 0x80, high = 0xBF;  // the allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) low = 0xA0;   // overlong
    if (b == 0xED) high = 0x9F;  // surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) low = 0x90;   // overlong
    if (b == 0xF4) high = 0x8F;  // beyond U+10FFFF
  } else {
    return 0;
  }
  if (at + n > text.size()) return 0;
  if (byte(at + 1) < low || byte(at + 1) > high) return 0;
  for (size_t i = 2; i < n; ++i) {
    if (byte(at + i) < 0x80 || byte(at + i) > 0xBF) return 0;
  }
  return n;
}

const char* level_name(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::warn: return "warning";
    case spdlog::level::err: return "error";
    case spdlog::level::debug: return "verbose";
    default: return "info";
  }
}

void append(spdlog::memory_buf_t& dest, std::string_view text) { dest.append(text.data(), text.data() + text.size()); }

// "<program>: [warning: |error: ]<message>"
class DefaultFormatter : public spdlog::formatter {
 public:
  explicit DefaultFormatter(std::string program) : program_(std::move(program)) {}
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    append(dest, program_);
    append(dest, ": ");
    if (msg.level == spdlog::level::warn) append(dest, "warning: ");
    if (msg.level == spdlog::level::err) append(dest, "error: ");
    append(dest, std::string_view(msg.payload.data(), msg.payload.size()));
    append(dest, "\n");
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<DefaultFormatter>(program_); }

 private:
  std::string program_;
};

// {"time": ..., "level": ..., "rank": ..., "message": ...} on one line.
class JsonFormatter : public spdlog::formatter {
 public:
  explicit JsonFormatter(int rank) : rank_(rank) {}
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    auto since_epoch = msg.time.time_since_epoch();
    std::time_t seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
    auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count() % 1000;
    std::tm utc{};
    ::gmtime_r(&seconds, &utc);
    char time[64];
    std::snprintf(time, sizeof time, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                  utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(millis));
    append(dest, "{\"time\": \"");
    append(dest, time);
    append(dest, "\", \"level\": \"");
    append(dest, level_name(msg.level));
    append(dest, "\"");
    if (rank_ >= 0) {
      append(dest, ", \"rank\": ");
      append(dest, std::to_string(rank_));
    }
    append(dest, ", \"message\": ");
    append(dest, json_string(std::string_view(msg.payload.data(), msg.payload.size())));
    append(dest, "}\n");
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(rank_); }

 private:
  int rank_;
};

struct State {
  std::mutex mutex;  // options and the formatter change together
  Options options;
  // Read on every call without the lock.
  std::atomic<bool> info{true}, warning{true}, error{true};
  std::atomic<int> verbose_level{0};
  std::shared_ptr<spdlog::logger> logger;

  State() {
    // Not registered with spdlog's registry: a program using spdlog itself keeps its own names.
    logger = std::make_shared<spdlog::logger>("meshrt", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger->set_level(spdlog::level::debug);  // the facade filters
    logger->set_formatter(std::make_unique<DefaultFormatter>(options.program));
  }
};

State& state() {
  static State* s = new State();  // never destroyed: threads may log during static destruction
  return *s;
}

void write(spdlog::level::level_enum level, std::string_view message) {
  state().logger->log(level, spdlog::string_view_t(message.data(), message.size()));
}

}  // namespace

void configure(const Options& o) {
  MESHRT_CHECK_ARG(o.format == "default" || o.format == "json", "log format '", o.format,
                   "' is not one of default, json");
  MESHRT_CHECK_ARG(o.verbose_level >= 0, "the verbose level must not be negative, got ", o.verbose_level);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.options = o;
  s.info = o.info;
  s.warning = o.warning;
  s.error = o.error;
  s.verbose_level = o.verbose_level;
  if (o.format == "json") {
    s.logger->set_formatter(std::make_unique<JsonFormatter>(o.rank));
  } else {
    s.logger->set_formatter(std::make_unique<DefaultFormatter>(o.program));
  }
}

Options options() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.options;
}

void info(std::string_view message) {
  if (state().info.load(std::memory_order_relaxed)) write(spdlog::level::info, message);
}

void warn(std::string_view message) {
  if (state().warning.load(std::memory_order_relaxed)) write(spdlog::level::warn, message);
}

void error(std::string_view message) {
  if (state().error.load(std::memory_order_relaxed)) write(spdlog::level::err, message);
}

bool verbose_enabled(int level) { return level >= 1 && level <= state().verbose_level.load(std::memory_order_relaxed); }

void verbose(int level, std::string_view message) {
  if (verbose_enabled(level)) write(spdlog::level::debug, message);
}

std::string json_string(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    size_t n = utf8_sequence(text, i);
    if (n == 0) {
      out += "\\ufffd";
      ++i;
      continue;
    }
    if (n > 1) {
      out.append(text.substr(i, n));
      i += n;
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
  return out;
}

}  // namespace meshrt::log
