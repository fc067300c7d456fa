#include "vmm/qmp_client.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>

#include "vmm/fake_peer.h"

namespace vmgrid {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using vmm::testing::FakeConn;
using vmm::testing::FakeServer;
using vmm::testing::TempDir;

constexpr char kGreeting[] =
    R"({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, )"
    R"("capabilities": ["oob"]}})"
    "\r\n";

// Reads one request and returns it parsed ({} if unreadable).
json ReadRequest(FakeConn& c) {
  std::string line = c.ReadLine();
  json j = json::parse(line, nullptr, false);
  return j.is_discarded() ? json::object() : j;
}

std::string Reply(const json& request, const json& ret) {
  return json{{"return", ret}, {"id", request.value("id", json())}}.dump() + "\r\n";
}

void Handshake(FakeConn& c) {
  c.Write(kGreeting);
  json caps = ReadRequest(c);
  c.Write(Reply(caps, json::object()));
}

std::string Event(const std::string& name) {
  return json{{"event", name},
              {"data", {{"n", name}}},
              {"timestamp", {{"seconds", 1}, {"microseconds", 2}}}}
             .dump() +
         "\r\n";
}

class QmpClientTest : public ::testing::Test {
 protected:
  std::string SocketPath() const { return dir_.path() + "/qmp.sock"; }
  std::unique_ptr<QmpClient> ConnectOrDie() {
    auto c = QmpClient::Connect(SocketPath(), milliseconds(3000));
    EXPECT_TRUE(c.ok()) << c.error().message;
    return c.ok() ? std::move(c).value() : nullptr;
  }
  TempDir dir_;
};

TEST_F(QmpClientTest, ExecuteReturnsValueAndNegotiatesCapabilities) {
  std::string seen_caps, seen_cmd;
  FakeServer server(SocketPath(), {[&](FakeConn& c) {
                      c.Write(kGreeting);
                      json caps = ReadRequest(c);
                      seen_caps = caps.value("execute", "");
                      c.Write(Reply(caps, json::object()));
                      json req = ReadRequest(c);
                      seen_cmd = req.dump();
                      c.Write(Reply(req, {{"status", "running"}, {"running", true}}));
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  EXPECT_EQ(qmp->greeting()["version"]["qemu"]["major"], 7);
  Result<json> r = qmp->Execute("query-status", {{"x", 1}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["status"], "running");
  qmp->Close();
  server.Join();
  EXPECT_EQ(seen_caps, "qmp_capabilities");
  json cmd = json::parse(seen_cmd);
  EXPECT_EQ(cmd["execute"], "query-status");
  EXPECT_EQ(cmd["arguments"]["x"], 1);
  EXPECT_TRUE(cmd["id"].is_string());
}

TEST_F(QmpClientTest, ErrorReplyCarriesClassAndDesc) {
  FakeServer server(
      SocketPath(), {[](FakeConn& c) {
        Handshake(c);
        json req = ReadRequest(c);
        c.Write(json{{"error", {{"class", "GenericError"}, {"desc", "boom"}}}, {"id", req["id"]}}
                    .dump() +
                "\n");
        req = ReadRequest(c);
        c.Write(json{{"error", {{"class", "CommandNotFound"}, {"desc", "nope"}}}, {"id", req["id"]}}
                    .dump() +
                "\n");
      }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  Result<json> r = qmp->Execute("cont");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(r.error().message.find("GenericError"), std::string::npos);
  EXPECT_NE(r.error().message.find("boom"), std::string::npos);
  r = qmp->Execute("bogus");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST_F(QmpClientTest, EventsInterleavedWithRepliesAreQueuedInOrder) {
  FakeServer server(SocketPath(), {[](FakeConn& c) {
                      Handshake(c);
                      json req = ReadRequest(c);
                      c.Write(Event("STOP") + Event("MIGRATION") + Reply(req, 1));
                      std::this_thread::sleep_for(milliseconds(100));
                      c.Write(Event("RESUME"));
                      c.WaitClosed();
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  Result<json> r = qmp->Execute("stop");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 1);
  Result<json> ev = qmp->WaitEvent("MIGRATION", milliseconds(1000));
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ((*ev)["data"]["n"], "MIGRATION");
  ev = qmp->WaitEvent("RESUME", milliseconds(2000));  // arrives later, from the socket
  ASSERT_TRUE(ev.ok()) << ev.error().message;
  std::deque<json> rest = qmp->DrainEvents();
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0]["event"], "STOP");
  ev = qmp->WaitEvent("NEVER", milliseconds(100));
  ASSERT_FALSE(ev.ok());
  EXPECT_EQ(ev.error().code, ErrorCode::kTimeout);
  qmp->Close();
}

TEST_F(QmpClientTest, EventQueueIsBounded) {
  FakeServer server(SocketPath(), {[](FakeConn& c) {
                      Handshake(c);
                      json req = ReadRequest(c);
                      std::string burst;
                      for (int i = 0; i < 1100; ++i) burst += Event("E" + std::to_string(i));
                      c.Write(burst + Reply(req, json::object()));
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  ASSERT_TRUE(qmp->Execute("x").ok());
  std::deque<json> events = qmp->DrainEvents();
  ASSERT_EQ(events.size(), QmpClient::kMaxQueuedEvents);
  EXPECT_EQ(events.front()["event"], "E76");
  EXPECT_EQ(events.back()["event"], "E1099");
}

TEST_F(QmpClientTest, LateReplyAfterTimeoutIsNotMistakenForTheNextOne) {
  FakeServer server(SocketPath(), {[](FakeConn& c) {
                      Handshake(c);
                      json slow = ReadRequest(c);
                      json fast = ReadRequest(c);  // sent after the client gave up on `slow`
                      c.Write(Reply(slow, "slow") + Reply(fast, "fast"));
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  auto start = vmm::Clock::now();
  Result<json> r = qmp->Execute("slow", json::object(), milliseconds(200));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_LT(vmm::Clock::now() - start, milliseconds(1500));
  r = qmp->Execute("fast", json::object(), milliseconds(2000));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, "fast");
}

TEST_F(QmpClientTest, MalformedRepliesAreErrorsNotCrashes) {
  const std::vector<std::string> bad = {
      "{not json",
      "[1, 2, 3]",
      "\"just a string\"",
      std::string(5000, '[') + std::string(5000, ']'),
      "{\"return\": \"\xff\xfe\"}",
  };
  FakeServer server(SocketPath(), {[&](FakeConn& c) {
                      Handshake(c);
                      for (const std::string& line : bad) {
                        ReadRequest(c);
                        c.Write(line + "\n");
                      }
                      json req = ReadRequest(c);
                      c.Write(Reply(req, "still fine"));
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  for (size_t i = 0; i < bad.size(); ++i) {
    Result<json> r = qmp->Execute("x", json::object(), milliseconds(2000));
    ASSERT_FALSE(r.ok()) << i;
    EXPECT_EQ(r.error().code, ErrorCode::kInternal) << i << ": " << r.error().message;
  }
  Result<json> r = qmp->Execute("x", json::object(), milliseconds(2000));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, "still fine");
}

TEST_F(QmpClientTest, WrongTypesInRepliesAreHandled) {
  FakeServer server(SocketPath(), {[](FakeConn& c) {
                      Handshake(c);
                      json req = ReadRequest(c);
                      // Stale/foreign ids of odd types are skipped; a bare error
                      // string still fails the command.
                      c.Write(R"({"return": 1, "id": 7})"
                              "\n"
                              R"({"return": 1, "id": null})"
                              "\n"
                              R"({"error": "oops", "id": )" +
                              req["id"].dump() + "}\n");
                      req = ReadRequest(c);
                      c.Write(R"({"id": )" + req["id"].dump() + "}\n");
                      ReadRequest(c);
                      // QEMU omits the id when it could not parse the request.
                      c.Write(R"({"error": {"class": "GenericError", "desc": "JSON parse error"}})"
                              "\n");
                      req = ReadRequest(c);
                      c.Write(R"({"event": 5})"
                              "\n" +
                              Reply(req, 2));
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  Result<json> r = qmp->Execute("a");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("UnknownError"), std::string::npos);
  r = qmp->Execute("b");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInternal);
  r = qmp->Execute("c");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("JSON parse error"), std::string::npos);
  r = qmp->Execute("d");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 2);
}

TEST_F(QmpClientTest, OversizedLineBreaksConnection) {
  FakeServer server(SocketPath(), {[](FakeConn& c) {
                      Handshake(c);
                      ReadRequest(c);
                      c.Write(std::string(QmpClient::kMaxLineBytes + 100, 'a'));
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  Result<json> r = qmp->Execute("x", json::object(), milliseconds(10000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kResourceExhausted);
  EXPECT_TRUE(qmp->broken());
  r = qmp->Execute("y");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
}

TEST_F(QmpClientTest, PeerClosingIsUnavailable) {
  FakeServer server(SocketPath(), {[](FakeConn& c) {
                      Handshake(c);
                      ReadRequest(c);
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  Result<json> r = qmp->Execute("quit");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_TRUE(qmp->broken());
}

TEST_F(QmpClientTest, ConnectTimesOutWithoutSocketOrGreeting) {
  auto start = vmm::Clock::now();
  auto r = QmpClient::Connect(SocketPath(), milliseconds(300));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_LT(vmm::Clock::now() - start, milliseconds(1500));

  FakeServer silent(SocketPath(), {[](FakeConn& c) { c.WaitClosed(); }});
  r = QmpClient::Connect(SocketPath(), milliseconds(300));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_NE(r.error().message.find("another client"), std::string::npos);
}

TEST_F(QmpClientTest, ConnectRejectsBadGreeting) {
  FakeServer server(SocketPath(), {[](FakeConn& c) { c.Write("{\"hello\": 1}\n"); }});
  auto r = QmpClient::Connect(SocketPath(), milliseconds(2000));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("greeting"), std::string::npos);
}

TEST_F(QmpClientTest, ExecuteWithFdPassesTheDescriptor) {
  std::string file = dir_.path() + "/passed";
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  struct stat want;
  ASSERT_EQ(::fstat(fd, &want), 0);
  std::atomic<bool> same_file{false};
  FakeServer server(SocketPath(), {[&](FakeConn& c) {
                      Handshake(c);
                      std::vector<int> fds;
                      json req = json::parse(c.ReadLineWithFds(&fds), nullptr, false);
                      struct stat got;
                      same_file = fds.size() == 1 && ::fstat(fds[0], &got) == 0 &&
                                  got.st_ino == want.st_ino && got.st_dev == want.st_dev;
                      for (int f : fds) ::close(f);
                      c.Write(Reply(req, json::object()));
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  Result<json> r = qmp->ExecuteWithFd("getfd", {{"fdname", "x"}}, fd);
  ::close(fd);
  ASSERT_TRUE(r.ok()) << r.error().message;
  qmp->Close();
  server.Join();
  EXPECT_TRUE(same_file);
}

TEST_F(QmpClientTest, ConcurrentCallersAreSerialized) {
  FakeServer server(SocketPath(), {[](FakeConn& c) {
                      Handshake(c);
                      for (int i = 0; i < 20; ++i) {
                        json req = ReadRequest(c);
                        c.Write(Event("TICK") + Reply(req, req.value("execute", "")));
                      }
                    }});
  auto qmp = ConnectOrDie();
  ASSERT_NE(qmp, nullptr);
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        std::string cmd = "cmd-" + std::to_string(t) + "-" + std::to_string(i);
        Result<json> r = qmp->Execute(cmd, json::object(), milliseconds(5000));
        if (r.ok() && *r == cmd) ++good;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good, 20);
  EXPECT_EQ(qmp->DrainEvents().size(), 20u);
}

}  // namespace
}  // namespace vmgrid
