// End-to-end through the `kvsweep` CLI and raw RPCs: the user workflow (submit, watch, status,
// table, query, export, cancel, retry), resubmission, bad input and
// the security defaults (loopback, bearer token, TLS/mTLS). These test orchestration, so their
// workers always use the fake evaluator (any method spec "runs"); fault_test and
// real_sweep_test use the engine when it is built.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "rpc/rpc_util.h"
#include "spec/job_spec.h"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

Harness::WorkerFlags Fake() {
  Harness::WorkerFlags f;
  f.force_fake = true;
  return f;
}

TEST(EndToEndTest, SubmitWatchTableQueryExport) {
  Harness h("cli_flow");
  h.StartCoordinator();
  const std::string yaml = h.WriteFile(
      "flow.yaml", h.SweepYaml("flow", {"none", "quant:bits=4", "quant:bits=2"}, "[native, 1]"));
  CommandResult dry = h.Cli({"submit", yaml, "--dry-run"});
  ASSERT_EQ(dry.exit_code, 0) << dry.err;
  EXPECT_EQ(dry.out.rfind("sweep 'flow' (dry run): 6 jobs (6 combinations, 0 excluded); nothing "
                          "submitted\n",
                          0),
            0u)
      << dry.out;
  // Then a header and every job with the concrete method it runs.
  EXPECT_EQ(std::count(dry.out.begin(), dry.out.end(), '\n'), 8) << dry.out;
  EXPECT_THAT(dry.out, HasSubstr("quant:bits=2,group=64,axis=token,sym=0,target=kv"));
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM sweeps"), 0);  // a dry run writes nothing
  CommandResult sub = h.Cli({"submit", yaml});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  EXPECT_THAT(sub.out, HasSubstr("6 enqueued, 0 already done"));
  h.StartWorker(Fake());
  h.StartWorker(Fake());
  CommandResult watch = h.Cli({"watch", "flow", "--interval-ms", "100"});
  ASSERT_EQ(watch.exit_code, 0) << watch.err;
  EXPECT_THAT(watch.err, HasSubstr("/6 done"));
  EXPECT_EQ(watch.out, "sweep 'flow' finished: 6/6 done, 0 failed, 0 quarantined, 0 cancelled\n");
  h.CheckInvariants("flow");

  CommandResult status = h.Cli({"status"});
  ASSERT_EQ(status.exit_code, 0);
  EXPECT_THAT(status.out, HasSubstr("flow"));
  CommandResult sj = h.Cli({"status", "flow", "--json"});
  ASSERT_EQ(sj.exit_code, 0);
  nlohmann::json st = nlohmann::json::parse(sj.out);
  EXPECT_EQ(st[0]["done"], 6);
  EXPECT_EQ(st[0]["finished"], true);

  CommandResult table = h.Cli({"table", "flow", "--rows", "method", "--cols", "kv_heads",
                               "--metric", "ppl", "--delta", "2", "--format", "csv"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  std::vector<std::string> lines = absl::StrSplit(table.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "method \\ kv_heads,2,1");
  EXPECT_THAT(lines[1], StartsWith("none,"));
  for (const char* fmt : {"md", "latex", "json"}) {
    CommandResult t =
        h.Cli({"table", "flow", "--rows", "method", "--cols", "kv_heads", "--format", fmt});
    EXPECT_EQ(t.exit_code, 0) << fmt << ": " << t.err;
  }
  nlohmann::json tj =
      nlohmann::json::parse(h.Cli({"table", "flow", "--rows", "method", "--cols", "kv_heads",
                                   "--metric", "acc", "--format", "json"})
                                .out);
  EXPECT_EQ(tj["rows"].size(), 3u);
  for (const auto& row : tj["cells"]) {
    for (const auto& v : row) {
      ASSERT_TRUE(v.is_number());
      EXPECT_GE(v.get<double>(), 0.0);
      EXPECT_LE(v.get<double>(), 1.0);
    }
  }
  // Ambiguous pivots name the label to filter on.
  CommandResult amb = h.Cli({"table", "flow", "--rows", "model", "--cols", "method"});
  EXPECT_EQ(amb.exit_code, 1);
  EXPECT_THAT(amb.err, HasSubstr("differ in kv_heads"));
  CommandResult filtered = h.Cli({"table", "flow", "--where", "kv_heads=1"});
  EXPECT_EQ(filtered.exit_code, 0) << filtered.err;

  CommandResult q = h.Cli(
      {"query", "SELECT count(*) AS n, min(ppl) > 0 AS positive FROM results", "--format", "json"});
  ASSERT_EQ(q.exit_code, 0) << q.err;
  nlohmann::json qj = nlohmann::json::parse(q.out);
  EXPECT_EQ(qj[0]["n"], 6);
  EXPECT_EQ(qj[0]["positive"], 1);
  CommandResult offline = h.Cli({"query", "--db", h.db(), "SELECT count(*) FROM sweep_results"});
  ASSERT_EQ(offline.exit_code, 0) << offline.err;
  EXPECT_THAT(offline.out, HasSubstr("6"));
  CommandResult write = h.Cli({"query", "DELETE FROM results"});
  EXPECT_EQ(write.exit_code, 1);
  EXPECT_EQ(write.err,
            "kvsweep: query: the statement would modify the database; only read-only SQL is "
            "allowed\n");
  CommandResult write_offline = h.Cli({"query", "--db", h.db(), "UPDATE jobs SET priority = 9"});
  EXPECT_EQ(write_offline.exit_code, 1);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), 6);

  CommandResult jl = h.Cli({"export", "flow", "--format", "jsonl", "--include-spec"});
  ASSERT_EQ(jl.exit_code, 0) << jl.err;
  std::vector<std::string> rows = absl::StrSplit(jl.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(rows.size(), 6u);
  nlohmann::json r0 = nlohmann::json::parse(rows[0]);
  EXPECT_EQ(r0["state"], "done");
  EXPECT_EQ(r0["spec"]["job_id"], r0["job_id"]);
  EXPECT_TRUE(r0["result"]["ledger"].contains("fraction_total"));
  const std::string csv_path = JoinPath(h.dir(), "flow.csv");
  CommandResult csv = h.Cli({"export", "flow", "--format", "csv", "-o", csv_path});
  ASSERT_EQ(csv.exit_code, 0) << csv.err;
  std::string csv_text = ReadFile(csv_path).value_or("");
  EXPECT_THAT(csv_text, StartsWith("job_id,sweep,state,model,task,method,"));
  EXPECT_THAT(csv_text, HasSubstr("lambada_openai.ppl"));
  EXPECT_EQ(std::count(csv_text.begin(), csv_text.end(), '\n'), 7);
}

TEST(EndToEndTest, ResubmittingEnqueuesOnlyWhatHasNoResult) {
  Harness h("resubmit");
  h.StartCoordinator();
  h.StartWorker(Fake());
  const std::string v1 =
      h.WriteFile("v1.yaml", h.SweepYaml("grow", {"none", "quant:bits=4"}, "[native, 1]"));
  h.Submit(v1);
  ASSERT_EQ(h.Cli({"watch", "grow", "--interval-ms", "100"}).exit_code, 0);
  const int64_t attempts_before = h.SqlInt("SELECT count(*) FROM attempts");
  CommandResult again = h.Cli({"submit", v1});
  ASSERT_EQ(again.exit_code, 0);
  EXPECT_THAT(again.out,
              HasSubstr("4 jobs (4 combinations, 0 excluded); 0 enqueued, 4 already done"));
  // One more method: only its jobs (one per kv_heads value) are new.
  const std::string v2 = h.WriteFile(
      "v2.yaml", h.SweepYaml("grow", {"none", "quant:bits=4", "quant:bits=2"}, "[native, 1]"));
  CommandResult grown = h.Cli({"submit", v2});
  ASSERT_EQ(grown.exit_code, 0);
  EXPECT_THAT(grown.out,
              HasSubstr("6 jobs (6 combinations, 0 excluded); 2 enqueued, 4 already done"));
  ASSERT_EQ(h.Cli({"watch", "grow", "--interval-ms", "100"}).exit_code, 0);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM attempts"), attempts_before + 2);  // nothing re-run
  // A different sweep sharing jobs reuses their results.
  const std::string other = h.WriteFile("other.yaml", h.SweepYaml("other", {"quant:bits=2"}));
  CommandResult o = h.Cli({"submit", other});
  EXPECT_THAT(o.out, HasSubstr("0 enqueued, 1 already done"));
  // One table across both sweeps: a row per sweep (rows auto), the shared job in both.
  ASSERT_EQ(h.Cli({"watch", "other", "--interval-ms", "100"}).exit_code, 0);
  CommandResult both =
      h.Cli({"table", "grow", "other", "--where", "kv_heads=2", "--format", "csv"});
  ASSERT_EQ(both.exit_code, 0) << both.err;
  EXPECT_THAT(both.out, HasSubstr("sweep \\ method,none,quant:bits=4,quant:bits=2\n"));
  EXPECT_THAT(both.out, HasSubstr("\ngrow,"));
  EXPECT_THAT(both.out, HasSubstr("\nother,,,"));  // only its one job, quant:bits=2
  // The same table as the dashboard's HTML fragment.
  CommandResult html =
      h.Cli({"table", "grow", "other", "--where", "kv_heads=2", "--format", "html"});
  ASSERT_EQ(html.exit_code, 0) << html.err;
  EXPECT_THAT(html.out, HasSubstr("<table class=\"comparison\">"));
  EXPECT_THAT(html.out, HasSubstr("<th scope=\"col\">quant:bits=2</th>"));
  EXPECT_THAT(html.out, HasSubstr("</table>"));
  CommandResult twice = h.Cli({"table", "grow", "grow"});
  EXPECT_EQ(twice.exit_code, 1);
  EXPECT_THAT(twice.err, HasSubstr("sweep 'grow' is named twice"));
  h.CheckInvariants("grow");
  h.CheckInvariants("other");
}

TEST(EndToEndTest, CancelThenResubmitThenRetry) {
  Harness h("cancel");
  h.StartCoordinator();
  h.Submit(
      h.WriteFile("c.yaml", h.SweepYaml("c", {"quant:bits=1", "quant:bits=2", "quant:bits=3"})));
  Harness::WorkerFlags slow = Fake();
  slow.extra = {"--fault", "delay-job:60000"};
  const int w = h.StartWorker(slow);
  ASSERT_TRUE(WaitUntil([&] { return h.Sweep("c").count(JobState::kLeased) == 1; },
                        std::chrono::seconds(30)));
  CommandResult c = h.Cli({"cancel", "c"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "sweep 'c': cancelled 3 jobs\n");
  // The leased job's worker learns at its next heartbeat and drops it.
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (const auto& e : h.JournalEvents(w)) {
          if (e.size() >= 5 && e[1] == "abandoned" && e[4] == "cancelled") return true;
        }
        return false;
      },
      std::chrono::seconds(30)));
  CommandResult watch = h.Cli({"watch", "c"});
  EXPECT_EQ(watch.exit_code, 3);  // finished, but not all done
  EXPECT_THAT(watch.out, HasSubstr("0/3 done, 0 failed, 0 quarantined, 3 cancelled"));
  h.worker(w)->Signal(SIGKILL);
  h.StartWorker(Fake());
  CommandResult re = h.Cli({"submit", JoinPath(h.dir(), "c.yaml")});
  EXPECT_THAT(re.out, HasSubstr("0 enqueued, 0 already done, 0 already pending, 3 requeued"));
  ASSERT_EQ(h.Cli({"watch", "c", "--interval-ms", "100"}).exit_code, 0);
  h.CheckInvariants("c");
  CommandResult r = h.Cli({"retry", "c"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "kvsweep: retry: pass --failed and/or --quarantined\n");
  CommandResult rf = h.Cli({"retry", "c", "--failed"});
  EXPECT_EQ(rf.exit_code, 0);
  EXPECT_EQ(rf.out, "sweep 'c': requeued 0 jobs\n");
  CommandResult unknown = h.Cli({"cancel", "nope"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_EQ(unknown.err, "kvsweep: no sweep named 'nope'\n");
}

struct BadSweep {
  std::string name, yaml, fragment;
};

TEST(EndToEndTest, BadSweepsAreOneLineErrorsAndWriteNothing) {
  Harness h("bad_input");
  h.StartCoordinator();
  const std::string good = h.SweepYaml("bad", {"none"});
  const std::vector<BadSweep> cases = {
      {"malformed", "name: x\nmodels: [\n", "malformed YAML"},
      {"unknown key", good + "priorty: 3\n", "unknown key 'priorty'"},
      {"unknown method", h.SweepYaml("bad", {"prune:r=3"}), "unknown family 'prune'"},
      {"budget out of range",
       absl::StrReplaceAll(good, {{"  - \"none\"", "  - {family: quant, budgets: [1.5]}"}}),
       "budget 1.5 is out of range (0, 1]"},
      {"impossible kv_heads", h.SweepYaml("bad", {"none"}, "[3]"),
       "kv_heads: 3 does not divide the model's 2 KV heads"},
      {"duplicate names", h.SweepYaml("bad", {"none", "none"}), "duplicate method label 'none'"},
      {"missing model", absl::StrReplaceAll(good, {{"models/ref-llama", "models/ref-nothing"}}),
       "does not exist"},
  };
  for (const BadSweep& c : cases) {
    CommandResult r = h.Cli({"submit", h.WriteFile("bad.yaml", c.yaml)});
    EXPECT_EQ(r.exit_code, 1) << c.name;
    EXPECT_THAT(r.err, StartsWith("kvsweep: ")) << c.name;
    EXPECT_THAT(r.err, HasSubstr(c.fragment)) << c.name;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.name << ": " << r.err;
  }
  CommandResult missing = h.Cli({"submit", JoinPath(h.dir(), "nope.yaml")});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("nope.yaml"));
  CommandResult usage = h.Cli({"frobnicate"});
  EXPECT_EQ(usage.exit_code, 2);
  CommandResult fmt = h.Cli({"table", "bad", "--format", "xls"});
  EXPECT_EQ(fmt.exit_code, 1);
  EXPECT_EQ(fmt.err, "kvsweep: table: unknown format 'xls' (md, csv, latex, json, html)\n");
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM sweeps"), 0);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM jobs"), 0);
}

