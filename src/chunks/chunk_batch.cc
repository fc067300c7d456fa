#include "chunks/chunk_batch.h"

#include <nlohmann/json.hpp>

#include "chunks/chunk_digest.h"

namespace vmgrid {

using nlohmann::json;

std::string EncodeBatchHeader(const std::vector<std::string>& digests,
                              const std::vector<uint64_t>& lengths) {
  return json{{"digests", digests}, {"lengths", lengths}}.dump() + "\n";
}

Result<std::vector<BatchEntry>> DecodeBatchAnswer(std::string_view body,
                                                  const std::vector<std::string>& asked) {
  auto bad = [](const std::string& what) {
    return MakeError(ErrorCode::kInvalidArgument, "batch answer: " + what);
  };
  // 64 hex + quotes/comma per digest, up to 9 digits + comma per length.
  size_t max_header = 64 + 80 * asked.size();
  size_t nl = body.substr(0, std::min(body.size(), max_header + 1)).find('\n');
  if (nl == std::string_view::npos)
    return bad("no header line within " + std::to_string(max_header) + " bytes");
  std::vector<std::string> digests;
  std::vector<uint64_t> lengths;
  try {
    json h = json::parse(body.substr(0, nl));
    if (!h.is_object() || h.size() != 2)
      return bad("header must be {\"digests\":[...],\"lengths\":[...]}");
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
  } catch (const json::exception& e) {
    return bad(std::string("header: ") + e.what());
  }
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
    out.push_back({digests[i], off, static_cast<size_t>(lengths[i])});
    off += static_cast<size_t>(lengths[i]);
  }
  if (off != body.size()) return bad("body longer than the header says");
  return out;
}

}  // namespace vmgrid
