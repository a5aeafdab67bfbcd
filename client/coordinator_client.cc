#include "client/coordinator_client.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "storage/result_store.h"

namespace kvsweep {

// An RPC failure as one line; names the address when the coordinator is unreachable.
absl::Status RpcError(const grpc::Status& s, const ClientConfig& cfg) {
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach the coordinator at ", cfg.address, ": ", s.error_message()));
  }
  if (s.error_message().empty()) {
    // gRPC fails some calls without a word (a request it could not serialize): the code at
    // least, never an empty "kvsweep: ".
    const absl::Status a = FromGrpc(s);
    return absl::Status(a.code(), absl::StrCat("the call to the coordinator at ", cfg.address,
                                               " failed: ", absl::StatusCodeToString(a.code())));
  }
  return FromGrpc(s);
}

absl::StatusOr<std::unique_ptr<v1::SweepService::Stub>> Stub(CoordinatorConnection& g) {
  if (!g.token_file.empty() && g.cfg.token.empty()) {
    absl::StatusOr<std::string> t = ReadTokenFile(g.token_file);
    if (!t.ok()) return t.status();
    g.cfg.token = *t;
  }
  // The same check as the coordinator's --listen (gRPC would dial port 115xx mod 65536).
  if (absl::Status a = ValidateAddress(g.cfg.address); !a.ok()) {
    return absl::Status(a.code(), absl::StrCat("--coordinator: ", a.message()));
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> ch = MakeChannel(g.cfg);
  if (!ch.ok()) return ch.status();
  return v1::SweepService::NewStub(*ch);
}

absl::StatusOr<std::vector<Item>> FetchItems(CoordinatorConnection& g, const std::string& db,
                                             const std::string& sweep, bool include_spec) {
  std::vector<Item> items;
  auto add = [&](const std::string& job_id, const std::string& labels, const std::string& state,
                 const std::string& result, const std::string& spec,
                 const std::string& error) -> absl::Status {
    Item it;
    it.job_id = job_id;
    it.sweep = sweep;
    it.state = state;
    it.last_error = error;
    absl::StatusOr<nlohmann::json> l = ParseJson(labels, "labels");
    if (!l.ok()) return l.status();
    it.labels = *l;
    if (!result.empty()) {
      absl::StatusOr<JobResult> r = JobResult::Parse(result);
      if (!r.ok()) return r.status();
      it.result = *std::move(r);
    }
    if (!spec.empty()) {
      absl::StatusOr<nlohmann::json> s = ParseJson(spec, "spec");
      if (!s.ok()) return s.status();
      it.spec = *s;
    }
    items.push_back(std::move(it));
    return absl::OkStatus();
  };
  if (!db.empty()) {
    SqliteOptions o;
    o.read_only = true;
    absl::StatusOr<std::unique_ptr<ResultStore>> store = NewSqliteResultStore(db, o);
    if (!store.ok()) return store.status();
    absl::Status inner;
    absl::Status s = (*store)->Export(sweep, include_spec, [&](const ExportRow& r) {
      inner = add(r.job_id, r.labels_json, JobStateName(r.state), r.result_json, r.spec_json,
                  r.last_error);
      return inner.ok();
    });
    if (!s.ok()) return s;
    if (!inner.ok()) return inner;
    return items;
  }
  KV_RETURN_IF_ERROR(CheckUtf8(sweep, "sweep name"));
  KV_ASSIGN_OR_RETURN(auto stub, Stub(g));
  grpc::ClientContext ctx;
  PrepareContext(&ctx, g.cfg, std::chrono::milliseconds(g.timeout_ms));
  v1::ExportRequest req;
  req.set_sweep(sweep);
  req.set_include_spec(include_spec);
  auto reader = stub->Export(&ctx, req);
  v1::ExportRecord rec;
  absl::Status inner;
  while (reader->Read(&rec)) {
    std::string state = v1::JobState_Name(rec.state());
    state = absl::AsciiStrToLower(state.substr(std::string("JOB_STATE_").size()));
    inner = add(rec.job_id(), rec.labels_json(), state, rec.result_json(), rec.spec_json(),
                rec.last_error());
    if (!inner.ok()) {
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status s = reader->Finish();
  if (!inner.ok()) return inner;
  if (!s.ok()) return RpcError(s, g.cfg);
  return items;
}

ProgressCounts Counts(const v1::SweepStatus& s) {
  ProgressCounts c;
  c.total = s.total();
  c.done = s.done();
  c.leased = s.leased();
  c.queued = s.queued();
  c.failed = s.failed();
  c.quarantined = s.quarantined();
  c.cancelled = s.cancelled();
  c.running = RunningJobsOf(s);
  return c;
}

namespace {

std::string GiB(int64_t bytes) { return absl::StrFormat("%.1f GiB", bytes / double(1 << 30)); }

// One line about a pending submission's progress.
std::string SubmitProgressLine(const v1::SubmitProgress& p) {
  std::string line = absl::StrCat("preparing on the coordinator (", p.elapsed_ms() / 1000, " s): ");
  if (!p.file().empty()) {
    absl::StrAppend(&line, "hashing ", p.file(), " ", GiB(p.file_bytes_hashed()), " of ",
                    GiB(p.file_bytes()), "; ");
  }
  absl::StrAppend(&line, GiB(p.bytes_hashed()), " hashed");
  return line;
}

}  // namespace

absl::StatusOr<v1::SubmitSweepResponse> SubmitAndFollow(CoordinatorConnection& g,
                                                        const v1::SubmitSweepRequest& req) {
  auto stub = Stub(g);
  if (!stub.ok()) return stub.status();
  // A call that ends in DEADLINE_EXCEEDED or UNAVAILABLE is tried again (a busy or restarting
  // coordinator): submitting again joins the submission already running, so nothing is done
  // twice. Given up after this long without an answer:
  const auto give_up =
      std::max(std::chrono::milliseconds(30000), std::chrono::milliseconds(g.timeout_ms) * 10);
  auto transient = [](const grpc::Status& s) {
    return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
           s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  };
  const auto pause = std::chrono::milliseconds(std::min(1000, g.timeout_ms / 4 + 1));
  v1::SubmitSweepResponse resp;
  for (const auto first = std::chrono::steady_clock::now();;) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, g.cfg, std::chrono::milliseconds(g.timeout_ms));
    grpc::Status s = (*stub)->SubmitSweep(&ctx, req, &resp);
    if (s.ok()) break;
    if (!transient(s) || std::chrono::steady_clock::now() - first > give_up) {
      return RpcError(s, g.cfg);
    }
    std::this_thread::sleep_for(pause);
  }
  if (!resp.pending()) return resp;
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  std::cerr << "the coordinator is hashing input files it has not seen before (it keeps the "
               "hashes; interrupting here does not stop it, and submitting again follows it)\n";
  auto last_line = std::chrono::steady_clock::now();
  auto last_answer = last_line;
  const int wait_ms = std::clamp(g.timeout_ms / 2, 0, 5000);
  while (resp.pending()) {
    const auto now = std::chrono::steady_clock::now();
    if (tty) {
      std::cerr << "\r\033[K" << SubmitProgressLine(resp.progress()) << std::flush;
    } else if (now - last_line >= std::chrono::seconds(10)) {
      std::cerr << SubmitProgressLine(resp.progress()) << "\n";
      last_line = now;
    }
    v1::GetSubmissionRequest follow;
    follow.set_submission(resp.submission());
    follow.set_wait_ms(wait_ms);
    v1::SubmitSweepResponse next;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, g.cfg, std::chrono::milliseconds(g.timeout_ms));
    grpc::Status s = (*stub)->GetSubmission(&ctx, follow, &next);
    if (s.ok()) {
      resp = std::move(next);
      last_answer = std::chrono::steady_clock::now();
      continue;
    }
    if (!transient(s) || std::chrono::steady_clock::now() - last_answer > give_up) {
      if (tty) std::cerr << "\n";
      return RpcError(s, g.cfg);
    }
    std::this_thread::sleep_for(pause);
  }
  if (tty) std::cerr << "\r\033[K";
  return resp;
}

}  // namespace kvsweep
