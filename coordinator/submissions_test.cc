// Submissions on a fake preparation whose progress the test controls (latches, no sleeps in
// assertions); the real one (expansion + hashing + enqueueing) is exercised end to end in
// tests/e2e_test.cc (SubmitOutlivesTheCallDeadlineWhileHashing).
#include "coordinator/submissions.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <memory>

namespace kvsweep {
namespace {

using std::chrono::steady_clock;

v1::SubmitSweepRequest Req(const std::string& yaml, bool dry_run = false) {
  v1::SubmitSweepRequest r;
  r.set_sweep_yaml(yaml);
  r.set_base_dir("/tmp");
  r.set_dry_run(dry_run);
  return r;
}

steady_clock::time_point Now() { return steady_clock::now(); }
steady_clock::time_point Forever() { return steady_clock::now() + std::chrono::hours(1); }

// A preparation that reports some hashing, then blocks until released (or cancelled).
struct Gate {
  std::promise<void> release;
  std::shared_future<void> released{release.get_future().share()};
  std::atomic<int> calls{0};
  std::string last_actor;

  PrepareFn Fn() {
    return [this](const v1::SubmitSweepRequest& req, const std::string& actor,
                  HashMonitor* m) -> absl::StatusOr<v1::SubmitSweepResponse> {
      ++calls;
      last_actor = actor;
      // The file first: a reader that sees the bytes then sees the file too.
      m->set_current({"/models/x/model.safetensors", 10 << 20, 3 << 20});
      m->bytes_hashed.fetch_add(3 << 20);
      while (released.wait_for(std::chrono::milliseconds(5)) != std::future_status::ready) {
        if (m->cancelled.load()) return absl::CancelledError("hashing cancelled");
      }
      if (req.sweep_yaml() == "bad") return absl::InvalidArgumentError("sweep:1: bad");
      v1::SubmitSweepResponse r;
      r.set_sweep(req.sweep_yaml());
      r.set_jobs_total(7);
      r.set_dry_run(req.dry_run());
      return r;
    };
  }
};

TEST(SubmissionsTest, AnswersPendingWithProgressUntilThePreparationFinishes) {
  Gate gate;
  Submissions subs(gate.Fn());
  absl::StatusOr<std::string> id = subs.Start(Req("a"), "client", "client peer=x");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), 32u);
  // Wait until the fake has reported its hashing, then look: still pending.
  absl::StatusOr<v1::SubmitSweepResponse> r;
  do {
    r = subs.Wait(*id, "client", Now());
    ASSERT_TRUE(r.ok()) << r.status();
  } while (r->progress().bytes_hashed() == 0 || r->progress().file().empty());
  EXPECT_TRUE(r->pending());
  EXPECT_EQ(r->submission(), *id);
  EXPECT_EQ(r->progress().bytes_hashed(), 3 << 20);
  EXPECT_EQ(r->progress().file(), "/models/x/model.safetensors");
  EXPECT_EQ(r->progress().file_bytes(), 10 << 20);
  EXPECT_EQ(r->progress().file_bytes_hashed(), 3 << 20);
  EXPECT_EQ(r->jobs_total(), 0);
  EXPECT_EQ(subs.running(), 1);

  gate.release.set_value();
  r = subs.Wait(*id, "client", Forever());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->pending());
  EXPECT_EQ(r->submission(), *id);
  EXPECT_EQ(r->sweep(), "a");
  EXPECT_EQ(r->jobs_total(), 7);
  EXPECT_EQ(gate.last_actor, "client peer=x");
  EXPECT_EQ(subs.running(), 0);
  // A lost answer can be asked for again.
  r = subs.Wait(*id, "client", Now());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->jobs_total(), 7);
}

TEST(SubmissionsTest, TheSameOwnersIdenticalRequestJoinsTheRunningSubmission) {
  Gate gate;
  Submissions subs(gate.Fn());
  absl::StatusOr<std::string> a = subs.Start(Req("a"), "client", "c1");
  absl::StatusOr<std::string> again = subs.Start(Req("a"), "client", "c2");
  absl::StatusOr<std::string> other_owner = subs.Start(Req("a"), "admin", "c3");
  absl::StatusOr<std::string> dry = subs.Start(Req("a", true), "client", "c4");
  absl::StatusOr<std::string> other_yaml = subs.Start(Req("b"), "client", "c5");
  for (auto* s : {&a, &again, &other_owner, &dry, &other_yaml}) ASSERT_TRUE(s->ok());
  EXPECT_EQ(*again, *a);
  EXPECT_NE(*other_owner, *a);
  EXPECT_NE(*dry, *a);
  EXPECT_NE(*other_yaml, *a);
  EXPECT_EQ(subs.running(), 4);
  gate.release.set_value();
  for (auto* s : {&a, &other_owner, &dry, &other_yaml}) {
    const std::string owner = s == &other_owner ? "admin" : "client";
    ASSERT_TRUE(subs.Wait(**s, owner, Forever()).ok());
  }
  EXPECT_EQ(gate.calls.load(), 4);
  // Once finished, the same request starts afresh (its hashes come from the cache then).
  absl::StatusOr<std::string> later = subs.Start(Req("a"), "client", "c6");
  ASSERT_TRUE(later.ok());
  EXPECT_NE(*later, *a);
  ASSERT_TRUE(subs.Wait(*later, "client", Forever()).ok());
}

