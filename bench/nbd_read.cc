// NBD read throughput of our export (ChunkStore -> ChunkCache ->
// ManifestBlockSource -> NbdServer) against qemu-nbd serving the same raw
// file, in one run: nbdcopy of the whole export, then bench/nbd_read_bench.py
// (sequential 1 MiB reads at queue depth 8, random 4 KiB reads at depth 1
// and 16 inside the chunks that hold data). Each round runs both servers,
// in alternating order (qemu-nbd first in even rounds); after one untimed
// warm-up round, --runs rounds are timed. Prints median (Q1-Q3) per cell and
// the ratio of the medians, plus the load average before and after. Before
// timing, `qemu-img compare` checks our export against the raw file.
//
// Usage: nbd_read [--data-mib N] [--hole-mib N] [--runs N] [--random-reads N] [--image PATH]
// Without --image, it makes a raw image of N MiB of random data followed by
// a hole of --hole-mib (kept in /tmp/vmgrid-bench-nbd-read between runs).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "chunks/chunk_cache.h"
#include "chunks/chunk_store.h"
#include "chunks/manifest.h"
#include "chunks/manifest_block_source.h"
#include "common/child_process.h"
#include "common/subprocess.h"
#include "common/util.h"
#include "nbd/nbd_server.h"
#include "stats.h"

using namespace vmgrid;
using namespace vmgrid::bench;
using nlohmann::json;

namespace {

constexpr char kWork[] = "/tmp/vmgrid-bench-nbd-read";

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "nbd_read: %s\n", what.c_str());
  std::exit(1);
}

std::string LoadAverage() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

