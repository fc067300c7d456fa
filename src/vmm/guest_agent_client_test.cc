#include "vmm/guest_agent_client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/base64.h"
#include "vmm/fake_peer.h"

namespace vmgrid {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using vmgrid::Base64Decode;
using vmgrid::Base64Encode;
using vmm::Clock;
using vmm::testing::FakeConn;
using vmm::testing::FakeServer;
using vmm::testing::TempDir;

using Handler = std::function<std::optional<std::string>(const json& req)>;

std::string Ret(const json& v) { return json{{"return", v}}.dump(); }

// Serves agent requests until EOF: answers guest-sync-delimited like
// qemu-ga does and hands everything else to `handle`, which returns the reply
// line or nullopt to stay silent.
void ServeAgent(FakeConn& c, const Handler& handle) {
  for (;;) {
    std::string line = c.ReadLine();
    if (line.empty()) return;
    size_t start = line.find_first_not_of('\xff');
    if (start == std::string::npos) continue;
    json req = json::parse(line.substr(start), nullptr, false);
    if (req.is_discarded()) continue;
    if (req.value("execute", "") == "guest-sync-delimited") {
      c.Write("\xff" + Ret(req["arguments"]["id"]) + "\n");
      continue;
    }
    std::optional<std::string> reply = handle(req);
    if (reply) c.Write(*reply + "\n");
  }
}

Handler PingOnly() {
  return [](const json& req) -> std::optional<std::string> {
    if (req["execute"] == "guest-ping") return Ret(json::object());
    return R"({"error": {"class": "CommandNotFound", "desc": "no"}})";
  };
}

class GuestAgentClientTest : public ::testing::Test {
 protected:
  std::string SocketPath() const { return dir_.path() + "/qga.sock"; }
  std::unique_ptr<GuestAgentClient> ConnectOrDie() {
    auto c = GuestAgentClient::Connect(SocketPath(), milliseconds(3000));
    EXPECT_TRUE(c.ok()) << c.error().message;
    return c.ok() ? std::move(c).value() : nullptr;
  }
  TempDir dir_;
};

TEST_F(GuestAgentClientTest, SyncSkipsStaleBytesAndStaleReplies) {
  std::atomic<bool> request_had_delimiter{false};
  FakeServer server(SocketPath(), {[&](FakeConn& c) {
                      std::string line = c.ReadLine();
                      request_had_delimiter = !line.empty() && line[0] == '\xff';
                      json req = json::parse(line.substr(1), nullptr, false);
                      int64_t id = req["arguments"]["id"];
                      c.Write("leftover from before {\"return\": {}}\n");
                      c.Write("\xff" + Ret(id + 1) + "\n");  // an older sync's reply
                      c.Write("\xff{garbled\n");
                      c.Write("\xff" + Ret(id) + "\n");
                      ServeAgent(c, PingOnly());
                    }});
  auto ga = ConnectOrDie();
  ASSERT_NE(ga, nullptr);
  EXPECT_TRUE(request_had_delimiter);
  Status st = ga->Ping(milliseconds(2000));
  EXPECT_TRUE(st.ok()) << st.error().message;
}

TEST_F(GuestAgentClientTest, SyncWithWrongIdTimesOut) {
  FakeServer server(SocketPath(), {[](FakeConn& c) {
                      c.ReadLine();
                      c.Write("\xff" + Ret(1) + "\n");
                      c.WaitClosed();
                    }});
  auto start = Clock::now();
  auto r = GuestAgentClient::Connect(SocketPath(), milliseconds(300));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
}

TEST_F(GuestAgentClientTest, SilentAgentTimesOut) {
  // What a wait=off chardev looks like before qemu-ga runs: writes succeed,
  // nothing ever answers.
  FakeServer server(SocketPath(), {[](FakeConn& c) { c.WaitClosed(); }});
  auto start = Clock::now();
  auto r = GuestAgentClient::Connect(SocketPath(), milliseconds(300));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
}

TEST_F(GuestAgentClientTest, TimeoutForcesResyncBeforeNextCommand) {
  std::atomic<int> pings{0};
  FakeServer server(SocketPath(), {[&](FakeConn& c) {
                      ServeAgent(c, [&](const json& req) -> std::optional<std::string> {
                        if (req["execute"] != "guest-ping") return std::nullopt;
                        if (++pings == 1) {
                          std::this_thread::sleep_for(milliseconds(400));
                          return Ret("late");
                        }
                        return Ret("fresh");
                      });
                    }});
  auto ga = ConnectOrDie();
  ASSERT_NE(ga, nullptr);
  Result<json> r = ga->Call("guest-ping", json::object(), milliseconds(150));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  // The late reply to the first ping must not be taken for this one's.
  r = ga->Call("guest-ping", json::object(), milliseconds(3000));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, "fresh");
}

