// NicConfig: one virtio network card of a VM and the QEMU arguments for it.
// The VM's NIC list is part of its device layout (QemuConfig::nics): a VM
// resumed from a checkpoint must get the same list in the same order, with
// the same MACs, or the restore fails or the guest sees different cards.
//
// Facts this relies on (QEMU 7.2, verified by nic_config_test and
// vnet_integration_test):
// * `-netdev dgram,id=netN,local.type=unix,local.path=L,remote.type=unix,
//   remote.path=R` binds a unix datagram socket at L (QEMU unlinks a stale L
//   first; it leaves L behind when it exits) and sends every guest frame as
//   one datagram to R. Nothing is connected: R may appear, vanish and come
//   back (a switch restart); frames sent meanwhile are lost, as on a cable.
//   Any process that can write to L delivers frames to the guest.
// * NIC N is `-device virtio-net-pci,...,addr=0x10+N`: explicit slots keep
//   the automatically placed devices (disk, serial, rng at slots 1..) where
//   they were before NICs existed, so a VM's other devices do not move when
//   it gains a NIC, and the guest names the cards in this order (the kernel
//   probes PCI by slot: eth0 is NIC 0 in the tiny image; enp0s16 is NIC 0
//   with udev's predictable names).
// * `romfile=` (empty) leaves out the iPXE option ROM: vmgrid boots with
//   -kernel or from disk, never from the network.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"

namespace vmgrid {

enum class NicBackend {
  kDgram,  // unix datagram sockets: the vmgrid switch's port, or another VM's NIC
  kUser,   // QEMU's user-mode network (libslirp) with restrict=on: tests only
};

const char* ToString(NicBackend backend);                  // "dgram" | "user"
Result<NicBackend> ParseNicBackend(const std::string& s);  // the inverse; kInvalidArgument

struct NicConfig {
  // "xx:xx:xx:xx:xx:xx" (hex, either case): unicast and not all zeros. MACs
  // vmgrid assigns are also locally administered (RandomLocalMac).
  std::string mac;
  NicBackend backend = NicBackend::kDgram;
  // kDgram only. local_path: the socket QEMU binds and receives on; "" =
  // RUN/nicN.sock (removed with the run directory's other runtime files).
  // remote_path: where the guest's frames go (the switch's port socket). Both
  // absolute after Launch, at most 107 bytes, no commas. QEMU runs as the
  // VM's own user: it must be able to write to remote_path, and whoever
  // sends to local_path must be able to write to it (QEMU creates it 0700).
  std::string local_path;
  std::string remote_path;
};

// {"mac", "backend" ("dgram" | "user"), "local_path", "remote_path"}; empty
// paths are left out. For a VM spec stored by the agent (spec.json).
nlohmann::json ToJson(const NicConfig& nic);
// Strict inverse: an object with known fields of the right types only
// (kInvalidArgument naming the field). Checks types, not values: the list is
// checked with ValidateNics (ValidateQemuConfig) where run_dir is known.
Result<NicConfig> NicConfigFromJson(const nlohmann::json& j);

// NICs a VM may have: PCI slots 0x10..0x17.
inline constexpr int kMaxNics = 8;
inline constexpr int kFirstNicPciSlot = 0x10;

// True for six colon-separated hex octets, unicast (I/G bit clear), not zero.
bool IsValidMac(const std::string& mac);
// True if the U/L bit is set (a MAC no vendor owns). Requires IsValidMac.
bool IsLocallyAdministeredMac(const std::string& mac);
// Lower-case, for comparing and storing.
std::string NormalizeMac(const std::string& mac);

// A random locally administered unicast MAC ("x2:..", "x6:..", "xa:..", "xe:..").
std::string RandomLocalMac();
// The same from 6 given bytes (the U/L bit set, the I/G bit cleared): for
// deterministic MACs, e.g. derived from a network and an address.
std::string LocalMacFromBytes(const std::array<uint8_t, 6>& bytes);

// RUN/nicN.sock: the default local socket of NIC `index`.
std::string DefaultNicSocketPath(const std::string& run_dir, int index);

// Checks the list: at most kMaxNics, valid and distinct MACs, kDgram paths
// present, short enough, free of commas/NUL/newlines, local paths distinct,
// and a NIC never sends to its own socket. `run_dir` resolves default local
// paths. kInvalidArgument naming the NIC on failure.
Status ValidateNics(const std::vector<NicConfig>& nics, const std::string& run_dir);

// "-netdev", "...", "-device", "..." for every NIC, in order. Pure: paths
// are used as given (Launch makes them absolute first).
std::vector<std::string> BuildNicArgs(const std::vector<NicConfig>& nics,
                                      const std::string& run_dir);

}  // namespace vmgrid
