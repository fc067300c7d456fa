#include "agent/guest_network.h"

#include <cstdio>

#include "vmm/guest_agent_client.h"
#include "vnet/frame.h"

namespace vmgrid {

namespace {

// Per NIC: "nic SLOT MAC". The function waits up to 5 s for the interface
// (a rescanned device's driver binds moments later). A virtio NIC's
// /sys/class/net/IF/device is the virtio device below its PCI function
// (.../0000:00:10.0/virtio0).
constexpr char kScriptHead[] =
    R"SH(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ -w /sys/bus/pci/rescan ] && echo 1 >/sys/bus/pci/rescan
# A guest without hot-plug events (no udev, no mdev) loads no driver for a
# new card by itself; a guest that booted without NICs never loaded it.
modprobe virtio_net 2>/dev/null
rc=0
nic() {
  ifc=
  for try in $(seq 25); do
    for d in /sys/class/net/*; do
      case $(readlink -f "$d/device" 2>/dev/null) in */0000:00:$1.0 | */0000:00:$1.0/*) ifc=${d##*/} ;; esac
    done
    [ -n "$ifc" ] && break
    sleep 0.2
  done
  if [ -z "$ifc" ]; then
    echo "no network interface at PCI slot $1 in the guest (PCI functions:" $(ls /sys/bus/pci/devices) ")"
    ls -l /sys/bus/pci/devices/0000:00:$1.0/ 2>&1 | grep -e driver -e virtio
    dmesg 2>&1 | tail -n 12
    rc=1; return
  fi
  [ -f "/run/net/udhcpc.$ifc.pid" ] && kill "$(cat "/run/net/udhcpc.$ifc.pid")" 2>/dev/null
  ip link set dev "$ifc" down
  ip addr flush dev "$ifc"
  ip link set dev "$ifc" address "$2" || { echo "$ifc: cannot set MAC $2"; rc=1; return; }
  ip link set dev "$ifc" up
  if [ -x /etc/udhcpc/vmgrid.script ]; then
    mkdir -p /run/net
    udhcpc -i "$ifc" -s /etc/udhcpc/vmgrid.script -p "/run/net/udhcpc.$ifc.pid" \
      -b -t 3 -T 1 -A 5 -O search >>/run/net/log 2>&1
  elif command -v networkctl >/dev/null 2>&1; then
    networkctl reconfigure "$ifc" >/dev/null 2>&1 || networkctl renew "$ifc"
  elif command -v dhclient >/dev/null 2>&1; then
    dhclient -r "$ifc" 2>/dev/null; dhclient -nw "$ifc"
  elif command -v udhcpc >/dev/null 2>&1; then
    udhcpc -i "$ifc" -b -t 3 -T 1 >/dev/null 2>&1
  else
    echo "$ifc: the guest has no DHCP client"; rc=1; return
  fi
  echo "$ifc $2"
}
)SH";

}  // namespace

Result<std::string> GuestNetworkReconfigScript(const std::vector<NicSpec>& nics) {
  std::string script = kScriptHead;
  for (const NicSpec& n : nics) {
    if (n.index < 0 || n.index > 7)
      return MakeError(ErrorCode::kInvalidArgument,
                       "NIC index " + std::to_string(n.index) + " is not 0..7");
    auto mac = vnet::ParseMac(n.mac);
    if (!mac.ok()) return mac.error().Wrap("NIC " + std::to_string(n.index));
    char slot[8];
    std::snprintf(slot, sizeof slot, "%02x", 0x10 + n.index);
    script += "nic " + std::string(slot) + " " + vnet::FormatMac(*mac) + "\n";
  }
  script += "exit $rc\n";
  return script;
}

Status ReconfigureGuestNetwork(const std::string& qga_socket, const std::vector<NicSpec>& nics,
                               std::chrono::milliseconds timeout) {
  if (nics.empty()) return Status::Ok();
  VMG_ASSIGN_OR_RETURN(std::string script, GuestNetworkReconfigScript(nics));
  VMG_ASSIGN_OR_RETURN(auto ga, GuestAgentClient::Connect(qga_socket, std::chrono::seconds(5)));
  VMG_ASSIGN_OR_RETURN(ExecResult r, ga->Exec({"/bin/sh", "-c", script}, "", timeout));
  if (r.signaled || r.exit_code != 0)
    return MakeError(ErrorCode::kInternal,
                     "reconfiguring the guest's network cards failed: " + r.out + r.err);
  return Status::Ok();
}

}  // namespace vmgrid
