// Datasets end to end (issue 13 §1, docs/datasets.md): a local grid with an
// image server and no hosts (no QEMU), the CLI run in-process. A directory
// is pushed, pushed again with one file changed (only a few chunks travel),
// shown, and both versions pulled and compared byte for byte; another user
// cannot see, pull or remove it; bad inputs are clear errors that leave
// nothing behind.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "chunks/manifest.h"
#include "cli/cli.h"
#include "common/base64.h"
#include "common/subprocess.h"
#include "tests/cli_run.h"
#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;
namespace fs = std::filesystem;

// Every regular file and link under `root`, by relative path: its bytes.
std::map<std::string, std::string> Tree(const std::string& root) {
  std::map<std::string, std::string> out;
  for (auto& e : fs::recursive_directory_iterator(root)) {
    std::string rel = fs::relative(e.path(), root).string();
    if (e.is_symlink()) {
      out[rel] = "link:" + fs::read_symlink(e.path()).string();
    } else if (e.is_regular_file()) {
      std::ifstream f(e.path(), std::ios::binary);
      std::stringstream ss;
      ss << f.rdbuf();
      out[rel] = ss.str();
    } else if (e.is_directory()) {
      out[rel] = "dir";
    }
  }
  return out;
}

void WriteRandom(const std::string& path, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  std::ofstream(path, std::ios::binary) << s;
}

// The entries of `dir` whose names start with `prefix`.
int CountEntries(const std::string& dir, const std::string& prefix) {
  int n = 0;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(prefix, 0) == 0) ++n;
  return n;
}

class DatasetTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    grid_ = StartGrid("datasets", 0).release();
    alice_ = new std::string(NewUserToken(*grid_, "alice"));
    bob_ = new std::string(NewUserToken(*grid_, "bob"));
    dir_ = new std::string("/tmp/vmgrid-dataset-test-" + std::to_string(getpid()));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_);
  }
  static void TearDownTestSuite() {
    std::unique_ptr<LocalGrid> g(grid_);
    StopGrid(g);
    fs::remove_all(*dir_);
    delete alice_;
    delete bob_;
    delete dir_;
  }

  static CliRun Cli(const std::string& token, const std::vector<std::string>& args) {
    return RunCli(*grid_, token, args);
  }

  static LocalGrid* grid_;
  static std::string *alice_, *bob_, *dir_;
};
LocalGrid* DatasetTest::grid_ = nullptr;
std::string* DatasetTest::alice_ = nullptr;
std::string* DatasetTest::bob_ = nullptr;
std::string* DatasetTest::dir_ = nullptr;

