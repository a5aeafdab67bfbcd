#include "tests/harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/cli_config.h"
#include "common/file_util.h"
#include "rpc/rpc_util.h"
#include "spec/job_spec.h"

namespace kvsweep {
namespace testing {

std::string CoordinatorBin() { return KVSWEEP_COORDINATOR_BIN; }
std::string WorkerBin() { return KVSWEEP_WORKER_BIN; }
std::string CliBin() { return KVSWEEP_CLI_BIN; }

std::string MakeTempDir(const std::string& stem) {
  static std::atomic<int> n{0};
  const std::string d =
      absl::StrCat(::testing::TempDir(), "/kvsweep_", stem, "_", ::getpid(), "_", n++);
  std::system(absl::StrCat("rm -rf '", d, "'").c_str());
  ::mkdir(d.c_str(), 0755);
  return d;
}

namespace {

// The binaries read KVSWEEP_<FLAG> settings variables (common/cli_config.h); the processes the
// tests start get only the settings the tests give, whatever the shell running the tests exports
// (docs/deploy.md has users export some). Cleared before main, in every test linking the harness.
const bool kSettingsVariablesCleared = [] {
  for (const std::string& name : SettingsVariables()) ::unsetenv(name.c_str());
  return true;
}();

}  // namespace

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

int FreePortRange(int n) {
  auto bindable = [](int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    ::close(fd);
    return ok;
  };
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int first = FreePort();
    if (first + n - 1 > 65535) continue;
    bool all = true;
    for (int i = 1; i < n && all; ++i) all = bindable(first + i);
    if (all) return first;
  }
  return FreePort();  // no range found: the caller's bind fails and says which port
}

HttpResponse Http(int port, const std::string& path, const std::string& authorization,
                  const std::string& method) {
  HttpResponse r;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  timeval tv{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    std::string req = absl::StrCat(method, " ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    if (!authorization.empty()) absl::StrAppend(&req, "Authorization: ", authorization, "\r\n");
    absl::StrAppend(&req, "\r\n");
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[8192];
      ssize_t n;
      while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, n);
    }
  }
  ::close(fd);
  const size_t end = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || end == std::string::npos) return r;
  r.status = std::atoi(response.substr(response.find(' ') + 1, 3).c_str());
  r.headers = response.substr(0, end);
  r.body = response.substr(end + 4);
  return r;
}

bool WaitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

Harness::Harness(const std::string& name) {
  dir_ = MakeTempDir(name);
  db_ = JoinPath(dir_, "sweeps.db");
}

Harness::~Harness() {
  const bool failed = ::testing::Test::HasFailure();
  if (failed) DumpLogs();
  for (auto& w : workers_) w.reset();  // SIGKILL whatever still runs
  coordinator_.reset();
  // Keep the directory (database, logs, journals) only when something failed.
  if (!failed) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string Harness::address() const { return absl::StrCat("127.0.0.1:", port_); }

void Harness::StartCoordinator(const CoordinatorFlags& f, int port) {
  const std::string port_file = JoinPath(dir_, "port");
  std::remove(port_file.c_str());
  std::vector<std::string> argv = {CoordinatorBin(),
                                   "--db",
                                   db_,
                                   "--listen",
                                   absl::StrCat(f.listen_host, ":", port),
                                   "--port-file",
                                   port_file,
                                   "--lease-ttl-ms",
                                   std::to_string(f.lease_ttl_ms),
                                   "--retry-base-ms",
                                   std::to_string(f.retry_base_ms),
                                   "--quarantine-after",
                                   std::to_string(f.quarantine_after),
                                   "--idle-retry-ms",
                                   "50",
                                   "--log-tag",
                                   absl::StrCat("coordinator-", coordinator_runs_++)};
  argv.insert(argv.end(), f.extra.begin(), f.extra.end());
  Subprocess::Options o;
  o.stdout_path = o.stderr_path = JoinPath(dir_, "coordinator.log");
  auto p = Subprocess::Spawn(argv, o);
  ASSERT_TRUE(p.ok()) << p.status();
  coordinator_ = std::move(*p);
  ASSERT_TRUE(WaitUntil([&] { return PathExists(port_file) || !coordinator_->Running(); },
                        std::chrono::seconds(30)))
      << "coordinator did not start";
  ASSERT_TRUE(coordinator_->Running())
      << "coordinator exited: " << DescribeWaitStatus(*coordinator_->exit_status());
  absl::StatusOr<std::string> text = ReadFile(port_file);
  ASSERT_TRUE(text.ok());
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &port_));
}

void Harness::KillCoordinator() {
  ASSERT_TRUE(coordinator_ != nullptr);
  coordinator_->Signal(SIGKILL);
  ASSERT_TRUE(coordinator_->Wait(std::chrono::seconds(10)).has_value());
}

void Harness::StopCoordinator() {
  ASSERT_TRUE(coordinator_ != nullptr);
  coordinator_->Signal(SIGTERM);
  std::optional<int> st = coordinator_->Wait(std::chrono::seconds(30));
  ASSERT_TRUE(st.has_value()) << "coordinator did not exit on SIGTERM";
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << DescribeWaitStatus(*st);
}

