#include "nbd_bench.h"

#include <chrono>
#include <fstream>
#include <thread>

#include "common/subprocess.h"
#include "common/util.h"
#include "stats.h"

namespace vmgrid::bench {

Result<std::unique_ptr<NbdExportPair>> NbdExportPair::Start(const NbdExportPairOptions& options) {
  const std::string& work = options.work;
  (void)RemoveTree(work);
  if (auto st = MakeDirs(work); !st.ok()) return st.error().Wrap("mkdir " + work);
  std::unique_ptr<NbdExportPair> p(new NbdExportPair());
  VMG_ASSIGN_OR_RETURN(p->store_, ChunkStore::Open(work + "/store"));
  VMG_ASSIGN_OR_RETURN(p->manifest_, ChunkImageFile(options.image, kDefaultChunkSize, *p->store_));
  Manifest& m = p->manifest_;
  m.name = options.manifest_name;
  m.version = 1;
  ChunkCache::Options co;
  co.capacity_bytes = 64ull << 30;
  VMG_ASSIGN_OR_RETURN(p->cache_, ChunkCache::Open(work + "/cache", co));
  ChunkStore* s = p->store_.get();
  ChunkCache::FetchFn fetch = [s](const std::string& d) { return s->Get(d); };
  p->chunks_file_ = work + "/data-chunks.txt";
  std::ofstream cf(p->chunks_file_);
  cf << m.chunk_size << "\n";
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    if (m.IsZero(i)) continue;
    cf << i << "\n";
    p->data_chunks_++;
    VMG_RETURN_IF_ERROR(p->cache_->Get(m.chunks[i], fetch));  // warm
  }
  cf.close();
  VMG_ASSIGN_OR_RETURN(p->source_,
                       ManifestBlockSource::Create(m, *p->cache_, fetch, options.source));
  nbd::NbdServerOptions no;
  no.unix_socket_path = work + "/ours.sock";
  if (options.session_workers >= 0) no.session_workers = options.session_workers;
  p->server_ = std::make_unique<nbd::NbdServer>(no);
  VMG_RETURN_IF_ERROR(p->server_->AddExport("disk", p->source_));
  VMG_RETURN_IF_ERROR(p->server_->Start());
  const std::string qsock = work + "/qemu-nbd.sock";
  VMG_ASSIGN_OR_RETURN(
      p->qemu_nbd_,
      ChildProcess::Spawn({"qemu-nbd", "--read-only", "--persistent", "--shared=8", "--format=raw",
                           "--export-name=disk", "--socket=" + qsock, options.image},
                          work + "/qemu-nbd.log"));
  for (int i = 0; i < 200 && !FileExists(qsock); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  p->ours_uri_ = "nbd+unix:///disk?socket=" + no.unix_socket_path;
  p->qemu_uri_ = "nbd+unix:///disk?socket=" + qsock;
  return p;
}

NbdExportPair::~NbdExportPair() {
  if (server_) server_->Stop();
  if (qemu_nbd_) (void)qemu_nbd_->Terminate(std::chrono::seconds(5));
}

Result<nlohmann::json> RunReadBench(const std::string& uri, const std::string& chunks_file,
                                    int random_reads) {
  std::string script = std::string(VMGRID_SOURCE_DIR) + "/bench/nbd_read_bench.py";
  auto r = RunProcessChecked({"/usr/bin/python3", script, uri, "--data-chunks", chunks_file,
                              "--random", std::to_string(random_reads)},
                             std::chrono::minutes(20));
  if (!r.ok()) {
    Error e = r.error().Wrap("nbd_read_bench.py");
    e.message += " (python3-libnbd installed?)";
    return e;
  }
  nlohmann::json j = nlohmann::json::parse(*r, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return MakeError(ErrorCode::kInternal, "nbd_read_bench.py printed no JSON: " + *r);
  return j;
}

Result<double> NbdcopyMiBs(const std::string& uri, uint64_t size) {
  auto t0 = Clock::now();
  auto r = RunProcessChecked({"nbdcopy", "--no-extents", uri, "null:"}, std::chrono::minutes(20));
  if (!r.ok()) return r.error().Wrap("nbdcopy");
  return static_cast<double>(size) / (1 << 20) / Since(t0);
}

}  // namespace vmgrid::bench