TEST_F(DatasetTest, PushTwicePullBothVersionsAndOnlyChangedChunksTravel) {
  std::string src = *dir_ + "/src";
  fs::create_directories(src + "/sub/deeper");
  for (int i = 0; i < 40; ++i) WriteRandom(src + "/f" + std::to_string(i), 200000, i);
  WriteRandom(src + "/sub/deeper/big", 3 << 20, 99);
  std::ofstream(src + "/sub/hello.txt") << "hello\n";
  fs::create_symlink("f1", src + "/link");
  auto v1_tree = Tree(src);

  auto p1 = Cli(*alice_, {"--json", "data", "push", "genome", src});
  ASSERT_EQ(p1.rc, 0) << p1.err;
  auto j1 = json::parse(p1.out);
  EXPECT_EQ(j1["latest"]["version"], 1);
  EXPECT_EQ(j1["latest"]["kind"], "dir");
  int64_t chunks = j1["latest"]["chunks"];
  EXPECT_EQ(j1["latest"]["sent_chunks"], chunks);

  // One file changes: a handful of chunks travel, the rest are reused.
  WriteRandom(src + "/f7", 200000, 1234);
  auto v2_tree = Tree(src);
  auto p2 = Cli(*alice_, {"--json", "data", "push", "genome", src});
  ASSERT_EQ(p2.rc, 0) << p2.err;
  auto j2 = json::parse(p2.out);
  EXPECT_EQ(j2["latest"]["version"], 2);
  int64_t sent = j2["latest"]["sent_chunks"];
  std::cout << "version 1: " << chunks << " chunks; version 2: " << j2["latest"]["chunks"]
            << " chunks, sent " << sent << " (" << j2["latest"]["sent_bytes"] << " bytes)\n";
  EXPECT_GE(sent, 1);
  EXPECT_LE(sent, 3);
  EXPECT_GE(chunks, 10);

  auto show = Cli(*alice_, {"data", "show", "genome"});
  ASSERT_EQ(show.rc, 0) << show.err;
  EXPECT_NE(show.out.find("VERSION"), std::string::npos) << show.out;
  auto list = Cli(*alice_, {"data", "list"});
  ASSERT_EQ(list.rc, 0) << list.err;
  EXPECT_NE(list.out.find("genome"), std::string::npos) << list.out;

  // Both versions, byte for byte.
  std::string out1 = *dir_ + "/out1", out2 = *dir_ + "/out2";
  auto g1 = Cli(*alice_, {"data", "pull", "genome:1", out1});
  ASSERT_EQ(g1.rc, 0) << g1.err;
  EXPECT_EQ(Tree(out1), v1_tree);
  fs::create_directories(out2);  // an empty directory is a fine target
  auto g2 = Cli(*alice_, {"data", "pull", "genome", out2});
  ASSERT_EQ(g2.rc, 0) << g2.err;
  EXPECT_EQ(Tree(out2), v2_tree);
  EXPECT_NE(Tree(out1)["f7"], Tree(out2)["f7"]);
  EXPECT_EQ(CountEntries(*dir_, ".out"), 0);  // no staging left

  // Bob sees nothing of it.
  auto bl = Cli(*bob_, {"--json", "data", "list"});
  ASSERT_EQ(bl.rc, 0);
  EXPECT_EQ(bl.out.find("genome"), std::string::npos);
  EXPECT_EQ(Cli(*bob_, {"data", "show", "genome"}).rc, 3);
  EXPECT_EQ(Cli(*bob_, {"data", "pull", "genome", *dir_ + "/stolen"}).rc, 3);
  EXPECT_FALSE(fs::exists(*dir_ + "/stolen"));
  EXPECT_EQ(CountEntries(*dir_, ".stolen"), 0);
  std::string id = j1["id"];
  EXPECT_EQ(Cli(*bob_, {"data", "rm", id}).rc, 3);
  EXPECT_EQ(Cli(*bob_, {"data", "show", id}).rc, 3);

  // A file version; then removing a version and the dataset.
  std::string file = *dir_ + "/blob.bin";
  WriteRandom(file, 1500000, 7);
  ASSERT_EQ(Cli(*alice_, {"data", "push", "blob", file}).rc, 0);
  auto gf = Cli(*alice_, {"data", "pull", "blob", *dir_ + "/blob.out"});
  ASSERT_EQ(gf.rc, 0) << gf.err;
  EXPECT_EQ(Tree(*dir_)["blob.out"], Tree(*dir_)["blob.bin"]);
  EXPECT_EQ(Cli(*alice_, {"data", "rm", "genome:1"}).rc, 0);
  EXPECT_EQ(Cli(*alice_, {"data", "pull", "genome:1", *dir_ + "/gone"}).rc, 3);
  EXPECT_EQ(Cli(*alice_, {"data", "rm", "genome"}).rc, 0);
  EXPECT_EQ(Cli(*alice_, {"data", "show", "genome"}).rc, 3);
}

// Publishes `bytes` as the next `kind` version of the caller's dataset
// `name` straight through the REST API, as another client than ours could:
// nothing checks what the bytes hold.
json PushRaw(const ApiClient& api, const std::string& name, const std::string& kind,
             const std::string& bytes) {
  json chunks = json::array();
  for (size_t off = 0; off < bytes.size(); off += kDefaultChunkSize) {
    std::string piece = bytes.substr(off, kDefaultChunkSize);
    if (piece.find_first_not_of('\0') == std::string::npos) {
      chunks.push_back("zero");
      continue;
    }
    auto r = api.Post("/v1/datasets/" + name + "/chunks", {{"data", Base64Encode(piece)}});
    EXPECT_TRUE(r.ok()) << r.error().message;
    if (!r.ok()) return json();
    chunks.push_back((*r)["digest"]);
  }
  auto v = api.Post("/v1/datasets/" + name + "/versions", {{"kind", kind},
                                                           {"size", bytes.size()},
                                                           {"chunk_size", kDefaultChunkSize},
                                                           {"chunks", chunks}});
  EXPECT_TRUE(v.ok()) << v.error().message;
  return v.ok() ? *v : json();
}

