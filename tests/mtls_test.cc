// Mutual TLS end to end with the certificates of deploy/tls/make-certs.sh: a coordinator on
// every interface with a server certificate for the name "coordinator.test" (not the address
// the test dials: the clients check the name through --tls-server-name), client certificates
// required, and role tokens; workers and the CLI with their certificates run a sweep, and clients
// without a certificate, with a certificate from another CA, or that do not trust the
// coordinator's certificate or name are refused. And --health-listen: grpc.health.v1 alone in
// plaintext beside the mTLS port, for probes that cannot do TLS (Kubernetes grpc probes).
#include <cstdlib>
#include <future>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

using ::testing::HasSubstr;

const char kName[] = "coordinator.test";

void MakeCerts(const std::string& dir, const std::string& log) {
  const std::string cmd = absl::StrCat("bash ", KVSWEEP_SOURCE_DIR, "/deploy/tls/make-certs.sh ",
                                       dir, " --coordinator-name ", kName, " > ", log, " 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadFile(log).value_or("");
}

TEST(MutualTlsTest, MakeCertsCertificatesRunASweepAndNoOtherClientGetsIn) {
  if (std::system("openssl version > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no openssl CLI (Debian: openssl)";
  }
  Harness h("mtls");
  const std::string tls = h.dir() + "/tls";
  const std::string other = h.dir() + "/other-ca";
  ASSERT_NO_FATAL_FAILURE(MakeCerts(tls, h.dir() + "/make-certs.log"));
  ASSERT_NO_FATAL_FAILURE(MakeCerts(other, h.dir() + "/make-certs-other.log"));
  const std::string admin_tok = h.WriteFile("admin.token", "mtls-admin-1\n");
  const std::string worker_tok = h.WriteFile("worker.token", "mtls-worker-2\n");
  const std::string client_tok = h.WriteFile("client.token", "mtls-client-3\n");

  Harness::CoordinatorFlags f;
  // Not loopback: TLS and tokens are required (the harness dials 127.0.0.1).
  f.listen_host = "0.0.0.0";
  f.extra = {"--tls-cert",          tls + "/coordinator.crt",
             "--tls-key",           tls + "/coordinator.key",
             "--tls-client-ca",     tls + "/ca.crt",
             "--token-file",        admin_tok,
             "--worker-token-file", worker_tok,
             "--client-token-file", client_tok};
  h.StartCoordinator(f);

  // The CLI as a user: the CA, the client certificate, the expected name, the client token.
  auto user = [&](const std::string& cert_dir, std::vector<std::string> args) {
    std::vector<std::string> a = {"--tls",
                                  "--tls-ca",
                                  tls + "/ca.crt",
                                  "--tls-cert",
                                  cert_dir + "/client.crt",
                                  "--tls-key",
                                  cert_dir + "/client.key",
                                  "--tls-server-name",
                                  kName,
                                  "--token-file",
                                  client_tok};
    a.insert(a.end(), args.begin(), args.end());
    return h.Cli(a);
  };
  const std::string sweep = h.WriteFile("s.yaml", h.DistinctJobsYaml("mtls", 4));
  CommandResult submit = user(tls, {"submit", sweep});
  ASSERT_EQ(submit.exit_code, 0) << submit.err;

  Harness::WorkerFlags wf;
  wf.force_fake = true;
  wf.extra = {
      "--tls",     "--tls-ca",          tls + "/ca.crt",     "--tls-cert", tls + "/worker.crt",
      "--tls-key", tls + "/worker.key", "--tls-server-name", kName,        "--token-file",
      worker_tok};
  h.StartWorker(wf);
  h.StartWorker(wf);
  CommandResult watch = user(tls, {"watch", "mtls", "--interval-ms", "100"});
  EXPECT_EQ(watch.exit_code, 0) << watch.err;
  EXPECT_THAT(watch.out, HasSubstr("finished: 4/4 done"));
  h.CheckInvariants("mtls");
  // The certificates' names reach the records: results by the worker certificate, the submit by
  // the client certificate.
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results "
                     "WHERE recorded_by LIKE 'worker cn=kvsweep-worker %'"),
            4);
  CommandResult audit = user(tls, {"query", "SELECT actor FROM audit WHERE action = 'submit'"});
  EXPECT_EQ(audit.exit_code, 0) << audit.err;
  EXPECT_THAT(audit.out, HasSubstr("client cn=kvsweep-client peer="));

  // Refused: no client certificate; a client certificate from another CA; a client that trusts
  // another CA; a client that expects another name (the certificate says coordinator.test).
  auto refused = [&](const std::string& what, const std::vector<std::string>& a) {
    CommandResult r = h.Cli(a);
    EXPECT_EQ(r.exit_code, 1) << what << ": " << r.out;
    // (gRPC may log the failed handshake first.)
    EXPECT_THAT(r.err, HasSubstr("kvsweep: cannot reach the coordinator at " + h.address()))
        << what;
  };
  refused("no client certificate", {"--tls", "--tls-ca", tls + "/ca.crt", "--tls-server-name",
                                    kName, "--token-file", client_tok, "status"});
  refused(
      "client certificate from another CA",
      {"--tls", "--tls-ca", tls + "/ca.crt", "--tls-cert", other + "/client.crt", "--tls-key",
       other + "/client.key", "--tls-server-name", kName, "--token-file", client_tok, "status"});
  refused("trusts another CA",
          {"--tls", "--tls-ca", other + "/ca.crt", "--tls-cert", tls + "/client.crt", "--tls-key",
           tls + "/client.key", "--tls-server-name", kName, "--token-file", client_tok, "status"});
  refused("expects another name",
          {"--tls", "--tls-ca", tls + "/ca.crt", "--tls-cert", tls + "/client.crt", "--tls-key",
           tls + "/client.key", "--tls-server-name", "other.test", "--token-file", client_tok,
           "status"});
  refused("plaintext", {"--token-file", client_tok, "status"});
  // The right certificate with the worker's token: in, but not allowed to submit.
  CommandResult as_worker =
      h.Cli({"--tls", "--tls-ca", tls + "/ca.crt", "--tls-cert", tls + "/client.crt", "--tls-key",
             tls + "/client.key", "--tls-server-name", kName, "--token-file", worker_tok, "submit",
             sweep});
  EXPECT_EQ(as_worker.exit_code, 1);
  EXPECT_EQ(as_worker.err, "kvsweep: a worker token may not submit sweeps\n");
}