void MakeImage(const std::string& path, uint64_t data_mib, uint64_t hole_mib) {
  struct stat st {};
  const uint64_t size = (data_mib + hole_mib) << 20;
  if (stat(path.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == size) return;
  int in = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  int out = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (in < 0 || out < 0) Die("cannot create " + path);
  std::string buf(1 << 20, '\0');
  for (uint64_t i = 0; i < data_mib; ++i) {
    if (read(in, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) Die("urandom");
    if (write(out, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) Die("write");
  }
  if (ftruncate(out, static_cast<off_t>(size)) != 0) Die("ftruncate");
  close(in);
  close(out);
}

json ReadBench(const std::string& uri, const std::string& chunks_file, int random_reads) {
  std::string script = std::string(VMGRID_SOURCE_DIR) + "/bench/nbd_read_bench.py";
  auto r = RunProcessChecked({"/usr/bin/python3", script, uri, "--data-chunks", chunks_file,
                              "--random", std::to_string(random_reads)},
                             std::chrono::minutes(20));
  if (!r.ok()) Die("nbd_read_bench.py: " + r.error().message + " (python3-libnbd installed?)");
  return json::parse(*r);
}

double NbdcopyMiBs(const std::string& uri, uint64_t size) {
  auto t0 = Clock::now();
  auto r = RunProcessChecked({"nbdcopy", "--no-extents", uri, "null:"}, std::chrono::minutes(20));
  if (!r.ok()) Die("nbdcopy: " + r.error().message);
  return static_cast<double>(size) / (1 << 20) / Since(t0);
}

struct Cells {
  Samples nbdcopy, seq, qd1, qd16;
};

void Measure(const std::string& uri, const std::string& chunks_file, uint64_t size,
             int random_reads, Cells* c) {
  double copy = NbdcopyMiBs(uri, size);
  json j = ReadBench(uri, chunks_file, random_reads);
  if (!c) return;
  c->nbdcopy.v.push_back(copy);
  c->seq.v.push_back(j["seq"]["mib_s"].get<double>());
  c->qd1.v.push_back(j["rand_qd1"]["iops"].get<double>());
  c->qd16.v.push_back(j["rand_qd16"]["iops"].get<double>());
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t data_mib = 1024, hole_mib = 256;
  int runs = 7, random_reads = 20000;
  ManifestBlockSource::Options so;
  int workers = -1;  // NbdServerOptions::session_workers; -1: the default
  std::string image;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--data-mib")
      data_mib = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--hole-mib")
      hole_mib = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--runs")
      runs = std::max(1, std::atoi(next().c_str()));
    else if (a == "--random-reads")
      random_reads = std::max(16, std::atoi(next().c_str()));
    else if (a == "--open-chunks")
      so.open_chunks = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--workers")
      workers = std::atoi(next().c_str());
    else if (a == "--image")
      image = next();
    else
      Die("usage: nbd_read [--data-mib N] [--hole-mib N] [--runs N] [--random-reads N] "
          "[--open-chunks N] [--workers N] [--image PATH]");
  }
  if (!MakeDirs(kWork).ok()) Die(std::string("mkdir ") + kWork);
  if (image.empty()) {
    image = std::string(kWork) + "/image.raw";
    MakeImage(image, data_mib, hole_mib);
  }
  const std::string work = std::string(kWork) + "/run";
  (void)RemoveTree(work);
  if (!MakeDirs(work).ok()) Die("mkdir " + work);

  auto store = ChunkStore::Open(work + "/store");
  if (!store.ok()) Die(store.error().message);
  auto draft = ChunkImageFile(image, kDefaultChunkSize, **store);
  if (!draft.ok()) Die(draft.error().message);
  Manifest m = *draft;
  m.name = "bench";
  m.version = 1;
  ChunkCache::Options co;
  co.capacity_bytes = 64ull << 30;
  auto cache = ChunkCache::Open(work + "/cache", co);
  if (!cache.ok()) Die(cache.error().message);
  ChunkStore* s = store->get();
  ChunkCache::FetchFn fetch = [s](const std::string& d) { return s->Get(d); };
  const std::string chunks_file = work + "/data-chunks.txt";
  std::ofstream cf(chunks_file);
  cf << m.chunk_size << "\n";
  uint64_t data_chunks = 0;
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    if (m.IsZero(i)) continue;
    cf << i << "\n";
    data_chunks++;
    if (auto g = (*cache)->Get(m.chunks[i], fetch); !g.ok()) Die(g.error().message);
  }
  cf.close();
  auto source = ManifestBlockSource::Create(m, **cache, fetch, so);
  if (!source.ok()) Die(source.error().message);
  nbd::NbdServerOptions no;
  no.unix_socket_path = work + "/ours.sock";
  if (workers >= 0) no.session_workers = workers;
  nbd::NbdServer server(no);
  if (auto st = server.AddExport("disk", *source); !st.ok()) Die(st.error().message);
  if (auto st = server.Start(); !st.ok()) Die(st.error().message);
  const std::string qsock = work + "/qemu-nbd.sock";
  auto qemu_nbd =
      ChildProcess::Spawn({"qemu-nbd", "--read-only", "--persistent", "--shared=8", "--format=raw",
                           "--export-name=disk", "--socket=" + qsock, image},
                          work + "/qemu-nbd.log");
  if (!qemu_nbd.ok()) Die(qemu_nbd.error().message);
  for (int i = 0; i < 200 && !FileExists(qsock); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  const std::string ours_uri = "nbd+unix:///disk?socket=" + no.unix_socket_path;
  const std::string qemu_uri = "nbd+unix:///disk?socket=" + qsock;

  // What is measured must be right: QEMU's NBD client (structured replies,
  // so the zero chunks arrive as OFFSET_HOLE) compares our export with the file.
  auto cmp = RunProcessChecked({"qemu-img", "compare", "-f", "raw", "-F", "raw", image, ours_uri},
                               std::chrono::minutes(10));
  if (!cmp.ok()) Die("qemu-img compare of the export with the image: " + cmp.error().message);
  std::fprintf(stderr, "qemu-img compare: %s", cmp->c_str());

  const std::string load_before = LoadAverage();
  auto t0 = Clock::now();
  // Warm-up round (untimed): page cache for both; our cache's first read of
  // each chunk file hashes it once.
  Measure(qemu_uri, chunks_file, m.size, random_reads, nullptr);
  Measure(ours_uri, chunks_file, m.size, random_reads, nullptr);
  Cells ours, qemu;
  for (int r = 0; r < runs; ++r) {
    if (r % 2 == 0) {
      Measure(qemu_uri, chunks_file, m.size, random_reads, &qemu);
      Measure(ours_uri, chunks_file, m.size, random_reads, &ours);
    } else {
      Measure(ours_uri, chunks_file, m.size, random_reads, &ours);
      Measure(qemu_uri, chunks_file, m.size, random_reads, &qemu);
    }
    std::fprintf(stderr, "round %d/%d done (%.0f s)\n", r + 1, runs, Since(t0));
  }
  const std::string load_after = LoadAverage();
  auto cs = (*cache)->stats();
  server.Stop();
  (void)(*qemu_nbd)->Terminate(std::chrono::seconds(5));

  std::printf(
      "image: %.0f MiB (%llu data chunks of %u KiB = %.0f MiB of data, the rest a hole), %d "
      "timed rounds after one warm-up, qemu-nbd and vmgrid alternating first\n",
      static_cast<double>(m.size) / (1 << 20), static_cast<unsigned long long>(data_chunks),
      m.chunk_size >> 10, static_cast<double>(data_chunks) * m.chunk_size / (1 << 20), runs);
  std::printf("load average before: %s, after: %s; whole run %.0f s\n", load_before.c_str(),
              load_after.c_str(), Since(t0));
  std::printf("chunk cache: %llu file hashes, %llu hits, %llu verification failures\n\n",
              static_cast<unsigned long long>(cs.file_hashes),
              static_cast<unsigned long long>(cs.hits),
              static_cast<unsigned long long>(cs.verification_failures));
  std::printf(
      "| measure | vmgrid export, median (Q1–Q3) | qemu-nbd, median (Q1–Q3) | ratio of medians "
      "|\n");
  std::printf("|---|---|---|---|\n");
  auto row = [](const char* what, const Samples& a, const Samples& b, const char* f) {
    std::printf("| %s | %s | %s | %.2fx |\n", what, a.MedianIqr(f).c_str(), b.MedianIqr(f).c_str(),
                b.Median() > 0 ? a.Median() / b.Median() : 0.0);
  };
  row("nbdcopy, MiB/s", ours.nbdcopy, qemu.nbdcopy, "%.0f");
  row("sequential 1 MiB QD8, MiB/s", ours.seq, qemu.seq, "%.0f");
  row("random 4 KiB QD1, IOPS", ours.qd1, qemu.qd1, "%.0f");
  row("random 4 KiB QD16, IOPS", ours.qd16, qemu.qd16, "%.0f");
  std::printf("\nper round (vmgrid / qemu-nbd): ");
  for (size_t i = 0; i < ours.seq.v.size(); ++i)
    std::printf("[seq %.0f/%.0f qd1 %.0f/%.0f qd16 %.0f/%.0f] ", ours.seq.v[i], qemu.seq.v[i],
                ours.qd1.v[i], qemu.qd1.v[i], ours.qd16.v[i], qemu.qd16.v[i]);
  std::printf("\n");
  return 0;
}
