#include "vmm/nic_config.h"

#include <sys/random.h>
#include <sys/un.h>

#include <cctype>
#include <cstdio>
#include <set>

#include "vmm/qemu_process.h"

namespace vmgrid {

namespace {

constexpr size_t kSunPathMax = sizeof(sockaddr_un::sun_path) - 1;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The six octets of a "xx:xx:xx:xx:xx:xx" string, or false.
bool ParseMacBytes(const std::string& mac, std::array<uint8_t, 6>* out) {
  if (mac.size() != 17) return false;
  for (size_t i = 0; i < 6; ++i) {
    int hi = HexValue(mac[3 * i]);
    int lo = HexValue(mac[3 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    if (i < 5 && mac[3 * i + 2] != ':') return false;
    (*out)[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

bool HasOptionBreaker(const std::string& s) {
  return s.find_first_of(std::string(",\n\0", 3)) != std::string::npos;
}

std::string LocalPath(const NicConfig& nic, const std::string& run_dir, int index) {
  return nic.local_path.empty() ? DefaultNicSocketPath(run_dir, index) : nic.local_path;
}

}  // namespace

const char* ToString(NicBackend backend) {
  switch (backend) {
    case NicBackend::kDgram:
      return "dgram";
    case NicBackend::kUser:
      return "user";
  }
  return "?";
}

Result<NicBackend> ParseNicBackend(const std::string& s) {
  if (s == "dgram") return NicBackend::kDgram;
  if (s == "user") return NicBackend::kUser;
  return MakeError(ErrorCode::kInvalidArgument, "NIC backend must be dgram or user, not " + s);
}

bool IsValidMac(const std::string& mac) {
  std::array<uint8_t, 6> b{};
  if (!ParseMacBytes(mac, &b)) return false;
  if (b[0] & 0x01) return false;  // I/G bit: multicast or broadcast
  for (uint8_t x : b) {
    if (x != 0) return true;
  }
  return false;
}

bool IsLocallyAdministeredMac(const std::string& mac) {
  std::array<uint8_t, 6> b{};
  return ParseMacBytes(mac, &b) && (b[0] & 0x02) != 0;
}

std::string NormalizeMac(const std::string& mac) {
  std::string out = mac;
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string LocalMacFromBytes(const std::array<uint8_t, 6>& bytes) {
  std::array<uint8_t, 6> b = bytes;
  b[0] = static_cast<uint8_t>((b[0] | 0x02) & ~0x01);  // never zero: the U/L bit is set
  char buf[18];
  std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4],
                b[5]);
  return buf;
}

std::string RandomLocalMac() {
  std::array<uint8_t, 6> b{};
  size_t got = 0;
  while (got < b.size()) {
    ssize_t n = ::getrandom(b.data() + got, b.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  return LocalMacFromBytes(b);
}

nlohmann::json ToJson(const NicConfig& nic) {
  nlohmann::json j = {{"mac", nic.mac}, {"backend", ToString(nic.backend)}};
  if (!nic.local_path.empty()) j["local_path"] = nic.local_path;
  if (!nic.remote_path.empty()) j["remote_path"] = nic.remote_path;
  return j;
}

Result<NicConfig> NicConfigFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return MakeError(ErrorCode::kInvalidArgument, "a NIC must be an object");
  NicConfig nic;
  for (const auto& [key, value] : j.items()) {
    std::string* field = key == "mac"           ? &nic.mac
                         : key == "local_path"  ? &nic.local_path
                         : key == "remote_path" ? &nic.remote_path
                                                : nullptr;
    if (key != "backend" && field == nullptr) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "unknown NIC field '" + key + "' (mac, backend, local_path, remote_path)");
    }
    if (!value.is_string()) {
      return MakeError(ErrorCode::kInvalidArgument, "NIC field '" + key + "' must be a string");
    }
    if (field != nullptr) {
      *field = value.get<std::string>();
    } else {
      VMG_ASSIGN_OR_RETURN(nic.backend, ParseNicBackend(value.get<std::string>()));
    }
  }
  if (nic.mac.empty()) return MakeError(ErrorCode::kInvalidArgument, "a NIC needs a mac");
  return nic;
}

std::string DefaultNicSocketPath(const std::string& run_dir, int index) {
  std::string name = "nic" + std::to_string(index) + ".sock";
  return RunPath(run_dir, name.c_str());
}

Status ValidateNics(const std::vector<NicConfig>& nics, const std::string& run_dir) {
  if (nics.size() > static_cast<size_t>(kMaxNics)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "at most " + std::to_string(kMaxNics) + " NICs per VM");
  }
  std::set<std::string> macs, locals;
  for (size_t i = 0; i < nics.size(); ++i) {
    const NicConfig& nic = nics[i];
    auto invalid = [i](const std::string& msg) {
      return MakeError(ErrorCode::kInvalidArgument, "NIC " + std::to_string(i) + ": " + msg);
    };
    if (!IsValidMac(nic.mac)) {
      return invalid("MAC '" + nic.mac +
                     "' is not six hex octets xx:xx:xx:xx:xx:xx of a unicast, non-zero address");
    }
    if (!macs.insert(NormalizeMac(nic.mac)).second) return invalid("duplicate MAC " + nic.mac);
    if (nic.backend == NicBackend::kUser) {
      if (!nic.local_path.empty() || !nic.remote_path.empty())
        return invalid("a user-mode NIC has no socket paths");
      continue;
    }
    if (nic.remote_path.empty()) return invalid("remote_path is required for a dgram NIC");
    const std::string local = LocalPath(nic, run_dir, static_cast<int>(i));
    for (const std::string* p : {&local, &nic.remote_path}) {
      if (HasOptionBreaker(*p)) return invalid("comma, NUL or newline in socket path " + *p);
      if (p->size() > kSunPathMax) {
        return invalid("socket path longer than " + std::to_string(kSunPathMax) +
                       " bytes (sun_path): " + *p);
      }
    }
    if (local == nic.remote_path) return invalid("local_path and remote_path are the same");
    if (!locals.insert(local).second) return invalid("local_path shared with another NIC");
  }
  return Status::Ok();
}

std::vector<std::string> BuildNicArgs(const std::vector<NicConfig>& nics,
                                      const std::string& run_dir) {
  std::vector<std::string> a;
  for (size_t i = 0; i < nics.size(); ++i) {
    const NicConfig& nic = nics[i];
    const std::string id = std::to_string(i);
    std::string netdev;
    if (nic.backend == NicBackend::kUser) {
      netdev = "user,id=net" + id + ",restrict=on";
    } else {
      netdev = "dgram,id=net" + id +
               ",local.type=unix,local.path=" + LocalPath(nic, run_dir, static_cast<int>(i)) +
               ",remote.type=unix,remote.path=" + nic.remote_path;
    }
    char slot[8];
    std::snprintf(slot, sizeof slot, "0x%x", kFirstNicPciSlot + static_cast<int>(i));
    a.insert(a.end(), {"-netdev", netdev, "-device",
                       "virtio-net-pci,netdev=net" + id + ",mac=" + NormalizeMac(nic.mac) +
                           ",addr=" + slot + ",romfile=,id=nic" + id});
  }
  return a;
}

}  // namespace vmgrid