void Harness::StopWorkers() {
  std::vector<bool> signalled(workers_.size(), false);
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i]->Running()) {
      workers_[i]->Signal(SIGTERM);
      signalled[i] = true;
    }
  }
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (!signalled[i]) continue;  // it had exited (or been killed) before
    std::optional<int> st = workers_[i]->Wait(std::chrono::seconds(60));
    ASSERT_TRUE(st.has_value()) << "worker " << i << " did not exit on SIGTERM";
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
        << "worker " << i << ": " << DescribeWaitStatus(*st);
  }
}

std::string Harness::journal(int i) const {
  return JoinPath(dir_, absl::StrCat("worker-", i, ".journal"));
}
std::string Harness::log(int i) const { return JoinPath(dir_, absl::StrCat("worker-", i, ".log")); }

int Harness::StartWorker(const WorkerFlags& f) {
  const int i = static_cast<int>(workers_.size());
  std::vector<std::string> argv = {WorkerBin(),
                                   "--coordinator",
                                   address(),
                                   f.devices.empty() ? "--device" : "--devices",
                                   f.devices.empty() ? "cpu" : f.devices,
                                   "--journal",
                                   journal(i),
                                   "--rpc-timeout-ms",
                                   "3000"};
  if (kEngine && !f.force_fake) {
    argv.insert(argv.end(), {"--evaluator", "engine", "--threads", "1"});
  } else {
    argv.insert(argv.end(),
                {"--evaluator", "fake", "--fake-sleep-ms", std::to_string(f.fake_sleep_ms)});
  }
  argv.insert(argv.end(), f.extra.begin(), f.extra.end());
  if (std::find(f.extra.begin(), f.extra.end(), "--spool-dir") == f.extra.end()) {
    argv.insert(argv.end(), {"--spool-dir", JoinPath(dir_, absl::StrCat("spool-", i))});
  }
  Subprocess::Options o;
  o.stdout_path = o.stderr_path = log(i);
  auto p = Subprocess::Spawn(argv, o);
  EXPECT_TRUE(p.ok()) << p.status();
  workers_.push_back(p.ok() ? std::move(*p) : nullptr);
  return i;
}

std::vector<std::vector<std::string>> Harness::JournalEvents(int i) const {
  std::vector<std::vector<std::string>> out;
  absl::StatusOr<std::string> text = ReadFile(journal(i));
  if (!text.ok()) return out;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(' ', 4));
    out.push_back(f);
  }
  return out;
}

CommandResult Harness::Cli(const std::vector<std::string>& args, std::chrono::seconds timeout) {
  static std::atomic<int> n{0};
  const int k = n++;
  const std::string out = JoinPath(dir_, absl::StrCat("cli-", k, ".out"));
  const std::string err = JoinPath(dir_, absl::StrCat("cli-", k, ".err"));
  std::vector<std::string> argv = {CliBin(), "--coordinator", address()};
  argv.insert(argv.end(), args.begin(), args.end());
  Subprocess::Options o;
  o.stdout_path = out;
  o.stderr_path = err;
  CommandResult r;
  auto p = Subprocess::Spawn(argv, o);
  if (!p.ok()) {
    ADD_FAILURE() << p.status();
    return r;
  }
  std::optional<int> st = (*p)->Wait(timeout);
  if (!st) {
    ADD_FAILURE() << "kvsweep " << absl::StrJoin(args, " ") << " timed out";
  } else if (WIFEXITED(*st)) {
    r.exit_code = WEXITSTATUS(*st);
  }
  r.out = ReadFile(out).value_or("");
  r.err = ReadFile(err).value_or("");
  return r;
}

std::string Harness::WriteFile(const std::string& name, const std::string& text) const {
  const std::string p = JoinPath(dir_, name);
  EXPECT_TRUE(WriteFileAtomic(p, text).ok());
  return p;
}

std::string Harness::SweepYaml(const std::string& name, const std::vector<std::string>& methods,
                               const std::string& kv_heads) const {
  std::string y =
      absl::StrCat("name: ", name, "\nmodels:\n  - name: ref-llama\n    path: ", AssetsDir(),
                   "/models/ref-llama\n    kv_heads: ", kv_heads,
                   "\ntasks:\n  - name: lambada\n    task: lambada_openai\n    data: ", AssetsDir(),
                   "/data/lambada_openai/lambada_test.jsonl\n", "    limit: 3\nmethods:\n");
  for (const std::string& m : methods) absl::StrAppend(&y, "  - \"", m, "\"\n");
  return y;
}

std::string Harness::DistinctJobsYaml(const std::string& name, int n) const {
  std::string y =
      absl::StrCat("name: ", name, "\nmodels:\n  - name: ref-llama\n    path: ", AssetsDir(),
                   "/models/ref-llama\ntasks:\n");
  for (int k = 1; k <= n; ++k) {
    absl::StrAppend(&y, "  - {name: l", k, ", task: lambada_openai, data: ", AssetsDir(),
                    "/data/lambada_openai/lambada_test.jsonl, limit: ", k, "}\n");
  }
  absl::StrAppend(&y, "methods: [none]\n");
  return y;
}

