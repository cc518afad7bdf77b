#include "models/byte_level.h"

#include <unordered_map>

namespace meshrt::models::byte_level {

namespace {

bool printable(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

struct Alphabet {
  std::array<char32_t, 256> chars{};
  std::array<std::string, 256> utf8;
  std::array<uint8_t, 256> order{};
  std::unordered_map<char32_t, uint8_t> bytes;

  Alphabet() {
    int n = 0, k = 0;
    for (int b = 0; b < 256; ++b) {
      if (printable(b)) order[static_cast<size_t>(k++)] = static_cast<uint8_t>(b);
    }
    for (int b = 0; b < 256; ++b) {
      chars[static_cast<size_t>(b)] = printable(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      if (!printable(b)) order[static_cast<size_t>(k++)] = static_cast<uint8_t>(b);
      utf8::append(utf8[static_cast<size_t>(b)], chars[static_cast<size_t>(b)]);
      bytes[chars[static_cast<size_t>(b)]] = static_cast<uint8_t>(b);
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet a;
  return a;
}

}  // namespace

char32_t char_of_byte(uint8_t byte) { return alphabet().chars[byte]; }
const std::string& utf8_of_byte(uint8_t byte) { return alphabet().utf8[byte]; }
const std::array<uint8_t, 256>& vocab_order() { return alphabet().order; }

std::optional<uint8_t> byte_of_char(char32_t c) {
  const auto& bytes = alphabet().bytes;
  auto it = bytes.find(c);
  if (it == bytes.end()) return std::nullopt;
  return it->second;
}

std::string to_alphabet(std::string_view bytes) {
  const Alphabet& a = alphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += a.utf8[static_cast<uint8_t>(c)];
  return out;
}

std::optional<std::string> from_alphabet(std::string_view token) {
  if (utf8::valid_prefix(token) != token.size()) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < token.size();) {
    auto b = byte_of_char(utf8::next(token, i));
    if (!b) return std::nullopt;
    out += static_cast<char>(*b);
  }
  return out;
}

}  // namespace meshrt::models::byte_level

namespace meshrt::models::utf8 {

namespace {

// The length a lead byte announces (0: not a lead byte), and the range its
// second byte must be in (Unicode's table 3-7); later bytes are 80..BF.
struct Lead {
  int length;
  uint8_t low, high;
};

Lead lead(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// How many bytes from s[i] follow the lead byte's rules (the maximal subpart
// when less than the lead's length).
int well_formed_run(std::string_view s, size_t i, const Lead& l) {
  int k = 1;
  while (k < l.length && i + static_cast<size_t>(k) < s.size()) {
    auto c = static_cast<uint8_t>(s[i + static_cast<size_t>(k)]);
    bool ok = k == 1 ? (c >= l.low && c <= l.high) : (c >= 0x80 && c <= 0xBF);
    if (!ok) break;
    ++k;
  }
  return k;
}

}  // namespace

size_t valid_prefix(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    Lead l = lead(b);
    if (l.length == 0 || well_formed_run(s, i, l) != l.length) return i;
    i += static_cast<size_t>(l.length);
  }
  return s.size();
}

std::string repair(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) {
      out += static_cast<char>(b);
      ++i;
      continue;
    }
    Lead l = lead(b);
    if (l.length == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    int run = well_formed_run(s, i, l);
    if (run == l.length) {
      out.append(s.substr(i, static_cast<size_t>(run)));
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += static_cast<size_t>(run);
  }
  return out;
}

size_t complete_prefix(std::string_view s) {
  // A cut character starts at most 3 bytes from the end, at a lead byte
  // followed only by bytes its rules allow.
  size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    size_t i = n - back;
    auto b = static_cast<uint8_t>(s[i]);
    if (b >= 0x80 && b <= 0xBF) continue;  // a continuation byte: look further back
    Lead l = lead(b);
    if (l.length > static_cast<int>(back) && well_formed_run(s, i, l) == static_cast<int>(back)) return i;
    return n;
  }
  return n;
}

char32_t next(std::string_view s, size_t& i) {
  auto b = static_cast<uint8_t>(s[i]);
  int length = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  char32_t c = length == 1 ? b : length == 2 ? (b & 0x1F) : length == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < length; ++k) c = (c << 6) | (static_cast<uint8_t>(s[i + static_cast<size_t>(k)]) & 0x3F);
  i += static_cast<size_t>(length);
  return c;
}

void append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

}  // namespace meshrt::models::utf8
