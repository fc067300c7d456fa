// HostImages against a real ImageServer on loopback, with qemu-img as the
// NBD client of its exports (the same backing string QEMU gets).
#include "agent/host_images.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "agent/vm_runner.h"
#include "chunks/chunk_client.h"
#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/image_server.h"
#include "chunks/test_dir.h"
#include "common/subprocess.h"
#include "common/util.h"

namespace vmgrid {
namespace {

using nlohmann::json;

class HostImagesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ChunkStore::Options so;
    so.sync = false;
    store_ = std::move(ChunkStore::Open(dir_ / "server", so)).value();
    catalog_ = std::move(ImageCatalog::Open(dir_ / "server")).value();
    server_ =
        std::make_unique<ImageServer>(*store_, *catalog_, ImageServer::Options{.token = "sekrit"});
    ASSERT_TRUE(server_->Start("127.0.0.1", 0).ok());
    // 3 MiB of data with a hole in the middle.
    image_ = TestBytes(1 << 20, 1) + std::string(1 << 20, '\0') +
             TestBytes((1 << 20) + 4608, 2);  // disks are whole sectors
    WriteTestFile(dir_ / "disk.raw", image_);
    ChunkClient pusher(server_->url(), "sekrit");
    auto m = pusher.UploadImageFile(dir_ / "disk.raw", "img-disk", kDefaultChunkSize);
    ASSERT_TRUE(m.ok()) << m.error().message;
    disk_ = BlobRef{m->name, m->version, m->Digest(), m->size};
  }
  std::unique_ptr<HostImages> Open() {
    HostImages::Options o;
    o.state_dir = dir_ / "host";
    o.server_url = server_->url();
    o.token = "sekrit";
    auto h = HostImages::Open(o);
    EXPECT_TRUE(h.ok()) << h.error().message;
    return h.ok() ? std::move(h).value() : nullptr;
  }
  HostImages::VmNbdEndpoint Endpoint(const std::string& vm) { return {dir_ / (vm + ".sock")}; }
  // Runs an NBD client of libnbd (nbdinfo): its output, or the failure.
  Result<std::string> NbdInfo(const std::vector<std::string>& args) {
    std::vector<std::string> argv{"nbdinfo"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProcessChecked(argv, std::chrono::seconds(30));
  }
  // Reads the whole export through qemu-img, as QEMU reads a backing file.
  Result<std::string> ReadThroughQemuImg(const std::string& backing) {
    std::string out = dir_ / "out.raw";
    unlink(out.c_str());
    auto r = RunProcessChecked({"qemu-img", "convert", "-f", "raw", backing, "-O", "raw", out},
                               std::chrono::seconds(60));
    if (!r.ok()) return r.error();
    return ReadFile(out, 64 << 20);
  }

  TestDir dir_;
  ChunkStorePtr store_;
  ImageCatalogPtr catalog_;
  std::unique_ptr<ImageServer> server_;
  std::string image_;
  BlobRef disk_;
};

TEST_F(HostImagesTest, ExportServesTheImageLazilyAndIsReferenceCounted) {
  auto h = Open();
  ASSERT_TRUE(h);
  auto backing = h->AcquireDisk(disk_, "vm-1", "boot", Endpoint("vm-1"));
  ASSERT_TRUE(backing.ok()) << backing.error().message;
  EXPECT_EQ(backing->rfind("json:", 0), 0u);
  EXPECT_NE(backing->find(disk_.digest), std::string::npos);
  json st = h->StatsJson();
  EXPECT_EQ(st["cache"]["chunks"], 0) << "nothing is fetched before a read";
  ASSERT_EQ(st["exports"].size(), 1u);

  auto bytes = ReadThroughQemuImg(*backing);
  ASSERT_TRUE(bytes.ok()) << bytes.error().message;
  EXPECT_TRUE(*bytes == image_);
  st = h->StatsJson();
  EXPECT_GT(st["cache"]["misses"].get<int>(), 0);
  EXPECT_EQ(st["cache"]["verification_failures"], 0);

  const uint64_t read = st["nbd"]["bytes_read"].get<uint64_t>();
  EXPECT_GE(read, image_.size());

  // A second VM shares the export; it goes away with the last user.
  ASSERT_TRUE(h->AcquireDisk(disk_, "vm-2", "boot", Endpoint("vm-2")).ok());
  EXPECT_EQ(h->StatsJson()["exports"][0]["vms"], 2);
  h->ReleaseDisk("vm-1");
  EXPECT_EQ(h->StatsJson()["exports"].size(), 1u);
  // The host's NBD totals keep what a released VM's server read.
  EXPECT_EQ(h->StatsJson()["nbd"]["bytes_read"].get<uint64_t>(), read);
  h->ReleaseDisk("vm-2");
  EXPECT_EQ(h->StatsJson()["exports"].size(), 0u);
  EXPECT_FALSE(ReadThroughQemuImg(*backing).ok()) << "a removed export must not be served";

  // The first reader's order was recorded once, as the boot hint.
  backing = h->AcquireDisk(disk_, "vm-3", "boot", Endpoint("vm-3"));
  ASSERT_TRUE(backing.ok()) << backing.error().message;
  ASSERT_TRUE(ReadThroughQemuImg(*backing).ok());
  h->RecordPrefetch("vm-3");
  ChunkClient reader(server_->url(), "sekrit");
  auto hint = reader.GetPrefetch(disk_.name, disk_.version, "boot");
  ASSERT_TRUE(hint.ok()) << hint.error().message;
  EXPECT_FALSE(hint->empty());
}

// Issue 9: a VM's QEMU reaches its disk through a socket that lists and
// opens only that VM's export; the host-wide socket (every export) is the
// agent's alone. Checked with libnbd's nbdinfo as the client. On the old
// code every VM used STATE/host/nbd.sock (0660, group of QEMU's user), where
// `nbdinfo --list` showed every export of the host.
TEST_F(HostImagesTest, EachVmSocketServesOnlyThatVmsExport) {
  if (RunProcessChecked({"nbdinfo", "--version"}, std::chrono::seconds(10)).ok() == false)
    GTEST_SKIP() << "nbdinfo (libnbd-bin) is not installed";
  // A second, private image for VM B.
  WriteTestFile(dir_ / "private.raw", TestBytes(1 << 20, 7));
  ChunkClient pusher(server_->url(), "sekrit");
  auto m = pusher.UploadImageFile(dir_ / "private.raw", "private-disk", kDefaultChunkSize);
  ASSERT_TRUE(m.ok()) << m.error().message;
  BlobRef secret{m->name, m->version, m->Digest(), m->size};

  auto h = Open();
  ASSERT_TRUE(h);
  std::string a_sock = dir_ / "a.sock", b_sock = dir_ / "b.sock";
  auto a = h->AcquireDisk(disk_, "vm-a", "", {a_sock});
  ASSERT_TRUE(a.ok()) << a.error().message;
  auto b = h->AcquireDisk(secret, "vm-b", "", {b_sock});
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_NE(a->find(a_sock), std::string::npos) << "the backing names the VM's socket: " << *a;

  // Listing A's socket shows A's export only.
  auto list = NbdInfo({"--list", "nbd+unix:///?socket=" + a_sock});
  ASSERT_TRUE(list.ok()) << list.error().message;
  EXPECT_NE(list->find(disk_.digest), std::string::npos) << *list;
  EXPECT_EQ(list->find(secret.digest), std::string::npos) << "VM A lists VM B's export:\n" << *list;
  // Opening B's export (NBD_OPT_GO) on A's socket is refused; on B's it works.
  EXPECT_FALSE(NbdInfo({"--size", "nbd+unix:///" + secret.digest + "?socket=" + a_sock}).ok());
  auto size = NbdInfo({"--size", "nbd+unix:///" + secret.digest + "?socket=" + b_sock});
  ASSERT_TRUE(size.ok()) << size.error().message;
  EXPECT_EQ(std::stoull(*size), secret.size);
  // Reading B's bytes through A's socket fails, as a QEMU would try.
  EXPECT_FALSE(ReadThroughQemuImg(h->BackingFor(secret.digest, a_sock)).ok());
  auto bytes = ReadThroughQemuImg(*a);
  ASSERT_TRUE(bytes.ok()) << bytes.error().message;
  EXPECT_TRUE(*bytes == image_);

  // Modes: the VM sockets and the host-wide socket are 0600 (owner only).
  for (const std::string& sock : {a_sock, b_sock, h->socket_path()}) {
    struct stat st {};
    ASSERT_EQ(::stat(sock.c_str(), &st), 0) << sock;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << sock;
  }

  // Released: A's socket is gone and B keeps being served.
  h->ReleaseDisk("vm-a");
  EXPECT_FALSE(FileExists(a_sock));
  EXPECT_TRUE(NbdInfo({"--size", "nbd+unix:///" + secret.digest + "?socket=" + b_sock}).ok());

  // Agent restart: a new HostImages re-exports on the same path (the stale
  // socket is replaced) and still serves B's export only there.
  h.reset();
  h = Open();
  ASSERT_TRUE(h);
  ASSERT_TRUE(h->AcquireDisk(secret, "vm-b", "", {b_sock}).ok());
  ASSERT_TRUE(h->AcquireDisk(disk_, "vm-a", "", {a_sock}).ok());
  list = NbdInfo({"--list", "nbd+unix:///?socket=" + b_sock});
  ASSERT_TRUE(list.ok()) << list.error().message;
  EXPECT_NE(list->find(secret.digest), std::string::npos);
  EXPECT_EQ(list->find(disk_.digest), std::string::npos) << *list;
}

TEST_F(HostImagesTest, MaterializeVerifiesAndSurvivesReopen) {
  auto h = Open();
  ASSERT_TRUE(h);
  auto path = h->Materialize(disk_, ".raw", 0644);
  ASSERT_TRUE(path.ok()) << path.error().message;
  EXPECT_TRUE(*ReadFile(*path, 64 << 20) == image_);
  // A reference whose digest the server does not have fails cleanly.
  BlobRef bogus = disk_;
  bogus.digest = std::string(64, 'a');
  EXPECT_FALSE(h->Materialize(bogus, ".raw", 0644).ok());
  EXPECT_FALSE(FileExists(dir_ / ("host/blobs/" + bogus.digest + ".raw")));

  // Corrupt a cached chunk: a fresh copy is refetched, the failure counted.
  h.reset();
  h = Open();
  ASSERT_TRUE(h);
  auto m = catalog_->Get(disk_.name, disk_.version);
  ASSERT_TRUE(m.ok());
  std::string chunk =
      dir_ / ("host/chunks/chunks/" + m->chunks[0].substr(0, 2) + "/" + m->chunks[0]);
  auto data = ReadFile(chunk, 8 << 20);
  ASSERT_TRUE(data.ok());
  std::string bad = *data;
  bad[100] = static_cast<char>(bad[100] ^ 1);
  ASSERT_TRUE(WriteFileAtomic(chunk, bad).ok());
  ASSERT_TRUE(h->CopyTo(disk_, dir_ / "copy.raw").ok());
  EXPECT_TRUE(*ReadFile(dir_ / "copy.raw", 64 << 20) == image_);
  EXPECT_GE(h->StatsJson()["cache"]["verification_failures"].get<int>(), 1);
}

TEST_F(HostImagesTest, PushPublishesANewVersion) {
  auto h = Open();
  ASSERT_TRUE(h);
  WriteTestFile(dir_ / "state.bin", TestBytes(700000, 9));
  auto ref = h->Push(dir_ / "state.bin", "ckpt-memory");
  ASSERT_TRUE(ref.ok()) << ref.error().message;
  EXPECT_EQ(ref->version, 1u);
  EXPECT_EQ(ref->size, 700000u);
  uint64_t uploaded = server_->stats().chunks_uploaded;
  auto again = h->Push(dir_ / "state.bin", "ckpt-memory");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->version, 2u);  // published versions are immutable
  EXPECT_EQ(server_->stats().chunks_uploaded, uploaded) << "same bytes: no chunk is sent twice";
}

