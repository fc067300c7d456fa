// fuzz_vnet_switch: a whole VirtualSwitch (src/vnet/virtual_switch.h) fed
// frames from a hostile port and frames out of the tunnel from a member host:
// parsing, anti-spoofing, proxy ARP, DHCP and DNS answers, forwarding and
// the checks on tunnelled frames. Input: records [u16 length][selector][frame];
// with an odd selector the frame comes through the tunnel (sealed by host 2
// with the network's key), with selector & 2 the egress gateway's router
// port sends it, else port "a" does. Oracles: no crash or out-of-bounds
// access; every frame is counted as received; a port never gets more than
// one datagram per local port and peer for a frame; nothing the router port
// sends enters the tunnel.
#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "fuzz_common.h"
#include "vnet/tunnel.h"
#include "vnet/virtual_switch.h"

namespace {
using namespace vmgrid::vnet;

struct World {
  VirtualSwitchPtr sw;
  Port* a = nullptr;
  Port* router = nullptr;
  int gateway_end = -1;  // the gateway's end of the pair: nobody reads it
  TunnelCodec remote{3, 2};
  TxBatch tx;
  ScratchBuffers scratch{64};
};

World& TheWorld() {
  static World* w = [] {
    vmgrid::fuzz::QuietLogging();
    auto* w = new World;
    NetworkConfig c;
    c.id = 3;
    c.name = "lab";
    c.subnet = 0x0a140000;
    c.egress = true;
    auto sw = VirtualSwitch::Create(c, 1);
    FUZZ_CHECK(sw.ok(), "create");
    w->sw = std::move(sw).value();
    const std::string dir = vmgrid::fuzz::ScratchDir();
    for (uint8_t i = 1; i <= 3; ++i) {
      PortConfig p;
      p.name = std::string(1, static_cast<char>('a' + i - 1));
      p.mac = {0x52, 0x54, 0, 0, 0, i};
      p.ip = 0x0a140000u + 9 + i;
      p.vm_name = "vm" + std::to_string(i);
      p.switch_path = dir + "/" + p.name + ".sw";
      p.vm_path = dir + "/" + p.name + ".vm";  // nobody binds it: sends fail fast
      auto port = w->sw->AddPort(p);
      FUZZ_CHECK(port.ok(), port.ok() ? "" : port.error().message);
      if (i == 1) w->a = *port;
    }
    // The egress gateway's router port (slirp's MAC for 10.20.0.1).
    int pair[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) == 0,
               "socketpair");
    w->gateway_end = pair[1];
    auto router = w->sw->AddRouterPort("egress", {0x52, 0x55, 0x0a, 0x14, 0, 1}, 0x0a140001,
                                       vmgrid::vmm::UniqueFd(pair[0]));
    FUZZ_CHECK(router.ok(), router.ok() ? "" : router.error().message);
    w->router = *router;
    // Peer 2 owns 52:54:00:00:00:05 / 10.20.0.20; its address is unroutable.
    FUZZ_CHECK(w->sw
                   ->SetRemote({PeerHost{2, 0x7f000001, 9}},
                               {RemoteNic{{0x52, 0x54, 0, 0, 0, 5}, 0x0a140014, "r", 2}})
                   .ok(),
               "remote");
    TunnelKey k;
    k.fill(9);
    FUZZ_CHECK(w->sw->InstallTunnelKey(1, k).ok(), "key");
    FUZZ_CHECK(w->remote.InstallKey(1, k).ok(), "key");
    return w;
  }();
  return *w;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  SwitchIo io{w.tx, w.scratch, -1};
  const uint64_t rx0 = w.a->counters.rx_frames;
  const uint64_t router_rx0 = w.router->counters.rx_frames;
  uint64_t from_port = 0;
  uint64_t from_router = 0;
  size_t i = 0;
  std::vector<uint8_t> sealed(4096);
  while (i + 2 <= size) {
    size_t len = static_cast<size_t>(data[i]) << 8 | data[i + 1];
    i += 2;
    if (len > size - i) len = size - i;
    std::span<const uint8_t> rec(data + i, len);
    i += len;
    const size_t before = w.tx.size();
    if (rec.empty()) continue;
    const auto frame = rec.subspan(1);
    if (rec[0] & 1) {
      if (frame.size() + kTunnelOverhead > sealed.size()) continue;
      size_t n = w.remote.Seal(frame, sealed);
      w.sw->HandleFromTunnel({sealed.data(), n}, io);
    } else if (rec[0] & 2) {
      auto tunnel_sends = [&] {
        const TunnelCounters& t = w.sw->tunnel_counters();
        return t.tx_packets + t.tx_failed + t.tx_no_key;
      };
      const uint64_t tunnel0 = tunnel_sends();
      w.sw->HandleFromPort(*w.router, frame, frame.size() > kMaxFrameLen, io);
      ++from_router;
      FUZZ_CHECK(w.tx.size() - before <= 3, "a router frame fanned out to more than a, b, c");
      w.tx.Flush();  // sends are counted when flushed
      FUZZ_CHECK(tunnel_sends() == tunnel0, "a router frame went to the tunnel");
    } else {
      w.sw->HandleFromPort(*w.a, frame, frame.size() > kMaxFrameLen, io);
      ++from_port;
    }
    FUZZ_CHECK(w.tx.size() - before <= 3, "one frame fanned out to more than ports + peers");
    w.tx.Flush();
    w.scratch.Reset();
  }
  FUZZ_CHECK(w.a->counters.rx_frames - rx0 == from_port, "frames not counted");
  FUZZ_CHECK(w.router->counters.rx_frames - router_rx0 == from_router, "router frames not counted");
  return 0;
}