TEST_F(GuestAgentClientTest, ExecPollsAndDecodesOutput) {
  std::atomic<int> polls{0};
  json exec_req;
  std::mutex mu;
  FakeServer server(
      SocketPath(), {[&](FakeConn& c) {
        ServeAgent(c, [&](const json& req) -> std::optional<std::string> {
          if (req["execute"] == "guest-exec") {
            std::lock_guard<std::mutex> l(mu);
            exec_req = req;
            return Ret({{"pid", 42}});
          }
          if (req["execute"] == "guest-exec-status" && req["arguments"]["pid"] == 42) {
            if (++polls < 3) return Ret({{"exited", false}});
            return Ret({{"exited", true},
                        {"exitcode", 3},
                        {"out-data", Base64Encode("hi\n")},
                        {"err-data", Base64Encode(std::string("e\0r", 3))},
                        {"out-truncated", true}});
          }
          return std::nullopt;
        });
      }});
  auto ga = ConnectOrDie();
  ASSERT_NE(ga, nullptr);
  Result<ExecResult> r = ga->Exec({"/bin/sh", "-c", "echo hi"}, "input!", milliseconds(5000));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_FALSE(r->signaled);
  EXPECT_EQ(r->out, "hi\n");
  EXPECT_EQ(r->err, std::string("e\0r", 3));
  EXPECT_TRUE(r->out_truncated);
  EXPECT_FALSE(r->err_truncated);
  EXPECT_EQ(polls, 3);
  std::lock_guard<std::mutex> l(mu);
  EXPECT_EQ(exec_req["arguments"]["path"], "/bin/sh");
  EXPECT_EQ(exec_req["arguments"]["arg"], json({"-c", "echo hi"}));
  EXPECT_EQ(exec_req["arguments"]["capture-output"], true);
  EXPECT_EQ(*Base64Decode(exec_req["arguments"]["input-data"].get<std::string>()), "input!");
}