TEST(BlobRefs, StrictParsing) {
  json good = {
      {"name", "img-disk"}, {"version", 1}, {"digest", std::string(64, 'b')}, {"size", 10}};
  ASSERT_TRUE(BlobRefFromJson(good, "disk").ok());
  for (auto [field, value] : std::vector<std::pair<std::string, json>>{{"name", "../x"},
                                                                       {"version", 0},
                                                                       {"version", "1"},
                                                                       {"digest", "abc"},
                                                                       {"size", -1},
                                                                       {"extra", 1}}) {
    json bad = good;
    bad[field] = value;
    EXPECT_FALSE(BlobRefFromJson(bad, "disk").ok()) << field << "=" << value.dump();
  }
  json no_size = good;
  no_size.erase("size");
  EXPECT_FALSE(BlobRefFromJson(no_size, "disk").ok());
  EXPECT_FALSE(BlobsFromJson({{"kernel", good}}).ok()) << "a disk is required";
  EXPECT_FALSE(BlobsFromJson({{"disk", good}, {"ckpt_memory", good}}).ok())
      << "memory without disk delta";
  EXPECT_FALSE(BlobsFromJson({{"disk", good}, {"rootkit", good}}).ok());
  EXPECT_TRUE(BlobsFromJson({{"disk", good}, {"ckpt_memory", good}, {"ckpt_disk", good}}).ok());
}

}  // namespace
}  // namespace vmgrid
