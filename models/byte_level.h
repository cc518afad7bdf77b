// Internal to meshrt::models (not installed): the byte-level alphabet of GPT-2
// style tokenizers and the UTF-8 helpers the tokenizer and its writer share.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace meshrt::models::byte_level {

// GPT-2's bytes_to_unicode(): each byte stands for one printable code point.
// The printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ' stand for themselves; the
// other 68 (controls, space, 0x7F-0xA0, 0xAD) for U+0100 + their rank, so a
// space reads "Ġ" (U+0120) and a newline "Ċ" (U+010A).
char32_t char_of_byte(uint8_t byte);
// The UTF-8 of char_of_byte(byte).
const std::string& utf8_of_byte(uint8_t byte);
// The byte a code point stands for, when it is one of the 256.
std::optional<uint8_t> byte_of_char(char32_t c);
// The bytes in GPT-2's vocabulary order: the printable ones first (ascending),
// then the others (ascending); id i of GPT-2's vocab.json is vocab_order()[i].
const std::array<uint8_t, 256>& vocab_order();

// bytes in the alphabet: "a b" -> "aĠb".
std::string to_alphabet(std::string_view bytes);
// The bytes a token of the alphabet stands for; nullopt when a character of
// it is not in the alphabet (an added token such as "hello world").
std::optional<std::string> from_alphabet(std::string_view token);

}  // namespace meshrt::models::byte_level

namespace meshrt::models::utf8 {

// The length of the longest prefix of s that is well-formed UTF-8 (Unicode's
// table 3-7: no overlong forms, no surrogates, nothing past U+10FFFF); s.size()
// when all of it is.
size_t valid_prefix(std::string_view s);

// s with each ill-formed sequence replaced by U+FFFD, one per maximal subpart
// (Rust's String::from_utf8_lossy, Python's errors="replace").
std::string repair(std::string_view s);

// The length of s without a final character that is cut short (a lead byte
// followed by fewer continuation bytes than it needs, all of them still
// possible): what can be repaired now without changing once more bytes come.
size_t complete_prefix(std::string_view s);

// The code point at s[i] of well-formed UTF-8; i moves past it.
char32_t next(std::string_view s, size_t& i);
// Appends c as UTF-8.
void append(std::string& out, char32_t c);

}  // namespace meshrt::models::utf8
