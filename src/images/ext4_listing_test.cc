#include "images/ext4_listing.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "common/subprocess.h"

namespace vmgrid {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMax = uint64_t{1} << 30;

TEST(Ext4ListingTest, ParsesDebugfsLines) {
  auto l = ParseDebugfsListing(
      "/2/040755/0/0/.//\n/2/040755/0/0/..//\n/12/100644/1000/1000/a b/3/\n"
      "/13/120777/0/0/abs/11/\n/14/040755/0/0/sub//\n\n");
  ASSERT_TRUE(l.ok()) << l.error().message;
  ASSERT_EQ(l->size(), 5u);
  EXPECT_EQ((*l)[2].name, "a b");
  EXPECT_EQ((*l)[2].size, 3u);
  EXPECT_TRUE((*l)[2].IsRegular());
  EXPECT_TRUE((*l)[3].IsSymlink());
  EXPECT_TRUE((*l)[4].IsDir());
  EXPECT_EQ((*l)[4].inode, 14u);
  // A name holding '/' (or split by a newline) breaks the shape.
  for (const char* bad :
       {"/12/100644/0/0/../../x/3/", "/12/100644/0/0/a/b/3/", "/12/100644/0/0/a", "b/3/",
        "12/100644/0/0/a/3/", "/x/100644/0/0/a/3/", "/12/100944/0/0/a/3/", "/12/100644/0/0/a//",
        "/14/040755/0/0/d/0/", "/99999999999/100644/0/0/a/3/", "/12/100644/0/0/a/-3/",
        "/12/100644/0/0/a/3/ "})
    EXPECT_FALSE(ParseDebugfsListing(bad).ok()) << bad;
}

std::vector<Ext4DirEntry> Listing(std::vector<Ext4DirEntry> more) {
  std::vector<Ext4DirEntry> l{{7, 040755, ".", 0}, {2, 040755, "..", 0}};
  l.insert(l.end(), more.begin(), more.end());
  return l;
}

TEST(Ext4ListingTest, VetsEveryEntryName) {
  auto ok = VetDirectoryEntries(
      Listing({{12, 0100644, "a", 3}, {13, 0120777, "l", 5}, {0, 0, "", 0}, {14, 040755, "d", 0}}),
      7, "/x");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->size(), 3u);  // without . and .. and the unused slot
  const std::vector<std::vector<Ext4DirEntry>> bad = {
      Listing({{12, 0100644, "..", 3}}),
      Listing({{12, 040755, ".", 0}}),
      Listing({{12, 0100644, "", 3}}),
      Listing({{12, 0100644, std::string("a\0b", 3), 3}}),
      Listing({{12, 0100644, "a\nb", 3}}),
      Listing({{12, 0100644, "a/b", 3}}),
      Listing({{12, 020644, "tty", 0}}),  // character device
      Listing({{12, 060644, "sda", 0}}),  // block device
      Listing({{12, 010644, "fifo", 0}}),
      Listing({{12, 0140644, "sock", 0}}),
      Listing({{12, 0120777, "a", 3}, {13, 0100644, "a", 3}}),  // a link and a file of one name
      {{2, 040755, "..", 0}, {7, 040755, ".", 0}},
      {{8, 040755, ".", 0}, {2, 040755, "..", 0}},  // another directory's listing
      {},
  };
  for (const auto& l : bad) EXPECT_FALSE(VetDirectoryEntries(l, 7, "/x").ok());
}

