// --devices parsing, the workers' command lines, and the supervisor's restart and stop rules
// with /bin/sh children standing in for workers (tests/device_supervisor_e2e_test.cc runs the
// real kvsweep-worker).
#include "worker/device_supervisor.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvsweep {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<DeviceSlot> Slots(const std::string& spec, int cuda) {
  absl::StatusOr<std::vector<DeviceSlot>> s = ParseDeviceSlots(spec, cuda);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::vector<DeviceSlot>{};
}

std::string Error(const std::string& spec, int cuda) {
  absl::StatusOr<std::vector<DeviceSlot>> s = ParseDeviceSlots(spec, cuda);
  EXPECT_FALSE(s.ok()) << spec;
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(s.status().message());
}

TEST(ParseDeviceSlotsTest, AllIsEveryCudaDeviceOrOneCpuWorker) {
  EXPECT_THAT(Slots("all", 3),
              ElementsAre(DeviceSlot{"cuda:0", "cuda0"}, DeviceSlot{"cuda:1", "cuda1"},
                          DeviceSlot{"cuda:2", "cuda2"}));
  EXPECT_THAT(Slots("all", 0), ElementsAre(DeviceSlot{"cpu", "cpu0"}));
}

TEST(ParseDeviceSlotsTest, IndicesGroupsAndCpu) {
  EXPECT_THAT(Slots("3,1", 4),
              ElementsAre(DeviceSlot{"cuda:3", "cuda3"}, DeviceSlot{"cuda:1", "cuda1"}));
  EXPECT_THAT(Slots("0+1,2+3", 4), ElementsAre(DeviceSlot{"cuda:0,cuda:1", "cuda0+1"},
                                               DeviceSlot{"cuda:2,cuda:3", "cuda2+3"}));
  EXPECT_THAT(Slots("cpu:2", 0), ElementsAre(DeviceSlot{"cpu", "cpu0"}, DeviceSlot{"cpu", "cpu1"}));
}

TEST(ParseDeviceSlotsTest, BadSpellingsAreOneLineErrors) {
  EXPECT_THAT(Error("", 2), HasSubstr("empty"));
  EXPECT_THAT(Error("2", 2), HasSubstr("CUDA device 2 does not exist (2 present)"));
  EXPECT_THAT(Error("0", 0), HasSubstr("does not exist (0 present)"));
  EXPECT_THAT(Error("0,0", 2), HasSubstr("CUDA device 0 named twice"));
  EXPECT_THAT(Error("0+1,1", 2), HasSubstr("named twice"));
  EXPECT_THAT(Error("cuda:0", 2), HasSubstr("'cuda:0' is not a CUDA device index"));
  EXPECT_THAT(Error("0,,1", 2), HasSubstr("'' is not a CUDA device index"));
  EXPECT_THAT(Error("-1", 2), HasSubstr("not a CUDA device index"));
  EXPECT_THAT(Error(" 1", 2), HasSubstr("not a CUDA device index"));
  EXPECT_THAT(Error("99999999999", 2), HasSubstr("not a CUDA device index"));
  EXPECT_THAT(Error("cpu:0", 0), HasSubstr("cpu:N needs 1 <= N <= 256"));
  EXPECT_THAT(Error("cpu:x", 0), HasSubstr("cpu:N"));
  EXPECT_THAT(Error("cpu:257", 0), HasSubstr("cpu:N"));
  EXPECT_THAT(Error("cpu", 0), HasSubstr("not a CUDA device index"));
}

TEST(ChildArgvTest, DropsSupervisorFlagsAndAddsDeviceAndId) {
  const std::vector<std::string> argv = {"kvsweep-worker",
                                         "--coordinator",
                                         "h:1",
                                         "--devices",
                                         "cpu:2",
                                         "--worker-id",
                                         "w",
                                         "--max-restarts=3",
                                         "--journal",
                                         "j",
                                         "--devices=cpu:2",
                                         "--worker-id=x"};
  EXPECT_THAT(ChildArgv("/bin/kw", argv, DeviceSlot{"cpu", "cpu1"}, "node7"),
              ElementsAre("/bin/kw", "--coordinator", "h:1", "--journal", "j", "--device", "cpu",
                          "--worker-id", "node7-cpu1", "--supervised"));
}