TEST_F(GuestAgentClientTest, ExecReportsSignalTimeoutAndBadData) {
  std::atomic<int> pid{0};
  FakeServer server(SocketPath(), {[&](FakeConn& c) {
                      ServeAgent(c, [&](const json& req) -> std::optional<std::string> {
                        if (req["execute"] == "guest-exec") return Ret({{"pid", ++pid}});
                        if (req["execute"] != "guest-exec-status") return std::nullopt;
                        int p = req["arguments"]["pid"];
                        if (p == 1) return Ret({{"exited", true}, {"signal", 9}});
                        if (p == 2) return Ret({{"exited", false}});
                        if (p == 3)
                          return Ret({{"exited", true}, {"exitcode", 0}, {"out-data", "!!"}});
                        return Ret({{"no-exited-field", 1}});
                      });
                    }});
  auto ga = ConnectOrDie();
  ASSERT_NE(ga, nullptr);
  Result<ExecResult> r = ga->Exec({"sleep", "9"}, "", milliseconds(2000));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r->signaled);
  EXPECT_EQ(r->exit_code, 9);

  auto start = Clock::now();
  r = ga->Exec({"sleep", "99"}, "", milliseconds(300));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, milliseconds(2000));

  r = ga->Exec({"x"}, "", milliseconds(2000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInternal);
  r = ga->Exec({"y"}, "", milliseconds(2000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInternal);
  r = ga->Exec({}, "", milliseconds(2000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

// A fake guest filesystem holding one file, recording handle closes.
struct FakeFiles {
  std::mutex mu;
  std::string content;  // served by reads
  std::string written;  // collected from writes
  std::string opened_path, opened_mode;
  size_t read_pos = 0;
  int closes = 0;
  size_t max_write = SIZE_MAX;  // simulates short writes
  bool bad_count = false;

  Handler handler() {
    return [this](const json& req) -> std::optional<std::string> {
      std::lock_guard<std::mutex> l(mu);
      const std::string cmd = req["execute"];
      const json& a = req.contains("arguments") ? req["arguments"] : json::object();
      if (cmd == "guest-file-open") {
        opened_path = a["path"];
        opened_mode = a["mode"];
        if (opened_path == "/missing") {
          return R"({"error": {"class": "GenericError", "desc": "failed to open file '/missing' (mode: 'r'): No such file or directory"}})";
        }
        if (opened_path == "/denied") {
          return R"({"error": {"class": "GenericError", "desc": "failed to open file '/denied' (mode: 'w'): Permission denied"}})";
        }
        if (opened_mode == "w") written.clear();
        read_pos = 0;
        return Ret(1000);
      }
      if (cmd == "guest-file-read") {
        size_t count = a["count"];
        // Serve at most 4 bytes per read to exercise the loop.
        std::string chunk = content.substr(read_pos, std::min<size_t>(count, 4));
        read_pos += chunk.size();
        return Ret({{"count", bad_count ? chunk.size() + 1 : chunk.size()},
                    {"buf-b64", Base64Encode(chunk)},
                    {"eof", read_pos >= content.size()}});
      }
      if (cmd == "guest-file-write") {
        std::string data = *Base64Decode(a["buf-b64"].get<std::string>());
        size_t n = std::min(data.size(), max_write);
        written += data.substr(0, n);
        return Ret({{"count", n}, {"eof", false}});
      }
      if (cmd == "guest-file-seek") {
        // Reads seek in `content`, writes in `written`.
        const std::string& f = opened_mode == "r" ? content : written;
        int64_t off = a["offset"];
        read_pos = a["whence"] == "end" ? f.size() + off : off;
        return Ret({{"position", read_pos}, {"eof", read_pos >= f.size()}});
      }
      if (cmd == "guest-file-close") {
        ++closes;
        return Ret(json::object());
      }
      return std::nullopt;
    };
  }
};

TEST_F(GuestAgentClientTest, ReadFileLoopsUntilEofAndCloses) {
  FakeFiles files;
  files.content = "hello, guest world";
  FakeServer server(SocketPath(), {[&](FakeConn& c) { ServeAgent(c, files.handler()); }});
  auto ga = ConnectOrDie();
  ASSERT_NE(ga, nullptr);
  Result<std::string> r = ga->ReadFile("/etc/x", 1024);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, "hello, guest world");
  r = ga->ReadFile("/etc/x", 18);  // exactly the size
  ASSERT_TRUE(r.ok()) << r.error().message;
  r = ga->ReadFile("/etc/x", 10);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kResourceExhausted);
  r = ga->ReadFile("/missing", 10);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("No such file"), std::string::npos);
  {
    std::lock_guard<std::mutex> l(files.mu);
    files.bad_count = true;
  }
  r = ga->ReadFile("/etc/x", 100);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInternal);
  std::lock_guard<std::mutex> l(files.mu);
  EXPECT_EQ(files.closes, 4);  // every successful open was closed
  EXPECT_EQ(files.opened_mode, "r");
}

