// device/log.h: the default format's lines as meshrt-serve has always printed
// them, JSON lines that a JSON parser reads back (escapes, bytes that are not
// UTF-8), levels and their switches.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "device/error.h"
#include "device/log.h"

namespace meshrt {
namespace {

// What body writes to stderr (fd 2), the file descriptor redirected to a file meanwhile.
template <class Body>
std::string capture_stderr(Body body) {
  char path[] = "/tmp/meshrt-log-test-XXXXXX";
  int fd = ::mkstemp(path);
  EXPECT_GE(fd, 0);
  std::fflush(stderr);
  int saved = ::dup(2);
  ::dup2(fd, 2);
  body();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(fd);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::remove(path);
  return text.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class Log : public ::testing::Test {
 protected:
  void TearDown() override { log::configure({}); }
};

TEST_F(Log, DefaultFormatIsTheProgramsOwnLines) {
  log::Options o;
  o.program = "meshrt-serve";
  log::configure(o);
  std::string out = capture_stderr([] {
    log::info("listening on http://0.0.0.0:8000");
    log::warn("model 'm' cannot recover yet");
    log::error("batch 7 failed");
    log::verbose(1, "not shown at verbose level 0");
  });
  EXPECT_EQ(out,
            "meshrt-serve: listening on http://0.0.0.0:8000\n"
            "meshrt-serve: warning: model 'm' cannot recover yet\n"
            "meshrt-serve: error: batch 7 failed\n");
}

TEST_F(Log, JsonLinesParseWithTimeLevelRankAndMessage) {
  log::Options o;
  o.format = "json";
  o.rank = 3;
  o.verbose_level = 1;
  log::configure(o);
  const std::string tricky = "quote \" backslash \\ line\nfeed tab\t bell\x07 \xc3\xa9t\xc3\xa9 \xe2\x82\xac";
  std::string out = capture_stderr([&] {
    log::info(tricky);
    log::warn("w");
    log::error("e");
    log::verbose(1, "v1");
    log::verbose(2, "v2 is above the level");
    log::info(std::string("bad \xff\xfe utf-8 \xc3"));
  });
  std::vector<std::string> lines = lines_of(out);
  ASSERT_EQ(lines.size(), 5u) << out;
  std::vector<nlohmann::json> parsed;
  for (const std::string& line : lines) {
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(line)) << line;
    ASSERT_TRUE(j.is_object()) << line;
    EXPECT_EQ(j["rank"], 3) << line;
    ASSERT_TRUE(j["time"].is_string()) << line;
    // ISO 8601 in UTC with milliseconds: 2024-05-01T12:00:00.123Z
    std::string time = j["time"];
    EXPECT_EQ(time.size(), 24u) << time;
    EXPECT_EQ(time[10], 'T') << time;
    EXPECT_EQ(time.back(), 'Z') << time;
    parsed.push_back(j);
  }
  EXPECT_EQ(parsed[0]["level"], "info");
  EXPECT_EQ(parsed[0]["message"], tricky) << "escapes read back as the message";
  EXPECT_EQ(parsed[1]["level"], "warning");
  EXPECT_EQ(parsed[2]["level"], "error");
  EXPECT_EQ(parsed[3]["level"], "verbose");
  EXPECT_EQ(parsed[3]["message"], "v1");
  EXPECT_EQ(parsed[4]["message"], "bad \xef\xbf\xbd\xef\xbf\xbd utf-8 \xef\xbf\xbd") << "bytes not UTF-8 become U+FFFD";
}

TEST_F(Log, RankIsLeftOutWhenUnknown) {
  log::Options o;
  o.format = "json";
  log::configure(o);
  nlohmann::json j = nlohmann::json::parse(capture_stderr([] { log::info("x"); }));
  EXPECT_FALSE(j.contains("rank")) << j.dump();
  EXPECT_EQ(j["message"], "x");
}

TEST_F(Log, LevelSwitchesAndBadOptions) {
  log::Options o;
  o.program = "p";
  o.info = false;
  o.error = false;
  o.verbose_level = 2;
  log::configure(o);
  EXPECT_TRUE(log::verbose_enabled(2));
  EXPECT_FALSE(log::verbose_enabled(3));
  EXPECT_FALSE(log::verbose_enabled(0)) << "verbose levels start at 1";
  std::string out = capture_stderr([] {
    log::info("i");
    log::warn("w");
    log::error("e");
    log::verbose(2, "v");
  });
  EXPECT_EQ(out, "p: warning: w\np: v\n");
  log::Options bad;
  bad.format = "xml";
  EXPECT_THROW(log::configure(bad), Error);
  bad.format = "json";
  bad.verbose_level = -1;
  EXPECT_THROW(log::configure(bad), Error);
  EXPECT_EQ(log::options().program, "p") << "a refused configuration changes nothing";
}

TEST(LogJsonString, Escapes) {
  EXPECT_EQ(log::json_string("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
  EXPECT_EQ(log::json_string("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\"") << "a surrogate is not UTF-8";
  EXPECT_EQ(log::json_string("\xc0\xaf"), "\"\\ufffd\\ufffd\"") << "an overlong form is not UTF-8";
  EXPECT_EQ(log::json_string("\xf0\x9f\x98\x80"), "\"\xf0\x9f\x98\x80\"");
}

}  // namespace
}  // namespace meshrt
