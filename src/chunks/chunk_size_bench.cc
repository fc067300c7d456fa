// chunk_size_bench: measures what the chunk size costs and buys for real
// image files, to choose the default (see docs/chunk-store.md).
//
// For each image and chunk size it prints: chunk counts (total, non-zero,
// distinct), the dedup ratio, the manifest size, store throughput
// of non-zero data (ChunkImageFile into a fresh ChunkStore, fsync on), batched fetch
// throughput and single-chunk GET latency over loopback HTTP (ImageServer ->
// ChunkClient -> ChunkCache), and the bytes and round trips needed to serve
// a read trace: a recorded boot trace (record_boot_trace.sh) when given,
// plus N random 4 KiB reads of non-zero data. With --after (the disk after a
// boot), also the new chunks a second version costs.
//
// usage: chunk_size_bench [--image FILE [--trace FILE] [--after FILE]]...
//                         [--sizes 64K,256K,...] [--random-reads N] [--dir DIR] [--no-sync]
// Without --image: the tiny image's rootfs.raw (with its recorded boot
// trace and, if present, a post-boot disk) and vmlinux.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include "chunks/chunk_cache.h"
#include "chunks/chunk_client.h"
#include "chunks/chunk_store.h"
#include "chunks/image_catalog.h"
#include "chunks/image_server.h"
#include "chunks/manifest.h"
#include "common/util.h"

#ifndef VMGRID_CHUNKS_SOURCE_DIR
#define VMGRID_CHUNKS_SOURCE_DIR "src/chunks"
#endif

namespace vmgrid {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

struct ImageArg {
  std::string path, trace, after;
};

struct Read {
  uint64_t offset;
  uint64_t length;
};

std::vector<Read> LoadTrace(const std::string& path) {
  std::vector<Read> out;
  std::ifstream in(path);
  uint64_t off, len;
  while (in >> off >> len) out.push_back({off, len});
  return out;
}

// Cost of serving `reads` on demand from a cold cache: each chunk touched
// for the first time is one fetch (zero chunks are free).
struct TraceCost {
  uint64_t guest_bytes = 0;  // distinct 4 KiB pages read, in bytes
  uint64_t fetches = 0;
  uint64_t fetched_bytes = 0;
  double Amplification() const {
    return guest_bytes ? double(fetched_bytes) / double(guest_bytes) : 0;
  }
  // Serial misses: one round trip plus transfer each.
  double StallSeconds(double rtt_s, double bytes_per_s) const {
    return double(fetches) * rtt_s + double(fetched_bytes) / bytes_per_s;
  }
};

TraceCost Cost(const Manifest& m, const std::vector<Read>& reads) {
  TraceCost c;
  std::unordered_set<uint64_t> pages, chunks;
  for (const auto& r : reads) {
    if (r.length == 0 || r.offset >= m.size) continue;
    uint64_t end = std::min(m.size, r.offset + r.length);
    for (uint64_t p = r.offset / 4096; p <= (end - 1) / 4096; ++p)
      if (pages.insert(p).second) c.guest_bytes += 4096;
    for (uint64_t i = r.offset / m.chunk_size; i <= (end - 1) / m.chunk_size; ++i) {
      if (m.IsZero(i) || !chunks.insert(i).second) continue;
      c.fetches++;
      c.fetched_bytes += m.ChunkLength(i);
    }
  }
  return c;
}

// N random 4 KiB reads of non-zero 4 KiB blocks of the file.
std::vector<Read> RandomReads(const std::string& path, size_t n, uint64_t seed) {
  std::vector<uint64_t> blocks;
  (void)ForEachFileChunk(path, 4096, [&](size_t i, std::string_view, bool zero) {
    if (!zero) blocks.push_back(i);
    return Status::Ok();
  });
  std::vector<Read> out;
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n && !blocks.empty(); ++i)
    out.push_back({blocks[rng() % blocks.size()] * 4096, 4096});
  return out;
}

std::string Human(double bytes) {
  char buf[32];
  if (bytes >= 1 << 20)
    snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1 << 20));
  else
    snprintf(buf, sizeof buf, "%.0f KiB", bytes / 1024);
  return buf;
}

std::string SizeName(uint32_t cs) {
  return cs >= (1u << 20) ? std::to_string(cs >> 20) + "M" : std::to_string(cs >> 10) + "K";
}