void Harness::Submit(const std::string& yaml_path) {
  CommandResult r = Cli({"submit", yaml_path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

std::unique_ptr<v1::SweepService::Stub> Harness::SweepStub() {
  ClientConfig c;
  c.address = address();
  return v1::SweepService::NewStub(*MakeChannel(c));
}

std::unique_ptr<v1::WorkerService::Stub> Harness::WorkerStub() {
  ClientConfig c;
  c.address = address();
  return v1::WorkerService::NewStub(*MakeChannel(c));
}

std::unique_ptr<ResultStore> Harness::OpenDb() const {
  SqliteOptions o;
  o.read_only = true;
  auto s = NewSqliteResultStore(db_, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

std::vector<std::vector<std::string>> Harness::SqlRows(const std::string& sql) const {
  std::vector<std::vector<std::string>> out;
  auto db = OpenDb();
  if (!db) return out;
  auto q = db->Query(sql, 100000, 30000);
  EXPECT_TRUE(q.ok()) << sql << ": " << q.status();
  if (!q.ok()) return out;
  for (const auto& row : q->rows) {
    std::vector<std::string> r;
    for (const auto& v : row) {
      if (std::holds_alternative<int64_t>(v)) {
        r.push_back(std::to_string(std::get<int64_t>(v)));
      } else if (std::holds_alternative<double>(v)) {
        r.push_back(absl::StrCat(std::get<double>(v)));
      } else if (std::holds_alternative<std::string>(v)) {
        r.push_back(std::get<std::string>(v));
      } else {
        r.push_back("");
      }
    }
    out.push_back(r);
  }
  return out;
}

int64_t Harness::SqlInt(const std::string& sql) const {
  auto rows = SqlRows(sql);
  int64_t v = -1;
  if (rows.size() != 1 || rows[0].size() != 1 || !absl::SimpleAtoi(rows[0][0], &v)) {
    ADD_FAILURE() << "not one integer: " << sql;
  }
  return v;
}

SweepInfo Harness::Sweep(const std::string& name) const {
  auto db = OpenDb();
  if (!db) return SweepInfo();
  auto i = db->GetSweep(name);
  return i.ok() ? *i : SweepInfo();
}

bool Harness::WaitFinished(const std::string& sweep, std::chrono::seconds timeout) {
  return WaitUntil(
      [&] {
        SweepInfo i = Sweep(sweep);
        return i.total > 0 && i.count(JobState::kQueued) + i.count(JobState::kLeased) == 0;
      },
      timeout);
}

void Harness::CheckInvariants(const std::string& sweep, int expected_not_done) const {
  auto db = OpenDb();
  ASSERT_TRUE(db != nullptr);
  absl::Status ic = db->IntegrityCheck();
  EXPECT_TRUE(ic.ok()) << ic;
  EXPECT_EQ(SqlInt("SELECT count(*) FROM (SELECT job_id FROM results GROUP BY job_id "
                   "HAVING count(*) > 1)"),
            0)
      << "duplicate results";
  EXPECT_EQ(SqlInt("SELECT count(*) FROM results"),
            SqlInt("SELECT count(*) FROM jobs WHERE state = 'done'"));
  SweepInfo i = Sweep(sweep);
  EXPECT_GT(i.total, 0);
  EXPECT_EQ(i.count(JobState::kQueued) + i.count(JobState::kLeased), 0) << "sweep not finished";
  EXPECT_EQ(i.count(JobState::kDone), i.total - expected_not_done);
  EXPECT_EQ(SqlInt(absl::StrCat("SELECT count(*) FROM sweep_results WHERE sweep = '", sweep, "'")),
            i.total - expected_not_done)
      << "results != jobs";
  // Every result belongs to the attempt (fence) that was leased when it was written.
  EXPECT_EQ(SqlInt("SELECT count(*) FROM results r JOIN attempts a ON a.job_id = r.job_id AND "
                   "a.fence = r.fence WHERE a.outcome = 'done' AND a.worker_id = r.worker_id"),
            SqlInt("SELECT count(*) FROM results"));
}

void Harness::DumpLogs() const {
  std::vector<std::string> files = {JoinPath(dir_, "coordinator.log")};
  for (size_t i = 0; i < workers_.size(); ++i) {
    files.push_back(log(static_cast<int>(i)));
    files.push_back(journal(static_cast<int>(i)));
  }
  for (const std::string& f : files) {
    absl::StatusOr<std::string> t = ReadFile(f);
    if (!t.ok()) continue;
    std::string tail = t->size() > 6000 ? t->substr(t->size() - 6000) : *t;
    std::cerr << "==== " << f << " (last 6000 bytes) ====\n" << tail << "\n";
  }
}

}  // namespace testing
}  // namespace kvsweep