// Sharing (docs/datasets.md, "Sharing"): bob lists, shows and pulls alice's
// shared dataset as alice/NAME; carol, not shared with, finds nothing; a
// crafted image alice shares is refused by bob's pull, which writes nothing
// outside its target; unsharing stops bob's pulls.
TEST_F(DatasetTest, ASharedDatasetIsPulledByItsUserOnlyAndSafely) {
  const std::string carol = NewUserToken(*grid_, "carol");
  std::string src = *dir_ + "/share-src";
  fs::create_directories(src + "/sub");
  WriteRandom(src + "/data", 300000, 5);
  std::ofstream(src + "/sub/note") << "shared\n";
  fs::create_symlink("../data", src + "/sub/link");
  ASSERT_EQ(Cli(*alice_, {"data", "push", "tree", src}).rc, 0);
  // Bob's own "tree" does not collide with alice's.
  ASSERT_EQ(Cli(*bob_, {"data", "push", "tree", src + "/sub/note"}).rc, 0);
  EXPECT_EQ(Cli(*bob_, {"data", "show", "alice/tree"}).rc, 3);  // not shared yet

  auto shared = Cli(*alice_, {"data", "share", "tree", "bob"});
  ASSERT_EQ(shared.rc, 0) << shared.err;
  EXPECT_NE(shared.out.find("alice/tree"), std::string::npos) << shared.out;
  auto ashow = Cli(*alice_, {"data", "show", "tree"});
  EXPECT_NE(ashow.out.find("shared with bob"), std::string::npos) << ashow.out;
  auto list = Cli(*bob_, {"--json", "data", "list"});
  ASSERT_EQ(list.rc, 0) << list.err;
  std::set<std::string> refs;
  json listed = json::parse(list.out);
  if (listed.is_object()) listed = listed["datasets"];
  ASSERT_TRUE(listed.is_array()) << list.out;
  for (const auto& d : listed) refs.insert(d["ref"].get<std::string>());
  EXPECT_EQ(refs, (std::set<std::string>{"tree", "alice/tree"})) << list.out;
  auto show = Cli(*bob_, {"data", "show", "alice/tree"});
  ASSERT_EQ(show.rc, 0) << show.err;
  EXPECT_NE(show.out.find("owner alice, shared with you read-only"), std::string::npos) << show.out;
  // The REST path takes OWNER/NAME with the '/' literal or escaped.
  ApiClient bob_api(grid_->url(), *bob_);
  EXPECT_TRUE(bob_api.Get("/v1/datasets/alice/tree").ok());
  EXPECT_TRUE(bob_api.Get("/v1/datasets/alice%2Ftree/versions/1/manifest").ok());
  auto pulled = Cli(*bob_, {"data", "pull", "alice/tree:1", *dir_ + "/bob-tree"});
  ASSERT_EQ(pulled.rc, 0) << pulled.err;
  EXPECT_EQ(Tree(*dir_ + "/bob-tree"), Tree(src));
  // Read-only for bob.
  auto rm = Cli(*bob_, {"data", "rm", "alice/tree"});
  EXPECT_NE(rm.rc, 0);
  EXPECT_NE(rm.err.find("read-only"), std::string::npos) << rm.err;
  EXPECT_NE(Cli(*bob_, {"data", "share", "alice/tree", "carol"}).rc, 0);
  // Carol finds nothing, under any name.
  for (const std::string ref : {"alice/tree", "tree"}) {
    EXPECT_EQ(Cli(carol, {"data", "show", ref}).rc, 3) << ref;
    EXPECT_EQ(Cli(carol, {"data", "pull", ref, *dir_ + "/carol"}).rc, 3) << ref;
  }
  EXPECT_FALSE(fs::exists(*dir_ + "/carol"));

  // A crafted image: a file whose name is patched to climb out of the target.
  std::string craft = *dir_ + "/craft-src";
  fs::create_directories(craft);
  std::ofstream(craft + "/AAAAAAAAAA") << "escaped\n";
  std::string img = *dir_ + "/craft.img";
  auto mk = RunProcess({"mkfs.ext4", "-q", "-F", "-O", "^metadata_csum,^has_journal", "-b", "4096",
                        "-d", craft, img, "8M"});
  ASSERT_TRUE(mk.ok() && mk->exit_code == 0);
  std::ifstream in(img, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t at = bytes.find("AAAAAAAAAA");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 10, "../../esc_");
  ApiClient alice_api(grid_->url(), *alice_);
  ASSERT_FALSE(PushRaw(alice_api, "crafted", "dir", bytes).is_null());
  ASSERT_EQ(Cli(*alice_, {"data", "share", "crafted", "bob"}).rc, 0);
  fs::create_directories(*dir_ + "/x/y");
  auto bad = Cli(*bob_, {"data", "pull", "alice/crafted", *dir_ + "/x/y/out"});
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("refusing to extract"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(*dir_ + "/x/esc_"));
  EXPECT_FALSE(fs::exists(*dir_ + "/esc_"));
  EXPECT_FALSE(fs::exists(*dir_ + "/x/y/out"));
  EXPECT_EQ(CountEntries(*dir_ + "/x/y", ".out"), 0);

  // Unshared: bob's pulls are refused again.
  ASSERT_EQ(Cli(*alice_, {"data", "unshare", "tree", "bob"}).rc, 0);
  EXPECT_EQ(Cli(*bob_, {"data", "pull", "alice/tree", *dir_ + "/bob-again"}).rc, 3);
  EXPECT_EQ(Cli(*alice_, {"data", "unshare", "tree", "bob"}).rc, 3);
}