uint64_t ParseSize(const std::string& s) {
  uint64_t v = std::strtoull(s.c_str(), nullptr, 10);
  char u = s.empty() ? 0 : s.back();
  if (u == 'K' || u == 'k') v <<= 10;
  if (u == 'M' || u == 'm') v <<= 20;
  return v;
}

struct Network {
  const char* name;
  double rtt_s;
  double bytes_per_s;
};
const Network kNetworks[] = {{"LAN 1Gb/s 0.2ms", 0.0002, 125e6},
                             {"WAN 100Mb/s 30ms", 0.030, 12.5e6}};

int Run(int argc, char** argv) {
  std::vector<ImageArg> images;
  std::vector<uint32_t> sizes = {64 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20};
  size_t random_reads = 1000;
  std::string base_dir = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
  bool sync = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        fprintf(stderr, "%s needs a value\n", a.c_str());
        exit(2);
      }
      return argv[++i];
    };
    if (a == "--image")
      images.push_back({next(), "", ""});
    else if (a == "--trace" && !images.empty())
      images.back().trace = next();
    else if (a == "--after" && !images.empty())
      images.back().after = next();
    else if (a == "--random-reads")
      random_reads = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--dir")
      base_dir = next();
    else if (a == "--no-sync")
      sync = false;
    else if (a == "--sizes") {
      sizes.clear();
      std::string list = next();
      for (size_t p = 0; p <= list.size();) {
        size_t q = list.find(',', p);
        if (q == std::string::npos) q = list.size();
        sizes.push_back(static_cast<uint32_t>(ParseSize(list.substr(p, q - p))));
        p = q + 1;
      }
    } else {
      fprintf(stderr,
              "usage: %s [--image FILE [--trace FILE] [--after FILE]]... [--sizes 64K,1M] "
              "[--random-reads N] [--dir DIR] [--no-sync]\n",
              argv[0]);
      return 2;
    }
  }
  if (images.empty()) {
    std::string tiny = "/work/main/build/images/tiny";
    std::string after = "/work/main/build-chunks/trace/tiny_boot_reads.txt.disk.raw";
    images.push_back({tiny + "/rootfs.raw",
                      std::string(VMGRID_CHUNKS_SOURCE_DIR) + "/testdata/tiny_boot_reads.txt",
                      FileExists(after) ? after : ""});
    images.push_back({tiny + "/vmlinux", "", ""});
  }
  for (uint32_t cs : sizes)
    if (!IsValidChunkSize(cs)) {
      fprintf(stderr, "invalid chunk size %u\n", cs);
      return 2;
    }

  for (const auto& img : images) {
    struct stat st;
    if (::stat(img.path.c_str(), &st) != 0) {
      fprintf(stderr, "cannot stat %s\n", img.path.c_str());
      return 1;
    }
    std::vector<Read> trace = img.trace.empty() ? std::vector<Read>{} : LoadTrace(img.trace);
    // Also warms the page cache, so the first chunk size is not charged for disk reads.
    std::vector<Read> random = RandomReads(img.path, random_reads, 42);
    printf("\n== %s: %s, %s allocated; boot trace: %s; %zu random 4 KiB reads of non-zero data\n",
           img.path.c_str(), Human(double(st.st_size)).c_str(),
           Human(double(st.st_blocks) * 512).c_str(),
           trace.empty() ? "none"
                         : (std::to_string(trace.size()) + " reads (" + img.trace + ")").c_str(),
           random.size());
    printf("%-6s %8s %8s %8s %10s %6s %9s %9s %9s %8s\n", "chunk", "chunks", "nonzero", "distinct",
           "stored", "dedup", "manifest", "store", "fetch", "GET");
    printf("%-6s %8s %8s %8s %10s %6s %9s %9s %9s %8s\n", "", "", "", "", "", "", "", "MB/s",
           "MB/s", "ms");
    struct Row {
      uint32_t cs;
      Manifest m;
      TraceCost boot, rnd;
      uint64_t delta_chunks = 0, delta_bytes = 0;
    };
    std::vector<Row> rows;
    for (uint32_t cs : sizes) {
      std::string work = base_dir + "/chunk-bench-" + std::to_string(getpid());
      (void)RemoveTree(work);
      ChunkStore::Options so;
      so.sync = sync;
      auto store = std::move(ChunkStore::Open(work + "/server", so)).value();
      auto t0 = Clock::now();
      auto m = ChunkImageFile(img.path, cs, *store);
      double store_s = Seconds(t0);
      if (!m.ok()) {
        fprintf(stderr, "%s\n", m.error().message.c_str());
        return 1;
      }
      m->name = "bench";
      m->version = 1;
      auto sst = store->stats();

      // Loopback HTTP: cold batched fetch of every chunk into a host cache,
      // then single GETs for latency.
      auto catalog = std::move(ImageCatalog::Open(work + "/server")).value();
      ImageServer server(*store, *catalog, [] {
        ImageServer::Options o;
        o.allow_anonymous = true;
        return o;
      }());
      (void)server.Start("127.0.0.1", 0);
      ChunkCache::Options co;
      co.capacity_bytes = 1ull << 40;
      auto cache = std::move(ChunkCache::Open(work + "/cache", co)).value();
      ChunkClient::Options cl;
      cl.connections = 4;
      cl.batch_chunks = std::max<size_t>(1, (4u << 20) / cs);  // ~4 MiB per batch
      double fetch_mbs = 0, get_ms = 0;
      {
        ChunkClient client(server.url(), "", cl);
        std::vector<std::string> all = cache->Missing(m->chunks);
        auto t1 = Clock::now();
        Status fs = client.FetchChunks(
            all, [&](const std::string& d, std::string data) { return cache->Insert(d, data); });
        double fetch_s = Seconds(t1);
        if (!fs.ok()) fprintf(stderr, "fetch: %s\n", fs.error().message.c_str());
        fetch_mbs = double(sst.bytes) / 1e6 / fetch_s;
        size_t n = std::min<size_t>(all.size(), 50);
        auto t2 = Clock::now();
        for (size_t i = 0; i < n; ++i) (void)client.FetchChunk(all[i]);
        get_ms = n ? Seconds(t2) * 1000 / double(n) : 0;
      }
      server.Stop();

      Row row{cs, *m, Cost(*m, trace), Cost(*m, random)};
      if (!img.after.empty()) {
        uint64_t before_chunks = store->stats().chunks, before_bytes = store->stats().bytes;
        auto m2 = ChunkImageFile(img.after, cs, *store);
        if (m2.ok()) {
          row.delta_chunks = store->stats().chunks - before_chunks;
          row.delta_bytes = store->stats().bytes - before_bytes;
        }
      }
      std::string manifest_json = m->ToJson().dump();
      printf("%-6s %8zu %8lu %8lu %10s %6.2f %9s %9.0f %9.0f %8.2f\n", SizeName(cs).c_str(),
             m->chunks.size(), (unsigned long)m->NonZeroChunks(), (unsigned long)sst.chunks,
             Human(double(sst.bytes)).c_str(), DedupRatio(m->NonZeroBytes(), sst.bytes),
             Human(double(manifest_json.size())).c_str(), double(m->NonZeroBytes()) / 1e6 / store_s,
             fetch_mbs, get_ms);
      rows.push_back(std::move(row));
      catalog.reset();
      cache.reset();
      store.reset();
      (void)RemoveTree(work);
    }
    auto print_cost = [&](const char* title, TraceCost Row::*which) {
      printf("\n%s\n", title);
      printf("%-6s %8s %10s %10s %7s %7s", "chunk", "fetches", "guest", "fetched", "ampl",
             "%image");
      for (const auto& n : kNetworks) printf(" %18s", n.name);
      printf("\n");
      for (const auto& r : rows) {
        const TraceCost& c = r.*which;
        printf("%-6s %8lu %10s %10s %7.1f %6.2f%%", SizeName(r.cs).c_str(),
               (unsigned long)c.fetches, Human(double(c.guest_bytes)).c_str(),
               Human(double(c.fetched_bytes)).c_str(), c.Amplification(),
               100.0 * double(c.fetched_bytes) / double(r.m.size));
        for (const auto& n : kNetworks) printf(" %16.2fs ", c.StallSeconds(n.rtt_s, n.bytes_per_s));
        printf("\n");
      }
    };
    if (!trace.empty())
      print_cost(
          "boot trace, cold cache, on demand (stall = serial misses x (RTT + chunk/bandwidth)):",
          &Row::boot);
    if (!random.empty()) print_cost("random 4 KiB reads of non-zero data, cold cache:", &Row::rnd);
    if (!img.after.empty()) {
      printf("\nsecond version (%s): new chunks to upload / fetch\n", img.after.c_str());
      for (const auto& r : rows)
        printf("%-6s %8lu chunks %10s\n", SizeName(r.cs).c_str(), (unsigned long)r.delta_chunks,
               Human(double(r.delta_bytes)).c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace vmgrid

int main(int argc, char** argv) { return vmgrid::Run(argc, argv); }
