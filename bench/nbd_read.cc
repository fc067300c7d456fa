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

#include "common/subprocess.h"
#include "common/util.h"
#include "die.h"
#include "nbd_bench.h"
#include "stats.h"

using namespace vmgrid;
using namespace vmgrid::bench;
using nlohmann::json;

namespace {

constexpr char kWork[] = "/tmp/vmgrid-bench-nbd-read";

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

struct Cells {
  Samples nbdcopy, seq, qd1, qd16;
};

void Measure(const std::string& uri, const std::string& chunks_file, uint64_t size,
             int random_reads, Cells* c) {
  double copy = Must(NbdcopyMiBs(uri, size));
  json j = Must(RunReadBench(uri, chunks_file, random_reads));
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
  NbdExportPairOptions po;  // manifest "bench"
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
      po.source.open_chunks = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--workers")
      po.session_workers = std::atoi(next().c_str());
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
  po.image = image;
  po.work = std::string(kWork) + "/run";
  auto pair = Must(NbdExportPair::Start(po));
  // Copies: the table below is printed after the servers stopped.
  const Manifest m = pair->manifest();
  const std::string chunks_file = pair->chunks_file();
  const uint64_t data_chunks = pair->data_chunks();
  const std::string ours_uri = pair->ours_uri();
  const std::string qemu_uri = pair->qemu_uri();

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
  auto cs = pair->cache_stats();
  pair.reset();  // stops both servers

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
