// sharding/safetensors.h: a valid file round-trips; every kind of bad file is
// refused with a message saying what is wrong (never a crash).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "test_util.h"

namespace meshrt::io {
namespace {

using meshrt::testing::throws_error;

std::vector<uint8_t> with_header(const std::string& json, size_t data_bytes) {
  std::vector<uint8_t> out(8 + json.size() + data_bytes, 0);
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, json.data(), json.size());
  return out;
}

SafetensorsHeader parse(const std::vector<uint8_t>& file) {
  return parse_safetensors_header(file, file.size(), "test.safetensors");
}

::testing::AssertionResult refused(const std::vector<uint8_t>& file, const std::string& fragment) {
  return throws_error(ErrorKind::kInvalidArgument, [&] { parse(file); }, {"safetensors file test.safetensors: ", fragment});
}

TEST(Safetensors, ValidHeaderRoundTrips) {
  std::vector<SafetensorsEntry> entries = {{"a", DType::kF32, Shape{2, 3}, 0, 24},
                                           {"b", DType::kBF16, Shape{4}, 24, 32},
                                           {"empty", DType::kI64, Shape{0, 5}, 32, 32}};
  std::vector<uint8_t> file = make_safetensors_header(entries, {{"format", "pt"}});
  EXPECT_EQ((file.size() - 8) % 8, 0u) << "padded to 8 bytes";
  file.resize(file.size() + 32);
  SafetensorsHeader h = parse(file);
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.find("a").shape, (Shape{2, 3}));
  EXPECT_EQ(h.find("b").dtype, DType::kBF16);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.data_bytes, 32u);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { h.find("c"); }, {"no tensor 'c'", "a, b"}));
  // From a file on disk too.
  std::string path = (std::filesystem::temp_directory_path() / "meshrt-safetensors-test.safetensors").string();
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(file.data()), static_cast<std::streamsize>(file.size()));
  EXPECT_EQ(read_safetensors_header(path).tensors.size(), 3u);
  std::filesystem::remove(path);
}

TEST(Safetensors, RefusesEveryKindOfBadFile) {
  const std::string a = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_NO_THROW(parse(with_header(a, 8)));
  EXPECT_TRUE(refused({1, 2, 3}, "too short for the 8-byte header length"));
  std::vector<uint8_t> huge(16, 0);
  huge[6] = 1;  // 2^48
  EXPECT_TRUE(refused(huge, "exceeds the limit"));
  std::vector<uint8_t> truncated = with_header(a, 8);
  truncated.resize(20);
  EXPECT_TRUE(refused(truncated, "runs past the end of the 20-byte file"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32",)", 0), "not valid JSON"));
  EXPECT_TRUE(refused(with_header("[1,2]", 0), "not a JSON object"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
                      "tensor 'a': dtype \"F8_E4M3\" is not supported"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4),
                      "needs 8 bytes but data_offsets [0, 4] hold 4"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                      "shape entries must be non-negative integers"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
                      "shape entries must be non-negative integers"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8),
                      "too many elements"));
  EXPECT_TRUE(refused(with_header(a, 4), "run past the 4 bytes of data"));
  // 2^61 + 1 elements of 8 bytes would wrap around to 8 bytes in 64-bit arithmetic.
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F64","shape":[2305843009213693953],"data_offsets":[0,8]}})", 8),
                      "too many elements"));
  // Nesting deep enough to overflow a recursive printer is refused by the parser.
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":)" + std::string(100000, '[') + "]}}", 0),
                      "nested deeper than 64 levels"));
  EXPECT_TRUE(refused(with_header(a, 12), "extra bytes at the end"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "end before they begin"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), "data_offsets must be"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                      "the byte ranges overlap"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                      "belong to no tensor"));
  EXPECT_TRUE(refused(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
                      "unknown field 'x'"));
  EXPECT_TRUE(refused(with_header(R"({"__metadata__":{"k":1}})", 0), "is not a string"));
  EXPECT_TRUE(refused(with_header(R"({"a":5})", 0), "tensor 'a' is not an object"));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { read_safetensors_header("/nonexistent.safetensors"); },
                           {"cannot open safetensors file /nonexistent.safetensors"}));
}

}  // namespace
}  // namespace meshrt::io
