// Guest network reconfiguration after a resume from someone else's
// checkpoint: the guest comes back with the network state it was saved
// with (another VM's MAC and lease, or no NIC at all for an image's
// post-boot checkpoint), while vmgrid has given this VM its own MAC and
// address. Through the guest agent, as root in the guest:
//   1. a PCI rescan, so that a NIC the checkpointed kernel never probed
//      (an image checkpoint has none; QEMU has it at slot 0x10+i) appears;
//   2. per NIC i, the interface at PCI slot 0x10+i gets the new MAC (the
//      switch port accepts nothing else), loses its old addresses and asks
//      DHCP again (busybox udhcpc with the tiny image's script, systemd-
//      networkd, dhclient or plain udhcpc, whichever the guest has).
// The DHCP server is the VM's own switch, so the lease is the address the
// controller assigned. Thread-safety: free functions.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/network_plan.h"

namespace vmgrid {

// The POSIX shell script that does the above. kInvalidArgument for a NIC
// whose index or MAC is not what vmgrid assigns (the values go into the
// script, so nothing else may).
Result<std::string> GuestNetworkReconfigScript(const std::vector<NicSpec>& nics);

// Runs the script through the guest agent at `qga_socket`. Fails with the
// script's output when a NIC did not appear in the guest or the guest has no
// DHCP client.
Status ReconfigureGuestNetwork(const std::string& qga_socket, const std::vector<NicSpec>& nics,
                               std::chrono::milliseconds timeout);

}  // namespace vmgrid
