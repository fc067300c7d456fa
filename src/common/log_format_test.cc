#include "common/log_format.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>
#include <sstream>

namespace vmgrid {
namespace {

TEST(LogFormatTest, JsonLinesParseAndKeepTheMessage) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  spdlog::logger logger("t", sink);
  logger.set_formatter(NewJsonLogFormatter());
  logger.warn("host {} missed \"its\" heartbeats\n\tand \x01 {}", "h1", "\xff\xfe");
  logger.info("plain");
  std::istringstream lines(out.str());
  std::string line;
  ASSERT_TRUE(std::getline(lines, line));
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["msg"].get<std::string>().substr(0, 33), "host h1 missed \"its\" heartbeats\n\t");
  EXPECT_EQ(j["time"].get<std::string>().size(), 24u);  // 2026-12-05T15:00:00.000Z
  EXPECT_EQ(j["time"].get<std::string>().back(), 'Z');
  EXPECT_GT(j["pid"].get<int>(), 0);
  ASSERT_TRUE(std::getline(lines, line));
  EXPECT_EQ(nlohmann::json::parse(line)["msg"], "plain");
  EXPECT_FALSE(std::getline(lines, line));
}

TEST(LogFormatTest, RefusesUnknownFormats) {
  EXPECT_TRUE(SetLogFormat("text").ok());
  EXPECT_FALSE(SetLogFormat("xml").ok());
  EXPECT_FALSE(SetLogFormat("").ok());
}

}  // namespace
}  // namespace vmgrid