// Issues `call` on a fresh context and returns the status.
template <typename F>
grpc::Status Call(F f) {
  grpc::ClientContext ctx;
  return f(&ctx);
}

TEST(EndToEndTest, MalformedAndOversizedRpcsAreRejectedWithoutWriting) {
  Harness h("bad_rpc");
  h.StartCoordinator();
  auto sweeps = h.SweepStub();
  auto workers = h.WorkerStub();
  auto expect = [](grpc::Status s, grpc::StatusCode code, const std::string& fragment) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(fragment));
  };
  v1::SubmitSweepResponse sresp;
  v1::SubmitSweepRequest big;
  big.set_sweep_yaml(std::string(kMaxSweepYamlBytes + 1, '#'));
  expect(Call([&](grpc::ClientContext* c) { return sweeps->SubmitSweep(c, big, &sresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "sweep_yaml: 1048577 bytes is over the limit");
  v1::SubmitSweepRequest huge;
  huge.set_sweep_yaml(std::string(kMaxMessageBytes + 10, '#'));
  expect(Call([&](grpc::ClientContext* c) { return sweeps->SubmitSweep(c, huge, &sresp); }),
         grpc::StatusCode::RESOURCE_EXHAUSTED, "");
  v1::SubmitSweepRequest rel;
  rel.set_sweep_yaml("name: x\n");
  rel.set_base_dir("relative/dir");
  expect(Call([&](grpc::ClientContext* c) { return sweeps->SubmitSweep(c, rel, &sresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "base_dir: 'relative/dir' is not an absolute path");
  v1::SubmitSweepRequest bad_yaml;
  bad_yaml.set_sweep_yaml("models: [oops");
  bad_yaml.set_source_name("mine.yaml");
  expect(Call([&](grpc::ClientContext* c) { return sweeps->SubmitSweep(c, bad_yaml, &sresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "mine.yaml:1: malformed YAML");
  v1::GetStatusResponse gresp;
  v1::GetStatusRequest gbad;
  gbad.set_sweep("../etc");
  expect(Call([&](grpc::ClientContext* c) { return sweeps->GetStatus(c, gbad, &gresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "is not a valid sweep name");
  v1::QueryResponse qresp;
  v1::QueryRequest qbad;
  qbad.set_sql("SELECT 1");
  qbad.set_max_rows(-1);
  expect(Call([&](grpc::ClientContext* c) { return sweeps->Query(c, qbad, &qresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "max_rows: -1 is out of range");
  v1::QueryRequest qwrite;
  qwrite.set_sql("DROP TABLE results");
  expect(Call([&](grpc::ClientContext* c) { return sweeps->Query(c, qwrite, &qresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "only read-only SQL");

  v1::LeaseResponse lresp;
  v1::LeaseRequest lbad;
  expect(Call([&](grpc::ClientContext* c) { return workers->Lease(c, lbad, &lresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "worker.worker_id: must be 1 to 128 characters");
  lbad.mutable_worker()->set_worker_id("bad id; drop");
  expect(Call([&](grpc::ClientContext* c) { return workers->Lease(c, lbad, &lresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "has characters outside");
  const std::string job(64, 'a');
  v1::CompleteResponse cresp;
  v1::CompleteRequest cbad;
  cbad.set_worker_id("w");
  cbad.set_job_id("123");
  expect(Call([&](grpc::ClientContext* c) { return workers->Complete(c, cbad, &cresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "job_id: must be 64 hex digits");
  cbad.set_job_id(job);
  cbad.set_lease_id("l");
  cbad.set_fencing_token(0);
  expect(Call([&](grpc::ClientContext* c) { return workers->Complete(c, cbad, &cresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "fencing_token: 0 is not positive");
  cbad.set_fencing_token(1);
  cbad.set_result_json("{\"metrics\": ");
  expect(Call([&](grpc::ClientContext* c) { return workers->Complete(c, cbad, &cresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "result_json: result: invalid JSON");
  cbad.set_result_json(R"({"metrics": {"lambada_openai": {"ppl": "NaN"}}})");
  expect(Call([&](grpc::ClientContext* c) { return workers->Complete(c, cbad, &cresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "metrics.lambada_openai.ppl is not a number");
  cbad.set_result_json(std::string(kMaxResultJsonBytes + 1, ' '));
  expect(Call([&](grpc::ClientContext* c) { return workers->Complete(c, cbad, &cresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "result_json: 8388609 bytes is over the limit");
  cbad.set_result_json(R"({"metrics": {"lambada_openai": {"ppl": 2.0}}})");
  expect(Call([&](grpc::ClientContext* c) { return workers->Complete(c, cbad, &cresp); }),
         grpc::StatusCode::FAILED_PRECONDITION, "stale fencing token 1");  // unknown job
  v1::FailResponse fresp;
  v1::FailRequest fbad;
  fbad.set_worker_id("w");
  fbad.set_job_id(job);
  fbad.set_lease_id("l");
  fbad.set_fencing_token(1);
  expect(Call([&](grpc::ClientContext* c) { return workers->Fail(c, fbad, &fresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "kind: 0 is not RETRYABLE, PERMANENT or HANDED_BACK");
  v1::HeartbeatResponse hresp;
  v1::HeartbeatRequest hbad;
  hbad.set_worker_id("w");
  hbad.set_job_id(job);
  hbad.set_lease_id("l");
  hbad.set_fencing_token(1);
  hbad.set_progress(std::nan(""));
  expect(Call([&](grpc::ClientContext* c) { return workers->Heartbeat(c, hbad, &hresp); }),
         grpc::StatusCode::INVALID_ARGUMENT, "progress: must be a number in [0, 1]");
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM sweeps"), 0);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), 0);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM attempts"), 0);
}

TEST(EndToEndTest, ListensOnLoopbackUnlessSecured) {
  Harness h("loopback");
  // Default address: loopback.
  Subprocess::Options o;
  o.stdout_path = o.stderr_path = JoinPath(h.dir(), "default.log");
  auto def = Subprocess::Spawn({CoordinatorBin(), "--db", JoinPath(h.dir(), "d.db")}, o);
  ASSERT_TRUE(def.ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        return ReadFile(JoinPath(h.dir(), "default.log")).value_or("").find("listening on") !=
                   std::string::npos ||
               !(*def)->Running();
      },
      std::chrono::seconds(30)));
  const std::string log = ReadFile(JoinPath(h.dir(), "default.log")).value_or("");
  if ((*def)->Running()) {
    EXPECT_THAT(log, HasSubstr("listening on 127.0.0.1:50551 (plaintext)"));
  } else {
    // Port 50551 busy on this machine: the refusal must still be about binding, not security.
    EXPECT_THAT(log, HasSubstr("cannot listen on 127.0.0.1:50551"));
  }
  (*def)->Signal(SIGTERM);
  (*def)->Wait(std::chrono::seconds(20));
  // A non-loopback address without TLS and a token is refused.
  auto open = Subprocess::Spawn(
      {CoordinatorBin(), "--db", JoinPath(h.dir(), "o.db"), "--listen", "0.0.0.0:0"},
      {{}, JoinPath(h.dir(), "open.out"), JoinPath(h.dir(), "open.err")});
  ASSERT_TRUE(open.ok());
  std::optional<int> st = (*open)->Wait(std::chrono::seconds(20));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2);
  EXPECT_EQ(ReadFile(JoinPath(h.dir(), "open.err")).value_or(""),
            "kvsweep-coordinator: refusing to listen on non-loopback address 0.0.0.0:0 without "
            "TLS and a bearer token (pass --tls-cert, --tls-key and --token-file)\n");
  EXPECT_FALSE(PathExists(JoinPath(h.dir(), "o.db")));
}

// A second coordinator is refused at start, with a one-line error, whether it asks for the
// same port (gRPC would otherwise share it through SO_REUSEPORT and split the clients) or
// reaches the same database through another name (a symlink or a hard link).
TEST(EndToEndTest, SecondCoordinatorOnTheSamePortOrDatabaseIsRefused) {
  Harness h("second");
  h.StartCoordinator();
  auto refused = [&](const std::string& name, const std::string& db, const std::string& listen,
                     const std::string& expected) {
    const std::string err = JoinPath(h.dir(), name + ".err");
    auto p = Subprocess::Spawn({CoordinatorBin(), "--db", db, "--listen", listen},
                               {{}, JoinPath(h.dir(), name + ".out"), err});
    ASSERT_TRUE(p.ok());
    std::optional<int> st = (*p)->Wait(std::chrono::seconds(30));
    if (!st.has_value()) {
      (*p)->Signal(SIGKILL);
      FAIL() << name << ": the second coordinator started";
    }
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) != 0) << name;
    // The log may come first; the error is one line, the last.
    std::string text = ReadFile(err).value_or("");
    while (!text.empty() && text.back() == '\n') text.pop_back();
    const std::string last =
        text.substr(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
    EXPECT_THAT(last, HasSubstr(absl::StrCat("kvsweep-coordinator: ", ""))) << name;
    EXPECT_THAT(last, HasSubstr(expected)) << name << ": " << text;
  };
  refused("port", JoinPath(h.dir(), "other.db"), absl::StrCat("127.0.0.1:", h.port()),
          absl::StrCat("cannot listen on 127.0.0.1:", h.port()));
  const std::string sym = JoinPath(h.dir(), "symlink.db");
  ASSERT_EQ(::symlink(h.db().c_str(), sym.c_str()), 0);
  refused("symlink", sym, "127.0.0.1:0", "is in use by another kvsweep-coordinator");
  const std::string hard = JoinPath(h.dir(), "hardlink.db");
  ASSERT_EQ(::link(h.db().c_str(), hard.c_str()), 0);
  refused("hardlink", hard, "127.0.0.1:0", "is in use by another kvsweep-coordinator");
  // The first one still serves everything.
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("still", 1)));
  EXPECT_EQ(h.Sweep("still").total, 1);
}

TEST(EndToEndTest, EveryBinaryTellsItsVersion) {
  Harness h("version");
  for (const std::string& bin : {CoordinatorBin(), WorkerBin(), CliBin()}) {
    const std::string out = JoinPath(h.dir(), "version.out");
    auto p = Subprocess::Spawn({bin, "--version"}, {{}, out, JoinPath(h.dir(), "version.err")});
    ASSERT_TRUE(p.ok());
    std::optional<int> st = (*p)->Wait(std::chrono::seconds(30));
    ASSERT_TRUE(st.has_value());
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << bin;
    EXPECT_THAT(ReadFile(out).value_or(""), ::testing::MatchesRegex("kvsweep[-a-z]* 0\\.1\\.0.*\n"))
        << bin;
  }
}

TEST(EndToEndTest, BearerTokenIsRequiredWhenConfigured) {
  Harness h("token");
  const std::string token_file = h.WriteFile("token", "correct-horse-battery\n");
  const std::string wrong_file = h.WriteFile("wrong", "incorrect\n");
  Harness::CoordinatorFlags f;
  f.extra = {"--token-file", token_file};
  h.StartCoordinator(f);
  CommandResult none = h.Cli({"status"});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_EQ(none.err, "kvsweep: missing bearer token (authorization metadata)\n");
  CommandResult wrong = h.Cli({"--token-file", wrong_file, "status"});
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_EQ(wrong.err, "kvsweep: wrong bearer token\n");
  CommandResult ok = h.Cli({"--token-file", token_file, "status"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out, "no sweeps\n");
  // Workers too.
  auto stub = h.WorkerStub();
  v1::LeaseRequest lr;
  lr.mutable_worker()->set_worker_id("w");
  v1::LeaseResponse resp;
  grpc::ClientContext ctx;
  EXPECT_EQ(stub->Lease(&ctx, lr, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext ctx2;
  ctx2.AddMetadata("authorization", "Bearer correct-horse-battery");
  EXPECT_TRUE(stub->Lease(&ctx2, lr, &resp).ok());
  Harness::WorkerFlags wf = Fake();
  wf.extra = {"--token-file", wrong_file};
  const int w = h.StartWorker(wf);
  std::optional<int> st = h.worker(w)->Wait(std::chrono::seconds(30));
  ASSERT_TRUE(st.has_value()) << "a worker with the wrong token must give up";
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2);
  EXPECT_THAT(ReadFile(h.log(w)).value_or(""), HasSubstr("kvsweep-worker: wrong bearer token"));
}

// Separate credentials per role: a worker token cannot submit or cancel, a client token cannot
// lease or complete, a reader token only reads. What clients change is in the audit log with the
// caller, and each result records the caller that reported it.
TEST(EndToEndTest, RolesSeparateWorkersClientsAndReaders) {
  Harness h("roles");
  const std::string worker_tok = h.WriteFile("worker.tok", "worker-secret-1\n");
  const std::string client_tok = h.WriteFile("client.tok", "client-secret-2\n");
  const std::string reader_tok = h.WriteFile("reader.tok", "reader-secret-3\n");
  Harness::CoordinatorFlags f;
  f.extra = {"--worker-token-file", worker_tok, "--client-token-file", client_tok,
             "--reader-token-file", reader_tok};
  h.StartCoordinator(f);
  const std::string sweep = h.WriteFile("s.yaml", h.DistinctJobsYaml("roles", 2));
  CommandResult as_worker = h.Cli({"--token-file", worker_tok, "submit", sweep});
  EXPECT_EQ(as_worker.exit_code, 1);
  EXPECT_EQ(as_worker.err, "kvsweep: a worker token may not submit sweeps\n");
  CommandResult as_reader = h.Cli({"--token-file", reader_tok, "submit", sweep});
  EXPECT_EQ(as_reader.exit_code, 1);
  EXPECT_EQ(as_reader.err, "kvsweep: a reader token may not submit sweeps\n");
  CommandResult dry = h.Cli({"--token-file", reader_tok, "submit", "--dry-run", sweep});
  EXPECT_EQ(dry.exit_code, 0) << dry.err;
  CommandResult as_client = h.Cli({"--token-file", client_tok, "submit", sweep});
  ASSERT_EQ(as_client.exit_code, 0) << as_client.err;
  CommandResult cancel = h.Cli({"--token-file", worker_tok, "cancel", "roles"});
  EXPECT_EQ(cancel.exit_code, 1);
  EXPECT_EQ(cancel.err, "kvsweep: a worker token may not cancel sweeps\n");
  CommandResult read = h.Cli({"--token-file", reader_tok, "status", "roles"});
  EXPECT_EQ(read.exit_code, 0) << read.err;
  CommandResult query = h.Cli({"--token-file", reader_tok, "query", "SELECT count(*) FROM jobs"});
  EXPECT_EQ(query.exit_code, 0) << query.err;
  // A client token cannot act as a worker.
  auto stub = h.WorkerStub();
  v1::LeaseRequest lr;
  lr.mutable_worker()->set_worker_id("w");
  v1::LeaseResponse resp;
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer client-secret-2");
  grpc::Status denied = stub->Lease(&ctx, lr, &resp);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(denied.error_message(), "a client token may not call the worker service");
  // A worker with the worker token runs the sweep.
  Harness::WorkerFlags wf = Fake();
  wf.extra = {"--token-file", worker_tok};
  h.StartWorker(wf);
  ASSERT_TRUE(h.WaitFinished("roles", std::chrono::seconds(60)));
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results WHERE recorded_by LIKE 'worker peer=%'"), 2);
  CommandResult retry = h.Cli({"--token-file", client_tok, "cancel", "roles"});
  EXPECT_EQ(retry.exit_code, 0) << retry.err;
  auto audit = h.SqlRows("SELECT actor, action, sweep FROM audit ORDER BY audit_id");
  ASSERT_EQ(audit.size(), 2u);
  EXPECT_THAT(audit[0][0], ::testing::StartsWith("client peer="));
  EXPECT_EQ(audit[0][1], "submit");
  EXPECT_EQ(audit[0][2], "roles");
  EXPECT_EQ(audit[1][1], "cancel");
  // The audit log is readable through query (read role).
  CommandResult q = h.Cli({"--token-file", reader_tok, "query", "SELECT action FROM audit"});
  EXPECT_EQ(q.exit_code, 0) << q.err;
  EXPECT_THAT(q.out, HasSubstr("submit"));
}

TEST(EndToEndTest, TlsAndMutualTlsOnAnExposedAddress) {
  if (std::system("openssl version > /dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl CLI";
  Harness h("tls");
  const std::string d = h.dir();
  auto cert = [&](const std::string& name, const std::string& cn) {
    const std::string cmd =
        absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=", cn,
                     " -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ", d, "/", name,
                     ".key -out ", d, "/", name, ".crt > ", d, "/openssl.log 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadFile(d + "/openssl.log").value_or("");
  };
  cert("server", "localhost");
  cert("client", "kvsweep-client");
  const std::string token = h.WriteFile("token", "tls-token\n");
  Harness::CoordinatorFlags f;
  f.extra = {"--tls-cert", d + "/server.crt", "--tls-key",      d + "/server.key", "--token-file",
             token,        "--tls-client-ca", d + "/client.crt"};
  // 0.0.0.0 is allowed now: TLS and a token are configured (the harness dials 127.0.0.1).
  f.listen_host = "0.0.0.0";
  h.StartCoordinator(f);
  const std::vector<std::string> tls = {"--tls", "--tls-ca", d + "/server.crt", "--token-file",
                                        token};
  std::vector<std::string> args = tls;
  args.insert(args.end(),
              {"--tls-cert", d + "/client.crt", "--tls-key", d + "/client.key", "status"});
  CommandResult ok = h.Cli(args);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out, "no sweeps\n");
  std::vector<std::string> no_client_cert = tls;
  no_client_cert.push_back("status");
  CommandResult refused = h.Cli(no_client_cert);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, HasSubstr("cannot reach the coordinator"));
  CommandResult plaintext = h.Cli({"--token-file", token, "status"});
  EXPECT_EQ(plaintext.exit_code, 1);
  EXPECT_THAT(plaintext.err, HasSubstr("cannot reach the coordinator"));
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep
