// vnet_switch: how fast the user-level virtual switch forwards frames, and
// what it costs over the bare unix-datagram socket floor (docs/vnet.md).
//
// A generator speaks QEMU's `-netdev dgram` protocol (one Ethernet frame per
// unix datagram, sent with sendmmsg in batches of 64) into port A; a sink
// bound where QEMU would bind port B's path counts what arrives. Cases, side
// by side in one run:
//   relay   a plain loop: recvmmsg from A, sendmmsg to B, no parsing or
//           policy (what any user-level switch costs at least);
//   switch  SwitchHost: parse, anti-spoofing, forwarding table, A -> B;
//   tunnel  two SwitchHosts on loopback: A on host 1 -> AES-256-GCM tunnel
//           -> host 2 -> B.
// For each: frames delivered per second (wall clock, all threads sharing the
// machine's cores), the forwarding thread(s)' CPU time per frame and the
// rate that would give on one core (frames / forwarding CPU seconds), and
// frames dropped on the way. Then one-frame-in-flight latency (p50/p99) of
// the direct socket path, the relay and the switch, and the tunnel codec's
// seal+open rate on one core.
//
// On a shared machine every number is the best of --repeat runs (highest
// rate, lowest CPU per frame, lowest p50), to see through other load.
//
//   vnet_switch [--seconds S] [--latency-samples N] [--repeat R]
#include <arpa/inet.h>
#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vnet/frame.h"
#include "vnet/switch_host.h"
#include "vnet/tunnel.h"

namespace {

using namespace vmgrid::vnet;
using Clock = std::chrono::steady_clock;

constexpr size_t kBatch = 64;

MacAddr Mac(uint8_t last) { return {0x52, 0x54, 0x00, 0x00, 0x00, last}; }
Ipv4Addr Ip(uint8_t d) { return Ipv4Addr{10} << 24 | Ipv4Addr{40} << 16 | d; }

sockaddr_un Addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  return a;
}

int BindUnix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ::unlink(path.c_str());
  sockaddr_un a = Addr(path);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::perror(("bind " + path).c_str());
    std::exit(1);
  }
  int buf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  return fd;
}

// A valid UDP frame from port A (MAC 1, .10) to port B (MAC 2, .11) of
// exactly `size` bytes; bytes 42..49 of the payload area carry a timestamp.
std::vector<uint8_t> TestFrame(size_t size) {
  std::vector<uint8_t> payload(size - 42, 0xab);
  std::vector<uint8_t> f(kMaxFrameLen);
  UdpEndpoints e{Mac(1), Mac(2), Ip(10), Ip(11), 5000, 5001};
  f.resize(BuildUdpFrame(f, e, payload));
  return f;
}

// CPU seconds used so far by this process's threads named `name`.
double ThreadCpuSeconds(const std::string& name) {
  double total = 0;
  const long ticks = sysconf(_SC_CLK_TCK);
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(e.path() / "comm");
    std::string c;
    std::getline(comm, c);
    if (c != name) continue;
    std::ifstream st(e.path() / "stat");
    std::string line;
    std::getline(st, line);
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
    std::istringstream in(line.substr(line.rfind(')') + 2));
    std::string field;
    unsigned long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && in >> field; ++i) {
      if (i == 14) utime = std::stoul(field);
      if (i == 15) stime = std::stoul(field);
    }
    total += static_cast<double>(utime + stime) / static_cast<double>(ticks);
  }
  return total;
}