TEST(SubmissionsTest, ErrorsOfThePreparationAreTheAnswer) {
  Gate gate;
  gate.release.set_value();
  Submissions subs(gate.Fn());
  absl::StatusOr<std::string> id = subs.Start(Req("bad"), "client", "c");
  ASSERT_TRUE(id.ok());
  absl::StatusOr<v1::SubmitSweepResponse> r = subs.Wait(*id, "client", Forever());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "sweep:1: bad");
}

TEST(SubmissionsTest, OnlyTheOwnerCanFollowASubmission) {
  Gate gate;
  gate.release.set_value();
  Submissions subs(gate.Fn());
  absl::StatusOr<std::string> id = subs.Start(Req("a"), "client cn=alice", "c");
  ASSERT_TRUE(id.ok());
  for (const auto& [sid, owner] : std::vector<std::pair<std::string, std::string>>{
           {*id, "client cn=bob"},
           {*id, "reader"},
           {"0123456789abcdef0123456789abcdef", "client cn=alice"},
           {std::string(5000, 'x'), "client cn=alice"}}) {
    absl::StatusOr<v1::SubmitSweepResponse> r = subs.Wait(sid, owner, Forever());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
    EXPECT_NE(r.status().message().find("submit the sweep again"), absl::string_view::npos)
        << r.status();
    EXPECT_LT(r.status().message().size(), 400u);  // the id is not echoed whole
  }
  EXPECT_TRUE(subs.Wait(*id, "client cn=alice", Forever()).ok());
}

TEST(SubmissionsTest, RefusesMoreThanTheLimitRunningAtOnce) {
  Gate gate;
  SubmissionsOptions o;
  o.max_running = 2;
  Submissions subs(gate.Fn(), o);
  ASSERT_TRUE(subs.Start(Req("a"), "client", "c").ok());
  absl::StatusOr<std::string> b = subs.Start(Req("b"), "client", "c");
  ASSERT_TRUE(b.ok());
  absl::StatusOr<std::string> c = subs.Start(Req("c"), "client", "c");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("2 submissions are being prepared"), absl::string_view::npos)
      << c.status();
  // Joining a running one is not a new one.
  EXPECT_TRUE(subs.Start(Req("b"), "client", "c").ok());
  gate.release.set_value();
  ASSERT_TRUE(subs.Wait(*b, "client", Forever()).ok());
  while (subs.running() > 0) {
    std::this_thread::yield();
  }
  EXPECT_TRUE(subs.Start(Req("c"), "client", "c").ok());
}

TEST(SubmissionsTest, ShutdownCancelsRunningPreparationsAndRefusesNewOnes) {
  Gate gate;  // never released: only the cancellation ends the preparation
  Submissions subs(gate.Fn());
  absl::StatusOr<std::string> id = subs.Start(Req("a"), "client", "c");
  ASSERT_TRUE(id.ok());
  auto waiter = std::async(std::launch::async, [&] { return subs.Wait(*id, "client", Forever()); });
  subs.Shutdown();  // returns once the preparation's thread has ended
  EXPECT_EQ(subs.running(), 0);
  absl::StatusOr<v1::SubmitSweepResponse> w = waiter.get();  // woken, not left waiting
  if (w.ok()) {
    EXPECT_TRUE(w->pending());
  } else {
    EXPECT_EQ(w.status().code(), absl::StatusCode::kCancelled);
  }
  absl::StatusOr<v1::SubmitSweepResponse> r = subs.Wait(*id, "client", Forever());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  absl::StatusOr<std::string> late = subs.Start(Req("b"), "client", "c");
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), absl::StatusCode::kUnavailable);
}

TEST(SubmissionsTest, FinishedSubmissionsAreDroppedBeyondTheirLimit) {
  Gate gate;
  gate.release.set_value();
  SubmissionsOptions o;
  o.max_finished = 2;
  Submissions subs(gate.Fn(), o);
  std::vector<std::string> ids;
  for (const char* y : {"a", "b", "c", "d"}) {
    absl::StatusOr<std::string> id = subs.Start(Req(y), "client", "c");
    ASSERT_TRUE(id.ok());
    ASSERT_TRUE(subs.Wait(*id, "client", Forever()).ok());
    ids.push_back(*id);
  }
  // Dropping happens when a submission starts: "d" started with a, b, c finished.
  EXPECT_EQ(subs.Wait(ids[0], "client", Now()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(subs.Wait(ids[2], "client", Now()).ok());
  EXPECT_TRUE(subs.Wait(ids[3], "client", Now()).ok());
}

}  // namespace
}  // namespace kvsweep
