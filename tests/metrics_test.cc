// Observability of the coordinator process: the Prometheus /metrics endpoint
// (--metrics-listen) after a sweep run by fake workers, and the grpc.health.v1 service that
// Kubernetes probes call (raw, through a generic stub: Debian ships no generated health stub).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <future>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

Harness::WorkerFlags Fake() {
  Harness::WorkerFlags f;
  f.force_fake = true;
  return f;
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// The body of GET http://127.0.0.1:port/path (HTTP/1.0: the server closes when done); "" on
// any error or a status other than 200.
std::string HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if (::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, n);
    }
  }
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || body == std::string::npos ||
      response.find(" 200 ") > response.find("\r\n")) {
    return "";
  }
  return response.substr(body + 4);
}

// The value of the sample line `name` (with its labels, e.g. `kvsweep_jobs{state="done"}`);
// -1 if absent.
double Sample(const std::string& body, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (absl::StartsWith(line, absl::StrCat(name, " "))) {
      return std::strtod(std::string(line.substr(name.size() + 1)).c_str(), nullptr);
    }
  }
  return -1;
}

// grpc.health.v1.Health/Check for `service`: the status enum (1 SERVING, 2 NOT_SERVING), or
// -(gRPC code) when the call fails. HealthCheckRequest is {1: string service};
// HealthCheckResponse is {1: enum status}, a zero status encoded as an empty message.
int HealthCheck(const std::string& address, const std::string& service) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::string req;
  if (!service.empty()) {
    req.push_back('\x0a');
    req.push_back(static_cast<char>(service.size()));  // < 128 here: one-byte varint
    req += service;
  }
  grpc::Slice slice(req);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status s = done.get_future().get();
  if (!s.ok()) return -static_cast<int>(s.error_code());
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -100;
  std::string bytes;
  for (const grpc::Slice& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  if (bytes.empty()) return 0;
  if (bytes.size() != 2 || bytes[0] != '\x08') return -101;
  return bytes[1];
}

TEST(MetricsTest, ScrapeAfterSweepAndHealthServing) {
  Harness h("metrics");
  const int metrics_port = FreePort();
  Harness::CoordinatorFlags flags;
  flags.extra = {"--metrics-listen", absl::StrCat("127.0.0.1:", metrics_port)};
  h.StartCoordinator(flags);

  EXPECT_EQ(HealthCheck(h.address(), ""), 1);
  EXPECT_EQ(HealthCheck(h.address(), "kvsweep.v1.SweepService"), 1);
  EXPECT_EQ(HealthCheck(h.address(), "kvsweep.v1.WorkerService"), 1);
  EXPECT_EQ(HealthCheck(h.address(), "no.such.Service"), -grpc::StatusCode::NOT_FOUND);

  constexpr int kJobs = 5;
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("obs", kJobs)));
  h.StartWorker(Fake());
  h.StartWorker(Fake());
  ASSERT_TRUE(h.WaitFinished("obs", std::chrono::seconds(120)));
  h.CheckInvariants("obs");

  // Job counts are refreshed at most once a second: scrape until they catch up.
  std::string body;
  const bool caught_up = WaitUntil(
      [&] {
        body = HttpGet(metrics_port, "/metrics");
        return Sample(body, "kvsweep_jobs{state=\"done\"}") == kJobs;
      },
      std::chrono::seconds(15));
  ASSERT_TRUE(caught_up) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"queued\"}"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"leased\"}"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"failed\"}"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"quarantined\"}"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"cancelled\"}"), 0) << body;
  EXPECT_GT(Sample(body, "kvsweep_lease_latency_seconds_count"), 0) << body;
  EXPECT_GE(Sample(body, "kvsweep_complete_latency_seconds_count"), kJobs) << body;
  EXPECT_EQ(Sample(body, "kvsweep_results_total"), kJobs) << body;
  EXPECT_GT(Sample(body, "kvsweep_commits_total"), 0) << body;
  EXPECT_GE(Sample(body, "kvsweep_mutations_total"), Sample(body, "kvsweep_commits_total"))
      << body;
  EXPECT_THAT(body, ::testing::HasSubstr("# TYPE kvsweep_lease_latency_seconds histogram"));

  h.StopCoordinator();
  if (HasFailure()) h.DumpLogs();
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep
