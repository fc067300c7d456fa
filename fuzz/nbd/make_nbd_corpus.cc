// Writes hand-made seeds for fuzz_nbd_protocol into the directory given as
// argv[1]: one file per client conversation, each prefixed with the chunking
// byte the fuzz target reads first (0xff: unchunked, 0x03: 4-byte reads).
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "nbd/nbd_protocol.h"

using namespace vmgrid::nbd;

namespace {

std::string Flags() { return BuildClientFlags(kClientFixedNewstyle | kClientNoZeroes); }
std::string Go(const std::string& name, std::vector<uint16_t> info = {kInfoBlockSize}) {
  return BuildOption(kOptGo, BuildInfoRequestData(name, info));
}

std::string ReplyChunks() {
  std::string out;
  auto data = [&](uint64_t offset, uint32_t n, bool done) {
    auto h = BuildReadChunkHeader(9, offset, n, done);
    out.append(h.data(), h.size());
    out.append(n, 'd');
  };
  data(4096, 1000, false);
  auto hole = BuildHoleChunk(9, 5096, 30000, false);
  out.append(hole.data(), hole.size());
  data(35096, 65536 - 31000, true);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  std::string dir = argv[1];
  std::vector<std::pair<std::string, std::string>> seeds = {
      {"go_read_disc", Flags() + Go("disk") + BuildRequest(kCmdRead, 1, 0, 4096) +
                           BuildRequest(kCmdRead, 2, 65536, 3) + BuildRequest(kCmdFlush, 3, 0, 0) +
                           BuildRequest(kCmdDisc, 4, 0, 0)},
      {"export_name_zeroes", BuildClientFlags(kClientFixedNewstyle) +
                                 BuildOption(kOptExportName, "disk") +
                                 BuildRequest(kCmdRead, 1, 512, 512)},
      {"list_info_abort", Flags() + BuildOption(kOptList, "") +
                              BuildOption(kOptInfo, BuildInfoRequestData("huge", {3, 1, 2})) +
                              BuildOption(kOptInfo, BuildInfoRequestData("nope", {})) +
                              BuildOption(kOptAbort, "")},
      {"unsupported_options",
       Flags() + BuildOption(kOptStructuredReply, "") + BuildOption(kOptStartTls, "") +
           BuildOption(kOptSetMetaContext, BuildInfoRequestData("disk", {})) +
           BuildOption(0x1234, "xyz") + Go("")},
      {"hostile_requests",
       Flags() + Go("huge") + BuildRequest(kCmdRead, 1, ~0ull - 10, 4096) +
           BuildRequest(kCmdRead, 2, ~0ull - 4096, 4096) + BuildRequest(kCmdRead, 3, 0, ~0u) +
           BuildRequest(kCmdWrite, 4, 0, 8) + "12345678" + BuildRequest(kCmdTrim, 5, 0, 512) +
           BuildRequest(kCmdWriteZeroes, 6, 0, 512) + BuildRequest(kCmdCache, 7, 0, 512) +
           BuildRequest(kCmdBlockStatus, 8, 0, 512) + BuildRequest(kCmdRead, 9, 0, 512, 4)},
      {"flaky_reads", Flags() + Go("flaky") + BuildRequest(kCmdRead, 1, 1, 512) +
                          BuildRequest(kCmdRead, 2, 1024, 512)},
      {"empty_export",
       Flags() + Go("empty") + BuildRequest(kCmdRead, 1, 0, 0) + BuildRequest(kCmdRead, 2, 0, 1)},
      {"oversized_option", Flags() + BuildOption(kOptGo, std::string(5000, 'g')) + Go("disk")},
      {"sparse_structured", Flags() + BuildOption(kOptStructuredReply, "") + Go("sparse") +
                                BuildRequest(kCmdRead, 1, 4000, 9000) +
                                BuildRequest(kCmdRead, 2, 4097, 4097) +
                                BuildRequest(kCmdRead, 3, 0, 65536)},
      // Read by the target's second half as a server's reply to a READ of
      // 64 KiB at 4096: data, a hole, data, the last chunk DONE.
      {"reply_chunks", ReplyChunks()},
  };
  for (auto& [name, bytes] : seeds) {
    for (char chunking : {'\xff', '\x03'}) {
      std::string path = dir + "/" + name + (chunking == '\x03' ? "_chunked" : "");
      std::ofstream(path, std::ios::binary) << chunking << bytes;
    }
  }
  return 0;
}