TEST(ChildArgvTest, EachWorkerGetsItsOwnMetricsAddress) {
  std::vector<DeviceSlot> slots = {{"cuda:0", "cuda0"}, {"cuda:1", "cuda1"}, {"cuda:3", "cuda3"}};
  ASSERT_TRUE(AssignMetricsAddresses("0.0.0.0:9400", &slots).ok());
  EXPECT_EQ(slots[0].metrics_listen, "0.0.0.0:9400");
  EXPECT_EQ(slots[2].metrics_listen, "0.0.0.0:9402");
  const std::vector<std::string> argv = {"kvsweep-worker", "--metrics-listen",
                                         "0.0.0.0:9400",   "--devices",
                                         "0,1,3",          "--metrics-listen=1"};
  EXPECT_THAT(ChildArgv("/bin/kw", argv, slots[1], "n"),
              ElementsAre("/bin/kw", "--device", "cuda:1", "--worker-id", "n-cuda1",
                          "--metrics-listen", "0.0.0.0:9401", "--supervised"));
  std::vector<DeviceSlot> v6 = {{"cpu", "cpu0"}, {"cpu", "cpu1"}};
  ASSERT_TRUE(AssignMetricsAddresses("[::1]:80", &v6).ok());
  EXPECT_EQ(v6[1].metrics_listen, "[::1]:81");
  ASSERT_TRUE(AssignMetricsAddresses("9000", &v6).ok());  // a bare port: 127.0.0.1
  EXPECT_EQ(v6[1].metrics_listen, "127.0.0.1:9001");
  absl::Status zero = AssignMetricsAddresses("127.0.0.1:0", &v6);
  EXPECT_EQ(zero.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(zero.message()), HasSubstr("fixed PORT"));
  absl::Status past = AssignMetricsAddresses("65535", &v6);
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(past.message()), HasSubstr("past 65535"));
  EXPECT_FALSE(AssignMetricsAddresses("nope:x", &v6).ok());
}

// A file's lines.
std::vector<std::string> Lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/device_supervisor_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  // Options whose children run `script` under /bin/sh; the script's $1..$6 are
  // --device D --worker-id ID --supervised, so "$4" is the worker id.
  SupervisorOptions ShOptions(const std::string& script, int slots) {
    SupervisorOptions o;
    o.self_exe = "/bin/sh";
    o.argv = {"kvsweep-worker", "-c", script, "sh"};
    for (int i = 0; i < slots; ++i) o.slots.push_back({"cpu", "cpu" + std::to_string(i)});
    o.base_id = "t";
    o.max_restarts = 2;
    o.restart_backoff_ms = 10;
    return o;
  }
  std::string dir_;
};

TEST_F(SupervisorTest, CleanExitsAreNotRestarted) {
  DeviceSupervisor s(ShOptions("echo \"$4\" >> " + dir_ + "/starts; exit 0", 2));
  EXPECT_EQ(s.Run(), 0);
  std::vector<std::string> starts = Lines(dir_ + "/starts");
  std::sort(starts.begin(), starts.end());
  EXPECT_THAT(starts, ElementsAre("t-cpu0", "t-cpu1"));
}

TEST_F(SupervisorTest, CrashingWorkerIsRestartedUpToTheLimitThenGivenUp) {
  // t-cpu0 kills itself each time; t-cpu1 exits cleanly.
  DeviceSupervisor s(ShOptions(
      "echo \"$4\" >> " + dir_ + "/starts; [ \"$4\" = t-cpu0 ] && kill -9 $$; exit 0", 2));
  EXPECT_EQ(s.Run(), 1);
  int crashing = 0, clean = 0;
  for (const std::string& l : Lines(dir_ + "/starts")) (l == "t-cpu0" ? crashing : clean)++;
  EXPECT_EQ(crashing, 3);  // the first start and max_restarts = 2 restarts
  EXPECT_EQ(clean, 1);
}

TEST_F(SupervisorTest, CrashThenCleanExitEndsInSuccess) {
  // The first run crashes (exit 1), the restarted one exits 0.
  const std::string f = dir_ + "/starts";
  DeviceSupervisor s(
      ShOptions("echo x >> " + f + "; [ $(wc -l < " + f + ") -ge 2 ] && exit 0; exit 1", 1));
  EXPECT_EQ(s.Run(), 0);
  EXPECT_EQ(Lines(f).size(), 2u);
}

TEST_F(SupervisorTest, ErrorExitTwoIsNotRestarted) {
  DeviceSupervisor s(ShOptions("echo x >> " + dir_ + "/starts; exit 2", 1));
  EXPECT_EQ(s.Run(), 1);
  EXPECT_EQ(Lines(dir_ + "/starts").size(), 1u);
}

TEST_F(SupervisorTest, StopRequestReachesEveryWorkerAsSigusr1) {
  // Each child records SIGUSR1 and exits 0 on it; SIGTERM would kill it (and fail the run).
  const std::string script = "trap 'echo \"$4\" >> " + dir_ +
                             "/drained; exit 0' USR1; echo \"$4\" >> " + dir_ +
                             "/ready; while :; do sleep 0.02; done";
  DeviceSupervisor s(ShOptions(script, 2));
  int rc = -1;
  std::thread run([&] { rc = s.Run(); });
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (Lines(dir_ + "/ready").size() < 2 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Lines(dir_ + "/ready").size(), 2u);
  s.Forward(SIGTERM);
  run.join();
  EXPECT_EQ(rc, 0);
  std::vector<std::string> drained = Lines(dir_ + "/drained");
  std::sort(drained.begin(), drained.end());
  EXPECT_THAT(drained, ElementsAre("t-cpu0", "t-cpu1"));
}

}  // namespace
}  // namespace kvsweep
