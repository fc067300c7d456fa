#include "api/op_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>

namespace vmgrid {
namespace {

TEST(OpQueueTest, RunsWorkAndTracksVmsInFlight) {
  OpQueue q;
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::atomic<int> done{0};
  q.Run("vm-1", [gate, &done] {
    gate.wait();
    ++done;
  });
  q.Run("", [&done] { ++done; });
  EXPECT_TRUE(q.InFlight("vm-1"));
  EXPECT_FALSE(q.InFlight("vm-2"));
  EXPECT_FALSE(q.WaitIdle(std::chrono::milliseconds(20))) << "vm-1's work still runs";
  release.set_value();
  EXPECT_TRUE(q.WaitIdle(std::chrono::seconds(10)));
  EXPECT_EQ(done.load(), 2);
  EXPECT_FALSE(q.InFlight("vm-1"));
}

TEST(OpQueueTest, QueuesBeyondItsWorkers) {
  OpQueue q(SystemClock::Get(), 2);
  std::atomic<int> done{0};
  for (int i = 0; i < 50; ++i) q.Run("vm-" + std::to_string(i % 3), [&done] { ++done; });
  EXPECT_TRUE(q.WaitIdle(std::chrono::seconds(10)));
  EXPECT_EQ(done.load(), 50);
}

TEST(OpQueueTest, LoadCountsQueuedAndRunningWork) {
  OpQueue q(SystemClock::Get(), 1);
  EXPECT_EQ(q.load().queued, 0u);
  EXPECT_EQ(q.load().running, 0);
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::promise<void> started;
  q.Run("a", [&started, gate] {
    started.set_value();
    gate.wait();
  });
  started.get_future().wait();
  q.Run("b", [gate] { gate.wait(); });  // the one worker is busy: queued
  EXPECT_EQ(q.load().running, 1);
  EXPECT_EQ(q.load().queued, 1u);
  release.set_value();
  EXPECT_TRUE(q.WaitIdle(std::chrono::seconds(10)));
  EXPECT_EQ(q.load().running, 0);
  EXPECT_EQ(q.load().queued, 0u);
}

TEST(OpQueueTest, WhatTheWorkHoldsIsReleasedWhenItCountsAsEnded) {
  OpQueue q;
  auto held = std::make_shared<int>(0);  // e.g. an admission slot
  for (int i = 0; i < 20; ++i) q.Run("vm-1", [held] { ++*held; });
  ASSERT_TRUE(q.WaitIdle(std::chrono::seconds(10)));
  EXPECT_EQ(held.use_count(), 1) << "no worker still holds a copy";
  EXPECT_EQ(*held, 20);
}

TEST(OpQueueTest, OperationRecords) {
  FakeClock clock;
  OpQueue q(clock);
  OpQueue::Operation op;
  op.kind = "exec";
  op.owner_id = "user-1";
  op.vm_id = "vm-1";
  auto started = q.Start(op);
  EXPECT_EQ(started["state"], "running");
  EXPECT_EQ(started["vm_id"], "vm-1");
  EXPECT_TRUE(started["image_id"].is_null());
  q.SetProgress(op.id, "copying", 140);
  auto got = q.Get(op.id, "user-1", false);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)["progress"]["percent"], 100) << "clamped";
  EXPECT_EQ(q.Get(op.id, "user-2", false).error().code, ErrorCode::kNotFound)
      << "another user's operation is not found";
  EXPECT_TRUE(q.Get(op.id, "admin-1", true).ok());

  auto finished = q.Finish(op.id, MakeError(ErrorCode::kUnavailable, "host gone"));
  EXPECT_EQ(finished["state"], "failed");
  EXPECT_EQ(finished["error"]["message"], "host gone");
  EXPECT_TRUE(finished["progress"].is_null());
  EXPECT_TRUE(q.Finish("op-unknown", nlohmann::json::object()).is_null());

  // Finished operations are forgotten after kKeepMs (when the next starts).
  clock.Advance(OpQueue::kKeepMs + 1);
  OpQueue::Operation next;
  next.kind = "exec";
  next.owner_id = "user-1";
  q.Start(next);
  EXPECT_FALSE(q.Get(op.id, "user-1", false).ok());
  EXPECT_TRUE(q.Get(next.id, "user-1", false).ok());
}

}  // namespace
}  // namespace vmgrid