// The baseline: a relay thread with the switch's I/O pattern and no logic.
class Relay {
 public:
  Relay(const std::string& in_path, const std::string& out_path)
      : in_(BindUnix(in_path)), out_(BindUnix(in_path + ".tx")), to_(Addr(out_path)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~Relay() {
    stop_ = true;
    thread_.join();
    close(in_);
    close(out_);
  }
  uint64_t dropped() const { return dropped_; }

 private:
  void Run() {
    pthread_setname_np(pthread_self(), "bench-relay");
    std::vector<uint8_t> data(kBatch * 2048);
    mmsghdr rx[kBatch], tx[kBatch];
    iovec iov[kBatch];
    while (!stop_) {
      pollfd p{in_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      for (size_t i = 0; i < kBatch; ++i) {
        iov[i] = iovec{&data[i * 2048], 2048};
        rx[i] = mmsghdr{};
        rx[i].msg_hdr.msg_iov = &iov[i];
        rx[i].msg_hdr.msg_iovlen = 1;
      }
      int n = recvmmsg(in_, rx, kBatch, MSG_DONTWAIT, nullptr);
      if (n <= 0) continue;
      for (int i = 0; i < n; ++i) {
        iov[i].iov_len = rx[i].msg_len;
        tx[i] = mmsghdr{};
        tx[i].msg_hdr.msg_name = &to_;
        tx[i].msg_hdr.msg_namelen = sizeof to_;
        tx[i].msg_hdr.msg_iov = &iov[i];
        tx[i].msg_hdr.msg_iovlen = 1;
      }
      int done = 0;
      while (done < n) {
        int s = sendmmsg(out_, tx + done, static_cast<unsigned>(n - done), MSG_DONTWAIT);
        if (s <= 0) {  // the sink's queue is full: drop the rest, like the switch
          dropped_ += static_cast<uint64_t>(n - done);
          break;
        }
        done += s;
      }
    }
  }
  int in_, out_;
  sockaddr_un to_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> dropped_{0};
  std::thread thread_;
};

// Where the generator sends and the sink binds, and how to read drops.
struct Path {
  std::string name;
  std::string gen_bind, gen_to, sink_bind;
  std::vector<std::string> cpu_threads;  // forwarding thread names
  std::function<uint64_t()> drops;
};

struct Rate {
  double delivered_per_s = 0;
  double cpu_ns_per_frame = 0;
  uint64_t sent = 0, received = 0, dropped = 0;
};

Rate MeasureRate(const Path& path, size_t frame_size, double seconds) {
  int gen = BindUnix(path.gen_bind);
  int sink = BindUnix(path.sink_bind);
  timeval tv{0, 100000};
  setsockopt(sink, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> received{0};
  std::thread sink_thread([&] {
    std::vector<uint8_t> data(kBatch * 2048);
    mmsghdr m[kBatch];
    iovec iov[kBatch];
    for (size_t i = 0; i < kBatch; ++i) {
      iov[i] = iovec{&data[i * 2048], 2048};
      m[i] = mmsghdr{};
      m[i].msg_hdr.msg_iov = &iov[i];
      m[i].msg_hdr.msg_iovlen = 1;
    }
    while (!stop) {
      int n = recvmmsg(sink, m, kBatch, MSG_WAITFORONE, nullptr);
      if (n > 0) received += static_cast<uint64_t>(n);
    }
  });
  const auto frame = TestFrame(frame_size);
  sockaddr_un to = Addr(path.gen_to);
  mmsghdr m[kBatch];
  iovec iov[kBatch];
  for (size_t i = 0; i < kBatch; ++i) {
    iov[i] = iovec{const_cast<uint8_t*>(frame.data()), frame.size()};
    m[i] = mmsghdr{};
    m[i].msg_hdr.msg_name = &to;
    m[i].msg_hdr.msg_namelen = sizeof to;
    m[i].msg_hdr.msg_iov = &iov[i];
    m[i].msg_hdr.msg_iovlen = 1;
  }
  // Warm up, then measure from a clean count.
  const uint64_t drops0 = path.drops();
  double cpu0 = 0;
  for (const auto& t : path.cpu_threads) cpu0 += ThreadCpuSeconds(t);
  const uint64_t recv0 = received.load();
  uint64_t sent = 0;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    // Blocking sends: a full switch queue holds the generator back, as
    // QEMU's dgram netdev waits for POLLOUT instead of dropping.
    int n = sendmmsg(gen, m, kBatch, 0);
    if (n > 0) sent += static_cast<uint64_t>(n);
  }
  // Let what is in flight arrive (or be dropped) before reading counters.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count() - 0.2;
  double cpu1 = 0;
  for (const auto& t : path.cpu_threads) cpu1 += ThreadCpuSeconds(t);
  stop = true;
  sink_thread.join();
  close(gen);
  close(sink);
  Rate r;
  r.sent = sent;
  r.received = received.load() - recv0;
  r.dropped = path.drops() - drops0;
  r.delivered_per_s = static_cast<double>(r.received) / elapsed;
  r.cpu_ns_per_frame = sent ? (cpu1 - cpu0) * 1e9 / static_cast<double>(sent) : 0;
  return r;
}

struct Latency {
  double p50_us = 0, p99_us = 0;
};

// One frame in flight: send, wait for it at the sink, repeat.
Latency MeasureLatency(const Path& path, size_t frame_size, int samples) {
  int gen = BindUnix(path.gen_bind);
  int sink = BindUnix(path.sink_bind);
  const auto frame = TestFrame(frame_size);
  sockaddr_un to = Addr(path.gen_to);
  std::vector<double> us;
  std::vector<uint8_t> buf(2048);
  for (int i = 0; i < samples + 100; ++i) {
    const auto t0 = Clock::now();
    sendto(gen, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
    pollfd p{sink, POLLIN, 0};
    if (poll(&p, 1, 1000) != 1) continue;  // lost: not a sample
    recv(sink, buf.data(), buf.size(), 0);
    const auto t1 = Clock::now();
    if (i >= 100) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  close(gen);
  close(sink);
  std::sort(us.begin(), us.end());
  Latency l;
  if (!us.empty()) {
    l.p50_us = us[us.size() / 2];
    l.p99_us = us[us.size() * 99 / 100];
  }
  return l;
}

void CodecRate(size_t frame_size, double seconds, double* pps, double* gbps) {
  TunnelCodec a(1, 1), b(1, 2);
  TunnelKey k;
  k.fill(7);
  (void)a.InstallKey(1, k);
  (void)b.InstallKey(1, k);
  const auto frame = TestFrame(frame_size);
  std::vector<uint8_t> sealed(frame.size() + kTunnelOverhead), opened(frame.size());
  uint64_t n = 0;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    for (int i = 0; i < 256; ++i) {
      size_t len = a.Seal(frame, sealed);
      auto o = b.Open({sealed.data(), len}, opened);
      if (!o.ok()) std::abort();
    }
    n += 256;
  }
  const double el = std::chrono::duration<double>(Clock::now() - start).count();
  *pps = static_cast<double>(n) / el;
  *gbps = *pps * static_cast<double>(frame_size) * 8 / 1e9;
}

int ReadQlen() {
  std::ifstream f("/proc/sys/net/unix/max_dgram_qlen");
  int v = -1;
  f >> v;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 2.0;
  int samples = 20000;
  int repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--seconds")
      seconds = std::atof(argv[i + 1]);
    else if (a == "--latency-samples")
      samples = std::atoi(argv[i + 1]);
  }
  char tmpl[] = "/tmp/vnet-bench-XXXXXX";
  if (!mkdtemp(tmpl)) return 1;
  const std::string dir = tmpl;

  // Host 1: ports a (generator) and b (sink); host 2 for the tunnel case:
  // ports a2 (generator) on host 1 ... remote r on host 2 (sink).
  auto mk = [](HostId id) {
    SwitchHostOptions o;
    o.host_id = id;
    auto h = SwitchHost::Start(o);
    if (!h.ok()) {
      std::fprintf(stderr, "%s\n", h.error().message.c_str());
      std::exit(1);
    }
    return std::move(h).value();
  };
  auto h1 = mk(1);
  auto h2 = mk(2);
  NetworkConfig net;
  net.id = 1;
  net.name = "bench";
  net.subnet = Ip(0);
  auto port = [&](const std::string& name, uint8_t mac, uint8_t ip) {
    PortConfig p;
    p.name = name;
    p.mac = Mac(mac);
    p.ip = Ip(ip);
    p.switch_path = dir + "/" + name + ".sw";
    p.vm_path = dir + "/" + name + ".vm";
    return p;
  };
  bool ok = h1->AddNetwork(net).ok() && h1->AddPort(1, port("a", 1, 10)).ok() &&
            h1->AddPort(1, port("b", 2, 11)).ok();
  // The tunnel case: a second network on host 1 whose MAC 2 lives on host 2.
  NetworkConfig net2 = net;
  net2.id = 2;
  net2.name = "bench2";
  TunnelKey key;
  key.fill(0x42);
  ok = ok && h1->AddNetwork(net2).ok() && h2->AddNetwork(net2).ok() &&
       h1->AddPort(2, port("ta", 1, 10)).ok() && h2->AddPort(2, port("tb", 2, 11)).ok() &&
       h1->InstallTunnelKey(2, 1, key).ok() && h2->InstallTunnelKey(2, 1, key).ok() &&
       h1->SetRemote(2, {PeerHost{2, 0x7f000001, h2->tunnel_port()}},
                     {RemoteNic{Mac(2), Ip(11), "", 2}})
           .ok() &&
       h2->SetRemote(2, {PeerHost{1, 0x7f000001, h1->tunnel_port()}},
                     {RemoteNic{Mac(1), Ip(10), "", 1}})
           .ok();
  if (!ok) {
    std::fprintf(stderr, "setup failed\n");
    return 1;
  }
  Relay relay(dir + "/relay.in", dir + "/relay-sink.vm");

  auto port_drops = [&](SwitchHost& h, uint32_t n, const std::string& p) {
    auto c = h.GetPortCounters(n, p);
    uint64_t d = 0;
    for (uint64_t x : c->drops) d += x;
    return d;
  };
  std::vector<Path> paths = {
      {"relay (no policy)",
       dir + "/gen-relay",
       dir + "/relay.in",
       dir + "/relay-sink.vm",
       {"bench-relay"},
       [&] { return relay.dropped(); }},
      {"switch",
       dir + "/a.vm",
       dir + "/a.sw",
       dir + "/b.vm",
       {"vnet-switch"},
       [&] { return port_drops(*h1, 1, "a") + port_drops(*h1, 1, "b"); }},
      {"switch+tunnel+switch",
       dir + "/ta.vm",
       dir + "/ta.sw",
       dir + "/tb.vm",
       {"vnet-switch"},
       [&] {
         auto t1 = h1->GetTunnelCounters(2), t2 = h2->GetTunnelCounters(2);
         uint64_t d = port_drops(*h1, 2, "ta") + port_drops(*h2, 2, "tb") + t1->tx_failed;
         for (uint64_t x : t2->drops) d += x;
         return d;
       }},
  };

  std::printf(
      "vnet_switch: %u CPUs online, net.unix.max_dgram_qlen=%d, %.1f s per case, "
      "batches of %zu\n\n",
      std::thread::hardware_concurrency(), ReadQlen(), seconds, kBatch);
  std::printf("%-22s %6s %14s %14s %16s %12s %10s\n", "forwarding", "frame", "delivered/s",
              "Gbit/s", "fwd CPU ns/frame", "Mpps/core", "dropped");
  for (size_t size : {64, 1500}) {
    for (const Path& p : paths) {
      Rate r = MeasureRate(p, size, seconds);
      for (int k = 1; k < repeat; ++k) {
        Rate again = MeasureRate(p, size, seconds);
        if (again.delivered_per_s > r.delivered_per_s) {
          again.cpu_ns_per_frame = std::min(again.cpu_ns_per_frame, r.cpu_ns_per_frame);
          r = again;
        } else {
          r.cpu_ns_per_frame = std::min(again.cpu_ns_per_frame, r.cpu_ns_per_frame);
        }
      }
      std::printf(
          "%-22s %6zu %14.0f %14.2f %16.0f %12.2f %9.2f%%\n", p.name.c_str(), size,
          r.delivered_per_s, r.delivered_per_s * static_cast<double>(size) * 8 / 1e9,
          r.cpu_ns_per_frame, r.cpu_ns_per_frame > 0 ? 1e3 / r.cpu_ns_per_frame : 0,
          r.sent ? 100.0 * static_cast<double>(r.dropped) / static_cast<double>(r.sent) : 0);
    }
  }
  std::printf(
      "\n(fwd CPU: the forwarding threads' CPU time over frames sent; for the tunnel, "
      "both switches' threads. Mpps/core = 1000 / that.)\n\n");

  Path direct{"direct socket (floor)",
              dir + "/gen-direct",
              dir + "/direct-sink.vm",
              dir + "/direct-sink.vm",
              {},
              [] { return uint64_t{0}; }};
  std::printf("%-22s %6s %10s %10s %14s\n", "one frame in flight", "frame", "p50 us", "p99 us",
              "added p50 us");
  for (size_t size : {64, 1500}) {
    auto best = [&](const Path& p) {
      Latency l = MeasureLatency(p, size, samples);
      for (int k = 1; k < repeat; ++k) {
        Latency again = MeasureLatency(p, size, samples);
        if (again.p50_us < l.p50_us) l = again;
      }
      return l;
    };
    Latency base = best(direct);
    std::printf("%-22s %6zu %10.1f %10.1f %14s\n", direct.name.c_str(), size, base.p50_us,
                base.p99_us, "-");
    for (const Path& p : paths) {
      Latency l = best(p);
      std::printf("%-22s %6zu %10.1f %10.1f %14.1f\n", p.name.c_str(), size, l.p50_us, l.p99_us,
                  l.p50_us - base.p50_us);
    }
  }

  std::printf("\n%-22s %6s %14s %14s\n", "tunnel codec (1 core)", "frame", "seal+open/s", "Gbit/s");
  for (size_t size : {64, 1500}) {
    double pps = 0, gbps = 0;
    CodecRate(size, seconds, &pps, &gbps);
    std::printf("%-22s %6zu %14.0f %14.2f\n", "AES-256-GCM", size, pps, gbps);
  }
  h1.reset();
  h2.reset();
  std::filesystem::remove_all(dir);
  return 0;
}
