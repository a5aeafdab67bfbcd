// The `kvsweep` binary's one-line errors, run as a user runs it: against a fake coordinator in
// this process (a plaintext gRPC server whose SweepService answers from fixed data), so that
// what reaches stderr (gRPC's and protobuf's own log lines included) is what a user sees.
#include <sys/wait.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/subprocess.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// Sweep "failing": three jobs, all failed. Sweep "twins": two done jobs with the same labels
// (another task limit, say). Everything else: no jobs.
class FakeSweepService final : public v1::SweepService::Service {
 public:
  grpc::Status GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                         v1::GetStatusResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status Watch(grpc::ServerContext*, const v1::WatchRequest* req,
                     grpc::ServerWriter<v1::SweepStatus>* out) override {
    v1::SweepStatus st;
    st.set_sweep(req->sweep());
    st.set_total(3);
    st.set_failed(3);
    st.set_finished(true);
    out->Write(st);
    return grpc::Status::OK;
  }
  grpc::Status Export(grpc::ServerContext*, const v1::ExportRequest* req,
                      grpc::ServerWriter<v1::ExportRecord>* out) override {
    if (req->sweep() != "twins") return grpc::Status::OK;
    for (const char* id : {"job-a", "job-b"}) {
      v1::ExportRecord r;
      r.set_job_id(id);
      r.set_sweep(req->sweep());
      r.set_labels_json(
          R"({"model":"llama","task":"lambada","method":"none","method_spec":"none",)"
          R"("family":"none","budget":null,"kv_heads":2,"seed":null,"dtype":"fp32"})");
      r.set_state(v1::JOB_STATE_DONE);
      r.set_result_json(
          R"({"metrics":{"lambada_openai":{"ppl":10,"acc":0.5}},"ledger":{"fraction_total":1}})");
      out->Write(r);
    }
    return grpc::Status::OK;
  }
};

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    service_ = new FakeSweepService();
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(service_);
    server_ = b.BuildAndStart().release();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  static void TearDownTestSuite() {
    server_->Shutdown();
    delete server_;
    delete service_;
  }

  struct Result {
    int exit_code = -1;
    std::string out, err;
    std::vector<std::string> err_lines() const {
      return absl::StrSplit(err, '\n', absl::SkipEmpty());
    }
  };
  // `kvsweep ARGS` with --coordinator at the fake unless ARGS names one; gRPC's and kvsweep's
  // logging settings left at their defaults unless `env` sets them.
  Result Run(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
    static std::atomic<int> n{0};
    const std::string stem =
        absl::StrCat(::testing::TempDir(), "/kvsweep_cli_test_", ::getpid(), "_", n++);
    std::vector<std::string> argv = {KVSWEEP_CLI_BIN};
    if (std::find(args.begin(), args.end(), "--coordinator") == args.end()) {
      argv.insert(argv.end(), {"--coordinator", address()});
    }
    argv.insert(argv.end(), args.begin(), args.end());
    Subprocess::Options o;
    o.stdout_path = stem + ".out";
    o.stderr_path = stem + ".err";
    o.env = {{"GRPC_VERBOSITY", ""}, {"GRPC_TRACE", ""}, {"KVSWEEP_LOG_LEVEL", ""}};
    for (const auto& [k, v] : env) o.env[k] = v;
    Result r;
    auto p = Subprocess::Spawn(argv, o);
    if (!p.ok()) {
      ADD_FAILURE() << p.status();
      return r;
    }
    std::optional<int> st = (*p)->Wait(std::chrono::seconds(60));
    EXPECT_TRUE(st.has_value()) << "kvsweep timed out";
    if (st && WIFEXITED(*st)) r.exit_code = WEXITSTATUS(*st);
    r.out = ReadFile(o.stdout_path).value_or("");
    r.err = ReadFile(o.stderr_path).value_or("");
    std::remove(o.stdout_path.c_str());
    std::remove(o.stderr_path.c_str());
    return r;
  }
  static std::string address() { return absl::StrCat("127.0.0.1:", port_); }

  static FakeSweepService* service_;
  static grpc::Server* server_;
  static int port_;
};
FakeSweepService* CliTest::service_ = nullptr;
grpc::Server* CliTest::server_ = nullptr;
int CliTest::port_ = 0;