TEST(Ext4ListingTest, WalksTheTreeOnceAndBoundsIt) {
  std::map<uint32_t, std::string> dirs = {
      {2, "/2/040755/0/0/.//\n/2/040755/0/0/..//\n/12/040755/0/0/d//\n/13/100644/0/0/f/100/\n"},
      {12, "/12/040755/0/0/.//\n/2/040755/0/0/..//\n/14/100644/0/0/g/200/\n"}};
  int listed = 0;
  Ext4Lister list = [&](uint32_t ino) -> Result<std::string> {
    ++listed;
    if (!dirs.count(ino)) return MakeError(ErrorCode::kNotFound, "no such directory");
    return dirs[ino];
  };
  EXPECT_TRUE(VetExt4Tree(list, 300).ok());
  EXPECT_EQ(listed, 2);
  EXPECT_FALSE(VetExt4Tree(list, 299).ok());  // 300 bytes of files
  // A directory reached twice (a loop back to the root).
  dirs[12] += "/2/040755/0/0/up//\n";
  Status loop = VetExt4Tree(list, kMax);
  ASSERT_FALSE(loop.ok());
  EXPECT_NE(loop.error().message.find("/d/up"), std::string::npos) << loop.error().message;
}

// --- real images, crafted as a dataset's owner could --------------------------------

class Ext4ImageTest : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ext4-listing-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // The target sits two levels down, so "../../x" would land in dir_.
    out_ = dir_ + "/a/b/out";
    fs::create_directories(out_);
    fs::create_directories(dir_ + "/src/sub");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void Write(const std::string& rel, const std::string& data) {
    std::ofstream(dir_ + "/src/" + rel) << data;
  }
  // An image of src/, as `data push` builds it (without checksums, so that a
  // name can be patched in place as an attacker would).
  std::string Build() {
    std::string img = dir_ + "/img";
    auto r = RunProcess({"mkfs.ext4", "-q", "-F", "-O", "^metadata_csum,^has_journal", "-b", "4096",
                         "-d", dir_ + "/src", img, "8M"});
    EXPECT_TRUE(r.ok() && r->exit_code == 0) << (r.ok() ? r->err : r.error().message);
    return img;
  }
  // Replaces the one occurrence of `from` in the image by `to` (same length).
  void Patch(const std::string& img, const std::string& from, const std::string& to) {
    ASSERT_EQ(from.size(), to.size());
    std::ifstream in(img, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t at = bytes.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    ASSERT_EQ(bytes.find(from, at + 1), std::string::npos) << from << " twice";
    bytes.replace(at, from.size(), to);
    std::ofstream(img, std::ios::binary | std::ios::trunc) << bytes;
  }
  void Debugfs(const std::string& img, const std::string& cmd) {
    auto r = RunProcess({"debugfs", "-w", "-R", cmd, img});
    ASSERT_TRUE(r.ok() && r->exit_code == 0);
  }
  std::string RawListing(const std::string& img) {
    auto r = RunProcess({"debugfs", "-R", "ls -p <2>", img});
    return r.ok() ? r->out : "";
  }
  // Everything under dir_ but the image, the source and the (staged) target.
  std::vector<std::string> Outside() {
    std::vector<std::string> found;
    for (auto& e : fs::recursive_directory_iterator(dir_)) {
      std::string rel = fs::path(e.path()).lexically_relative(dir_).string();
      if (rel == "img" || rel == "src" || rel.rfind("src/", 0) == 0 || rel == "a" || rel == "a/b" ||
          rel == "a/b/out" || rel.rfind("a/b/out/", 0) == 0)
        continue;
      found.push_back(rel);
    }
    return found;
  }
  std::string dir_, out_;
};

TEST_F(Ext4ImageTest, ExtractsAnOrdinaryTree) {
  Write("hello", "hi\n");
  Write("sub/data", "x");
  fs::create_symlink("../hello", dir_ + "/src/sub/link");
  fs::create_symlink("sub", dir_ + "/src/dirlink");
  std::string img = Build();
  Status s = ExtractExt4Image(img, out_, kMax);
  ASSERT_TRUE(s.ok()) << s.error().message;
  std::ifstream in(out_ + "/sub/link");
  std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got, "hi\n");
  EXPECT_TRUE(fs::is_regular_file(out_ + "/dirlink/data"));
  EXPECT_TRUE(Outside().empty());
}