// Calls `method` over plaintext with an empty request (for grpc.health.v1.Health/Check: the
// whole server). Returns the call's status and, through `response`, the raw response bytes.
grpc::Status PlaintextCall(const std::string& address, const std::string& method,
                           std::string* response) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::Slice empty{std::string()};
  grpc::ByteBuffer request(&empty, 1), reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &reply,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status s = done.get_future().get();
  std::vector<grpc::Slice> slices;
  response->clear();
  if (s.ok() && reply.Dump(&slices).ok()) {
    for (const grpc::Slice& sl : slices) {
      response->append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    }
  }
  return s;
}

TEST(MutualTlsTest, HealthListenServesOnlyHealthInPlaintext) {
  if (std::system("openssl version > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no openssl CLI (Debian: openssl)";
  }
  Harness h("health_listen");
  const std::string tls = h.dir() + "/tls";
  ASSERT_NO_FATAL_FAILURE(MakeCerts(tls, h.dir() + "/make-certs.log"));
  Harness::CoordinatorFlags f;
  f.listen_host = "0.0.0.0";
  f.extra = {"--tls-cert",      tls + "/coordinator.crt",
             "--tls-key",       tls + "/coordinator.key",
             "--tls-client-ca", tls + "/ca.crt",
             "--token-file",    h.WriteFile("admin.token", "health-admin\n"),
             "--health-listen", "127.0.0.1:0"};
  h.StartCoordinator(f);
  std::smatch m;
  const std::string log = ReadFile(h.dir() + "/coordinator.log").value_or("");
  ASSERT_TRUE(
      std::regex_search(log, m, std::regex("grpc.health.v1 alone, plaintext, on port ([0-9]+)")))
      << log;
  const std::string health = "127.0.0.1:" + m[1].str();
  std::string response;
  grpc::Status s = PlaintextCall(health, "/grpc.health.v1.Health/Check", &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response, std::string("\x08\x01"));  // status: SERVING
  // Nothing else is served there.
  s = PlaintextCall(health, "/kvsweep.v1.SweepService/GetStatus", &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  s = PlaintextCall(health, "/kvsweep.v1.WorkerService/Lease", &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  // The main port still wants TLS.
  s = PlaintextCall(h.address(), "/grpc.health.v1.Health/Check", &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  h.StopCoordinator();
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep
