// Parsing JSON from outside (safetensors
// headers, checkpoint indexes, model configs, HTTP bodies) with a nesting limit,
// and quoting parts of it in error messages safely. nlohmann's parser is
// iterative but dump() recurses once per level, so an unbounded depth would let
// a small input overflow the stack when quoted; and input bytes that are not
// UTF-8 would make dump() throw.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>

namespace meshrt::io::json_limits {

inline constexpr int kMaxDepth = 64;

// Parses text; throws nlohmann::json::exception on bad JSON, and
// std::length_error when it nests deeper than max_depth.
inline nlohmann::json parse(std::string_view text, int max_depth = kMaxDepth) {
  nlohmann::json::parser_callback_t limit = [max_depth](int depth, nlohmann::json::parse_event_t event,
                                                        nlohmann::json&) {
    if ((event == nlohmann::json::parse_event_t::object_start || event == nlohmann::json::parse_event_t::array_start) &&
        depth >= max_depth) {
      throw std::length_error("JSON nested deeper than " + std::to_string(max_depth) + " levels");
    }
    return true;
  };
  return nlohmann::json::parse(text.begin(), text.end(), limit);
}

// JSON text that never throws (bad UTF-8 replaced).
inline std::string dump(const nlohmann::json& v) {
  return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// A value from outside, for an error message: short, safe.
inline std::string brief(const nlohmann::json& v) {
  std::string text = dump(v);
  return text.size() > 60 ? text.substr(0, 57) + "..." : text;
}

}  // namespace meshrt::io::json_limits