TEST_F(Ext4ImageTest, RefusesANameClimbingOutOfTheTarget) {
  Write("AAAAAAAAAA", "escaped\n");
  std::string img = Build();
  Patch(img, "AAAAAAAAAA", "../../esc_");
  ASSERT_NE(RawListing(img).find("/../../esc_/"), std::string::npos);  // the image is crafted
  Status s = ExtractExt4Image(img, out_, kMax);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(s.error().message.find("refusing to extract"), std::string::npos) << s.error().message;
  EXPECT_FALSE(fs::exists(dir_ + "/a/esc_"));
  EXPECT_TRUE(Outside().empty());
  EXPECT_TRUE(fs::is_empty(out_));  // refused before anything was dumped
}

TEST_F(Ext4ImageTest, RefusesNamesWithNewlinesAndDuplicates) {
  Write("NNN", "n");
  std::string img = Build();
  Patch(img, "NNN", "a\nb");
  EXPECT_FALSE(ExtractExt4Image(img, out_, kMax).ok());
  // A symbolic link and a file of the same name: rdump would write the file
  // through the link.
  fs::remove(dir_ + "/src/NNN");
  fs::create_symlink(dir_ + "/victim", dir_ + "/src/DUP1");
  Write("DUP2", "through the link\n");
  img = Build();
  Patch(img, "DUP2", "DUP1");
  Status s = ExtractExt4Image(img, out_, kMax);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("two entries"), std::string::npos) << s.error().message;
  EXPECT_FALSE(fs::exists(dir_ + "/victim"));
  EXPECT_TRUE(Outside().empty());
}

TEST_F(Ext4ImageTest, RefusesSymbolicLinksPointingOutside) {
  for (const std::string target : {"/etc/passwd", "../../..", "../../x", "../sub/../../y"}) {
    SCOPED_TRACE(target);
    fs::remove_all(dir_ + "/src");
    fs::create_directories(dir_ + "/src/sub");
    fs::create_symlink(target, dir_ + "/src/sub/link");
    std::string img = Build();
    fs::remove_all(out_);
    fs::create_directories(out_);
    Status s = ExtractExt4Image(img, out_, kMax);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.error().message.find("points outside"), std::string::npos) << s.error().message;
  }
  // Through a chain of links that each stay inside: up -> sub/back -> ..
  fs::remove_all(dir_ + "/src");
  fs::create_directories(dir_ + "/src/sub");
  fs::create_symlink("..", dir_ + "/src/sub/back");
  fs::create_symlink("sub/back/..", dir_ + "/src/up");
  std::string img = Build();
  fs::remove_all(out_);
  fs::create_directories(out_);
  EXPECT_FALSE(ExtractExt4Image(img, out_, kMax).ok());
}

TEST_F(Ext4ImageTest, RefusesDevicesAndDirectoryLoops) {
  Write("f", "x");
  std::string img = Build();
  Debugfs(img, "mknod tty c 5 0");
  Status s = ExtractExt4Image(img, out_, kMax);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("device"), std::string::npos) << s.error().message;
  img = Build();
  Debugfs(img, "link sub sub/loop");
  s = ExtractExt4Image(img, out_, kMax);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("reached twice"), std::string::npos) << s.error().message;
  EXPECT_TRUE(Outside().empty());
}

TEST_F(Ext4ImageTest, ClearsSetuidBitsAndRefusesTooManyBytes) {
  Write("prog", "#!/bin/sh\n");
  ::chmod((dir_ + "/src/prog").c_str(), 04755);
  std::string img = Build();
  ASSERT_TRUE(ExtractExt4Image(img, out_, kMax).ok());
  struct stat st {};
  ASSERT_EQ(::stat((out_ + "/prog").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  fs::remove_all(out_);
  fs::create_directories(out_);
  EXPECT_FALSE(ExtractExt4Image(img, out_, 5).ok());
}

}  // namespace
}  // namespace vmgrid
