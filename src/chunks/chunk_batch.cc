#include "chunks/chunk_batch.h"

#include <nlohmann/json.hpp>

#include "chunks/chunk_codec.h"
#include "chunks/chunk_digest.h"

namespace vmgrid {

using nlohmann::json;

namespace {
constexpr std::string_view kIdentity = "identity";
}  // namespace

std::string EncodeBatchHeader(const std::vector<std::string>& digests,
                              const std::vector<uint64_t>& lengths, const std::vector<bool>* zstd) {
  json h = {{"digests", digests}, {"lengths", lengths}};
  if (zstd) {
    json e = json::array();
    for (bool z : *zstd) e.push_back(std::string(z ? kZstdEncoding : kIdentity));
    h["encodings"] = std::move(e);
  }
  return h.dump() + "\n";
}

Result<std::vector<BatchEntry>> DecodeBatchAnswer(std::string_view body,
                                                  const std::vector<std::string>& asked,
                                                  bool asked_zstd) {
  auto bad = [](const std::string& what) {
    return MakeError(ErrorCode::kInvalidArgument, "batch answer: " + what);
  };
  // 64 hex + quotes/comma per digest, up to 9 digits + comma per length,
  // "identity" + quotes/comma per encoding.
  size_t max_header = 96 + 92 * asked.size();
  size_t nl = body.substr(0, std::min(body.size(), max_header + 1)).find('\n');
  if (nl == std::string_view::npos)
    return bad("no header line within " + std::to_string(max_header) + " bytes");
  std::vector<std::string> digests;
  std::vector<uint64_t> lengths;
  std::vector<bool> zstd;
  bool has_encodings = false;
  try {
    json h = json::parse(body.substr(0, nl));
    // "encodings" may be left out (every entry raw), and only when asked for.
    has_encodings = h.is_object() && h.contains("encodings");
    if (!h.is_object() || h.size() != (has_encodings ? 3u : 2u) || (has_encodings && !asked_zstd))
      return bad(asked_zstd ? "header must be {\"digests\":[...],\"lengths\":[...]} with "
                              "optional \"encodings\":[...]"
                            : "header must be {\"digests\":[...],\"lengths\":[...]}");
    const json& d = h.at("digests");
    const json& l = h.at("lengths");
    if (!d.is_array() || !l.is_array()) return bad("digests and lengths must be arrays");
    for (const auto& e : d) {
      if (!e.is_string()) return bad("digests must be strings");
      digests.push_back(e.get<std::string>());
    }
    for (const auto& e : l) {
      if (!e.is_number_unsigned()) return bad("lengths must be positive integers");
      lengths.push_back(e.get<uint64_t>());
    }
    if (has_encodings) {
      const json& enc = h.at("encodings");
      if (!enc.is_array()) return bad("encodings must be an array");
      for (const auto& e : enc) {
        const std::string* v = e.is_string() ? e.get_ptr<const std::string*>() : nullptr;
        if (!v || (*v != kZstdEncoding && *v != kIdentity))
          return bad("encodings must be \"zstd\" or \"identity\"");
        zstd.push_back(*v == kZstdEncoding);
      }
    }
  } catch (const json::exception& e) {
    return bad(std::string("header: ") + e.what());
  }
  if (!has_encodings) zstd.assign(digests.size(), false);
  if (zstd.size() != digests.size())
    return bad("header lists " + std::to_string(digests.size()) + " chunks and " +
               std::to_string(zstd.size()) + " encodings");
  if (digests.empty() || digests.size() > asked.size() || lengths.size() != digests.size())
    return bad("header lists " + std::to_string(digests.size()) + " chunks and " +
               std::to_string(lengths.size()) + " lengths for " + std::to_string(asked.size()) +
               " asked");
  std::vector<BatchEntry> out;
  size_t off = nl + 1;
  for (size_t i = 0; i < digests.size(); ++i) {
    if (digests[i] != asked[i])
      return bad("entry " + std::to_string(i) + " is not the chunk asked for");
    if (lengths[i] == 0 || lengths[i] > kMaxChunkBytes) return bad("chunk length out of range");
    if (lengths[i] > body.size() - off) return bad("body shorter than the header says");
    out.push_back({digests[i], off, static_cast<size_t>(lengths[i]), zstd[i]});
    off += static_cast<size_t>(lengths[i]);
  }
  if (off != body.size()) return bad("body longer than the header says");
  return out;
}

}  // namespace vmgrid