TEST_F(GuestAgentClientTest, FileChunksReadAndWriteAtOffsetsAndMapGuestErrors) {
  FakeFiles files;
  files.content = "0123456789";
  FakeServer server(SocketPath(), {[&](FakeConn& c) { ServeAgent(c, files.handler()); }});
  auto ga = ConnectOrDie();
  ASSERT_NE(ga, nullptr);
  auto a = ga->ReadFileAt("/f", 0, 6);
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(a->data, "012345");
  EXPECT_EQ(a->size, 10);
  EXPECT_FALSE(a->eof);
  auto b = ga->ReadFileAt("/f", 6, 6);
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(b->data, "6789");
  EXPECT_TRUE(b->eof);

  auto w = ga->WriteFileAt("/out", 0, "abc");
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_EQ(*w, 3);
  w = ga->WriteFileAt("/out", 3, "def");
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_EQ(*w, 6);
  auto gap = ga->WriteFileAt("/out", 9, "x");
  ASSERT_FALSE(gap.ok()) << "a chunk must follow the file's end";
  EXPECT_EQ(gap.error().code, ErrorCode::kFailedPrecondition);

  auto missing = ga->ReadFileAt("/missing", 0, 6);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(missing.error().message, "guest file /missing: No such file or directory");
  auto denied = ga->WriteFileAt("/denied", 0, "x");
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.error().code, ErrorCode::kPermissionDenied);
  std::lock_guard<std::mutex> l(files.mu);
  EXPECT_EQ(files.written, "abcdef");
  EXPECT_EQ(files.closes, 5);  // every open that succeeded
}

TEST_F(GuestAgentClientTest, WriteFileHandlesShortWrites) {
  FakeFiles files;
  files.max_write = 3;
  FakeServer server(SocketPath(), {[&](FakeConn& c) { ServeAgent(c, files.handler()); }});
  auto ga = ConnectOrDie();
  ASSERT_NE(ga, nullptr);
  std::string data = "0123456789abcdef";
  Status st = ga->WriteFile("/tmp/out", data);
  ASSERT_TRUE(st.ok()) << st.error().message;
  std::lock_guard<std::mutex> l(files.mu);
  EXPECT_EQ(files.written, data);
  EXPECT_EQ(files.opened_path, "/tmp/out");
  EXPECT_EQ(files.opened_mode, "w");
  EXPECT_EQ(files.closes, 1);
}

TEST_F(GuestAgentClientTest, ReseedRandomWrites64HostBytesToUrandom) {
  FakeFiles files;
  FakeServer server(SocketPath(), {[&](FakeConn& c) { ServeAgent(c, files.handler()); }});
  auto ga = ConnectOrDie();
  ASSERT_NE(ga, nullptr);
  ASSERT_TRUE(ga->ReseedRandom().ok());
  std::string first;
  {
    std::lock_guard<std::mutex> l(files.mu);
    EXPECT_EQ(files.opened_path, "/dev/urandom");
    EXPECT_EQ(files.written.size(), 64u);
    first = files.written;
    files.written.clear();
  }
  ASSERT_TRUE(ga->ReseedRandom().ok());
  std::lock_guard<std::mutex> l(files.mu);
  EXPECT_NE(files.written, first);
}

TEST_F(GuestAgentClientTest, WaitReadyRetriesUntilTheAgentAnswers) {
  // Two connections go unanswered (no agent in the guest yet), the third works.
  FakeServer server(SocketPath(),
                    {[](FakeConn& c) { c.WaitClosed(); }, [](FakeConn& c) { c.WaitClosed(); },
                     [](FakeConn& c) { ServeAgent(c, PingOnly()); }});
  auto start = Clock::now();
  Status st = GuestAgentClient::WaitReady(SocketPath(), Clock::now() + milliseconds(10000));
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_GE(Clock::now() - start, milliseconds(900));  // two ~500 ms tries failed first
}

TEST_F(GuestAgentClientTest, WaitReadyGivesUpAtDeadline) {
  std::vector<FakeServer::Script> silent(20, [](FakeConn& c) { c.WaitClosed(); });
  FakeServer server(SocketPath(), silent);
  auto start = Clock::now();
  Status st = GuestAgentClient::WaitReady(SocketPath(), Clock::now() + milliseconds(1200));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kTimeout);
  EXPECT_LT(Clock::now() - start, milliseconds(2500));

  // No socket at all behaves the same.
  st = GuestAgentClient::WaitReady(dir_.path() + "/none.sock", Clock::now() + milliseconds(300));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kTimeout);
}

}  // namespace
}  // namespace vmgrid