TEST_F(DatasetTest, BadInputsAreClearErrorsAndLeaveNothingBehind) {
  auto missing = Cli(*alice_, {"data", "push", "x", *dir_ + "/does-not-exist"});
  EXPECT_EQ(missing.rc, 2);
  EXPECT_NE(missing.err.find("no such file or directory"), std::string::npos) << missing.err;
  std::string fifo = *dir_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto f = Cli(*alice_, {"data", "push", "x", fifo});
  EXPECT_EQ(f.rc, 2);
  EXPECT_NE(f.err.find("not a regular file or a directory"), std::string::npos) << f.err;
  // A FIFO inside a directory.
  fs::create_directories(*dir_ + "/withfifo");
  ASSERT_EQ(mkfifo((*dir_ + "/withfifo/p").c_str(), 0600), 0);
  auto fd = Cli(*alice_, {"data", "push", "x", *dir_ + "/withfifo"});
  EXPECT_NE(fd.rc, 0);
  EXPECT_NE(fd.err.find("not a regular file"), std::string::npos) << fd.err;
  // Bad names.
  EXPECT_EQ(Cli(*alice_, {"data", "push", "a/b", *dir_}).rc, 2);
  EXPECT_NE(Cli(*alice_, {"data", "push", "..", *dir_ + "/withfifo/../fifo"}).rc, 0);
  // Nothing was created.
  auto l = Cli(*alice_, {"--json", "data", "list"});
  ASSERT_EQ(l.rc, 0);
  for (const auto& d : json::parse(l.out)["datasets"])
    EXPECT_TRUE(d["name"] != "x" && d["name"] != "a" && d["name"] != "..") << l.out;

  // A pull into a non-empty directory is refused and leaves it as it was.
  std::string small = *dir_ + "/small";
  std::ofstream(small) << "data";
  ASSERT_EQ(Cli(*alice_, {"data", "push", "small", small}).rc, 0);
  std::string full = *dir_ + "/full";
  fs::create_directories(full);
  std::ofstream(full + "/keep") << "mine";
  auto p = Cli(*alice_, {"data", "pull", "small", full});
  EXPECT_EQ(p.rc, 2);
  EXPECT_NE(p.err.find("exists"), std::string::npos) << p.err;
  EXPECT_EQ(Tree(full), (std::map<std::string, std::string>{{"keep", "mine"}}));
  EXPECT_EQ(Cli(*alice_, {"data", "pull", "small:bad", *dir_ + "/t"}).rc, 2);
  EXPECT_EQ(Cli(*alice_, {"data", "pull", "small:9", *dir_ + "/t"}).rc, 3);
  EXPECT_FALSE(fs::exists(*dir_ + "/t"));
  EXPECT_EQ(CountEntries(*dir_, ".t.partial"), 0);
}

}  // namespace
}  // namespace vmgrid