// gRPC keeps the low 16 bits of a port: PORT + 65536 reached the coordinator on PORT.
TEST_F(CliTest, PortAbove65535IsRefusedNotWrapped) {
  const std::string wrapped = absl::StrCat("127.0.0.1:", port_ + 65536);
  Result r = Run({"--coordinator", wrapped, "status"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, absl::StrCat("kvsweep: --coordinator: bad port in address '", wrapped, "'\n"));
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(Run({"status"}).exit_code, 0);  // the fake is there on the real port
}

// Protobuf refuses a string field that is not UTF-8 with a log line of its own and no message.
TEST_F(CliTest, NonUtf8TextIsOneLineBeforeAnyRequest) {
  const std::string yaml = absl::StrCat(::testing::TempDir(), "/kvsweep_cli_test_bad.yaml");
  ASSERT_TRUE(WriteFileAtomic(yaml, "\xff\xfe name: bad\n").ok());
  Result r = Run({"submit", yaml, "--dry-run"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, absl::StrCat("kvsweep: ", yaml, ": not valid UTF-8 at byte 0 (line 1)\n"));
  std::remove(yaml.c_str());
  for (const char* cmd : {"status", "watch", "cancel", "export"}) {
    r = Run({cmd, "ok\xc3"});
    EXPECT_EQ(r.exit_code, 1) << cmd;
    EXPECT_EQ(r.err, "kvsweep: sweep name: not valid UTF-8 at byte 2\n") << cmd;
  }
  r = Run({"retry", "\xff", "--failed"});
  EXPECT_EQ(r.err, "kvsweep: sweep name: not valid UTF-8 at byte 0\n");
  r = Run({"query", "SELECT '\xff'"});
  EXPECT_EQ(r.err, "kvsweep: the SQL: not valid UTF-8 at byte 8\n");
}

// A sweep file over the coordinator's limit is refused by name before it is sent (gRPC would
// answer in its own words about message sizes).
TEST_F(CliTest, OversizedSweepFileIsOneLineBeforeAnyRequest) {
  const std::string yaml = absl::StrCat(::testing::TempDir(), "/kvsweep_cli_test_big.yaml");
  ASSERT_TRUE(WriteFileAtomic(yaml, "name: big\n# " + std::string(2 << 20, 'x') + "\n").ok());
  Result r = Run({"submit", yaml, "--dry-run"});
  EXPECT_EQ(r.exit_code, 1);
  ASSERT_EQ(r.err_lines().size(), 1u) << r.err;
  EXPECT_THAT(r.err, StartsWith(absl::StrCat("kvsweep: ", yaml, ": ", (2 << 20) + 13,
                                             " bytes; a sweep file may have at most 1048576")));
  std::remove(yaml.c_str());
}

// CLI11's Range let NaN through (every comparison with NaN is false).
TEST_F(CliTest, FloatingPointOptionsRefuseNaNAndInfinity) {
  for (const char* level : {"nan", "NaN", "inf", "-inf", "abc", "1", "0.4"}) {
    Result r = Run({"table", "s", "--delta", "none", "--level", level, "--db", "/nonexistent"});
    EXPECT_EQ(r.exit_code, 2) << level;
    EXPECT_EQ(r.err, absl::StrCat("kvsweep: --level: '", level,
                                  "' must be a number in [0.5, 0.999] (see kvsweep --help)\n"))
        << level;
  }
}

TEST_F(CliTest, UsageErrorsSayWhatIsWrong) {
  Result r = Run({"bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "kvsweep: unknown command 'bogus' (commands: submit, status, watch, cancel, retry, "
            "table, plot, report, query, export, demo; see kvsweep --help)\n");
  r = Run({"--timeout-ms", "abc", "status"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "kvsweep: --timeout-ms: 'abc' is not a number; it must be an integer in [100, "
            "86400000] (see kvsweep --help)\n");
  r = Run({"--timeout-ms", "50", "status"});
  EXPECT_EQ(r.err,
            "kvsweep: --timeout-ms: '50' must be an integer in [100, 86400000] (see kvsweep "
            "--help)\n");
  r = Run({"query", "SELECT 1", "--max-rows", "1.5"});
  EXPECT_THAT(r.err, HasSubstr("--max-rows: '1.5' must be an integer in [1, 100000]"));
  // Bootstrap seeds are unsigned: -1 would have been read as 2^64 - 1.
  for (const char* cmd : {"table", "report"}) {
    r = Run({cmd, "s", "--seed", "-1", "--db", "/nonexistent"});
    EXPECT_EQ(r.exit_code, 2) << cmd;
    EXPECT_EQ(r.err,
              "kvsweep: --seed: '-1' must be an integer in [0, 18446744073709551615] (see kvsweep "
              "--help)\n")
        << cmd;
  }
  EXPECT_THAT(Run({"table", "s", "--seed", "7", "--db", "/nonexistent"}).err,
              Not(HasSubstr("--seed")));
  r = Run({});
  EXPECT_EQ(r.err, "kvsweep: A subcommand is required (see kvsweep --help)\n");
}

TEST_F(CliTest, ExportNamesTheUsersPathNotItsTemporary) {
  Result r = Run({"export", "s", "-o", "/nonexistent-dir/x.jsonl"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "kvsweep: cannot write '/nonexistent-dir/x.jsonl': No such file or directory\n");
}

TEST_F(CliTest, WatchDoesNotDrawFailedJobsAsDone) {
  Result r = Run({"watch", "failing"});
  EXPECT_EQ(r.exit_code, 3);
  ASSERT_FALSE(r.err_lines().empty());
  EXPECT_THAT(r.err_lines()[0], StartsWith("[xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx] 0/3 done"));
  EXPECT_THAT(r.err, Not(HasSubstr("#")));
  EXPECT_THAT(r.out, HasSubstr("0/3 done, 3 failed"));
}

// Two jobs in one cell with every label the same: no literal "--where ...=VALUE".
TEST_F(CliTest, JobsWithTheSameLabelsSayHowToTellThemApart) {
  for (const char* cmd : {"table", "plot"}) {
    Result r = Run({cmd, "twins"});
    EXPECT_EQ(r.exit_code, 1) << cmd;
    EXPECT_THAT(r.err, HasSubstr("2 jobs")) << cmd;
    EXPECT_THAT(r.err, HasSubstr("with the same labels: they differ in fields that are not labels"))
        << cmd;
    EXPECT_THAT(r.err, HasSubstr("`kvsweep export twins --include-spec`")) << cmd;
    EXPECT_THAT(r.err, Not(HasSubstr("..."))) << cmd;
    EXPECT_EQ(r.err_lines().size(), 1u) << r.err;
  }
}

// gRPC's own lines ("E... ssl_transport_security.cc ... Handshake failed") came before the
// one-line error; they come back when asked for.
TEST_F(CliTest, GrpcLogsOnlyWhenAskedFor) {
  Result r = Run({"--tls", "--timeout-ms", "3000", "status"});
  EXPECT_EQ(r.exit_code, 1);
  ASSERT_EQ(r.err_lines().size(), 1u) << r.err;
  EXPECT_THAT(r.err, StartsWith(absl::StrCat("kvsweep: cannot reach the coordinator at ", address(),
                                             ": ")));
  r = Run({"--tls", "--timeout-ms", "3000", "status"}, {{"GRPC_VERBOSITY", "ERROR"}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_GT(r.err_lines().size(), 1u) << r.err;
}

}  // namespace
}  // namespace kvsweep
