#include "agent/overlay_templates.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/subprocess.h"
#include "common/util.h"

namespace vmgrid {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class OverlayTemplatesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("vmgrid-overlays-" + NewToken().substr(0, 8));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  void MakeBase(const std::string& name, const std::string& size) {
    auto r = RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", P(name), size});
    ASSERT_TRUE(r.ok()) << r.error().message;
  }
  json Info(const std::string& path) {
    auto r = RunProcessChecked({"qemu-img", "info", "--output=json", path});
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? json::parse(*r) : json();
  }
  std::string dir_;
};

TEST_F(OverlayTemplatesTest, LaterOverlaysAreCopiesEqualToWhatQemuImgMakes) {
  MakeBase("base.qcow2", "64M");
  OverlayTemplates t(P("templates"));
  ASSERT_TRUE(t.Create(P("base.qcow2"), "qcow2", P("a.qcow2")).ok());
  EXPECT_EQ(t.hits(), 0);
  ASSERT_TRUE(t.Create(P("base.qcow2"), "qcow2", P("b.qcow2")).ok());
  EXPECT_EQ(t.hits(), 1);

  auto r = RunProcessChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-b", P("base.qcow2"),
                              "-F", "qcow2", P("direct.qcow2")});
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto direct = ReadFile(P("direct.qcow2"));
  auto copy = ReadFile(P("b.qcow2"));
  ASSERT_TRUE(direct.ok() && copy.ok());
  EXPECT_EQ(*copy, *direct) << "a template copy must be byte for byte a fresh overlay";

  json info = Info(P("b.qcow2"));
  EXPECT_EQ(info["format"], "qcow2");
  EXPECT_EQ(info["virtual-size"], 64 << 20);
  EXPECT_EQ(info["backing-filename"], P("base.qcow2"));
  EXPECT_EQ(info["backing-filename-format"], "qcow2");
}

TEST_F(OverlayTemplatesTest, OverlaysAreIndependentFiles) {
  MakeBase("base.qcow2", "16M");
  OverlayTemplates t(P("templates"));
  ASSERT_TRUE(t.Create(P("base.qcow2"), "qcow2", P("a.qcow2")).ok());
  ASSERT_TRUE(t.Create(P("base.qcow2"), "qcow2", P("b.qcow2")).ok());
  // A write into one overlay changes neither the other nor the next copy.
  auto w = RunProcessChecked({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", P("a.qcow2")});
  ASSERT_TRUE(w.ok()) << w.error().message;
  ASSERT_TRUE(t.Create(P("base.qcow2"), "qcow2", P("c.qcow2")).ok());
  for (const char* name : {"b.qcow2", "c.qcow2"}) {
    auto r = RunProcessChecked({"qemu-io", "-f", "qcow2", "-c", "read -P 0 0 1M", P(name)});
    ASSERT_TRUE(r.ok()) << name << ": " << r.error().message;
    EXPECT_EQ(r->find("Pattern verification failed"), std::string::npos) << name << ": " << *r;
  }
}

TEST_F(OverlayTemplatesTest, AReplacedBackingFileGetsANewTemplate) {
  MakeBase("base.qcow2", "16M");
  OverlayTemplates t(P("templates"));
  ASSERT_TRUE(t.Create(P("base.qcow2"), "qcow2", P("a.qcow2")).ok());
  // The same path now holds a bigger disk: an old template would give the
  // overlay the old size.
  fs::remove(P("base.qcow2"));
  MakeBase("base.qcow2", "32M");
  ASSERT_TRUE(t.Create(P("base.qcow2"), "qcow2", P("b.qcow2")).ok());
  EXPECT_EQ(t.hits(), 0);
  EXPECT_EQ(Info(P("b.qcow2"))["virtual-size"], 32 << 20);
}

TEST_F(OverlayTemplatesTest, ErrorsSayWhatWasWrongAndLeaveNothing) {
  OverlayTemplates t(P("templates"));
  Status st = t.Create(P("missing.qcow2"), "qcow2", P("a.qcow2"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("missing.qcow2"), std::string::npos) << st.error().message;
  EXPECT_FALSE(fs::exists(P("a.qcow2")));

  MakeBase("base.qcow2", "16M");
  ASSERT_TRUE(t.Create(P("base.qcow2"), "qcow2", P("a.qcow2")).ok());
  auto before = ReadFile(P("a.qcow2"));
  st = t.Create(P("base.qcow2"), "qcow2", P("a.qcow2"));
  EXPECT_FALSE(st.ok()) << "an existing overlay must not be overwritten";
  EXPECT_EQ(*ReadFile(P("a.qcow2")), *before);
  // A failed qemu-img (a raw file given as qcow2) leaves no template behind.
  ASSERT_TRUE(WriteFileAtomic(P("raw.img"), std::string(4096, 'x')).ok());
  EXPECT_FALSE(t.Create(P("raw.img"), "qcow2", P("r.qcow2")).ok());
  EXPECT_FALSE(fs::exists(P("r.qcow2")));
  for (const auto& e : fs::directory_iterator(P("templates")))
    EXPECT_EQ(e.path().extension(), ".qcow2") << "leftover " << e.path();
}

TEST_F(OverlayTemplatesTest, KeepsAtMostTheNewestTemplates) {
  OverlayTemplates t(P("templates"));
  for (int i = 0; i < OverlayTemplates::kMaxTemplates + 3; ++i) {
    std::string base = "base" + std::to_string(i) + ".qcow2";
    MakeBase(base, "1M");
    ASSERT_TRUE(t.Create(P(base), "qcow2", P("ov" + std::to_string(i) + ".qcow2")).ok());
  }
  int n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(P("templates"))) ++n;
  EXPECT_EQ(n, OverlayTemplates::kMaxTemplates);
}

}  // namespace
}  // namespace vmgrid
