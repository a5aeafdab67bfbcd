#include "coordinator/http_dashboard.h"

#include <time.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/plot.h"
#include "client/table.h"
#include "common/log.h"
#include "common/mutex.h"
#include "coordinator/sweep_spec.h"
#include "nlohmann/json.hpp"
#include "rpc/http_listen.h"

#ifdef KVSWEEP_WITH_HTTPLIB
#include "httplib.h"
#endif

namespace kvsweep {

#ifdef KVSWEEP_WITH_HTTPLIB
namespace {

using nlohmann::json;

constexpr int kDefaultJobs = 200, kMaxJobs = 2000;
constexpr int kDefaultRefresh = 5, kMaxRefresh = 3600;
constexpr size_t kMaxErrorChars = 300;  // an error shown in a table cell
constexpr int kQueryTimeoutMs = 5000;
constexpr int kMaxAttemptRows = 100000;
constexpr size_t kCacheEntries = 32;

// Job states in JobState order (SweepInfo::counts is indexed by JobState).
constexpr JobState kStates[] = {JobState::kQueued, JobState::kLeased,      JobState::kDone,
                                JobState::kFailed, JobState::kQuarantined, JobState::kCancelled};

std::string Esc(absl::string_view s) { return XmlEscape(s); }

std::string Truncate(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t cut = n;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // UTF-8
  return s.substr(0, cut) + "…";
}

std::string FormatMs(int64_t ms) {
  if (ms <= 0) return "";
  const time_t t = static_cast<time_t>(ms / 1000);
  tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string NowText() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return FormatMs(static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000) + " UTC";
}

// JSON text that never throws on invalid UTF-8 (labels and errors come from users and workers).
std::string Dump(const json& j) {
  return j.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

bool Finished(const SweepInfo& s) {
  return s.cancelled || (s.count(JobState::kQueued) == 0 && s.count(JobState::kLeased) == 0);
}

// ---- Request parameters ---------------------------------------------------------------------

struct View {
  int jobs = kDefaultJobs;
  int refresh = kDefaultRefresh;
  std::string metric = "auto";
  std::optional<bool> log_y;  // unset: log when every value is positive
  // The parameters as given, for links between pages.
  std::string query;
};

absl::StatusOr<int> IntParam(const httplib::Request& req, const char* name, int lo, int hi,
                             int dflt, bool zero_ok) {
  if (!req.has_param(name)) return dflt;
  const std::string v = req.get_param_value(name);
  int n = 0;
  if (v.size() > 9 || !absl::SimpleAtoi(v, &n) || ((n < lo || n > hi) && !(zero_ok && n == 0))) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": expected ", zero_ok ? "0 or " : "",
                                                   "an integer from ", lo, " to ", hi));
  }
  return n;
}

absl::StatusOr<View> ParseView(const httplib::Request& req) {
  View v;
  absl::StatusOr<int> jobs = IntParam(req, "jobs", 1, kMaxJobs, kDefaultJobs, false);
  if (!jobs.ok()) return jobs.status();
  v.jobs = *jobs;
  absl::StatusOr<int> refresh = IntParam(req, "refresh", 2, kMaxRefresh, kDefaultRefresh, true);
  if (!refresh.ok()) return refresh.status();
  v.refresh = *refresh;
  if (req.has_param("log_y")) {
    absl::StatusOr<int> log_y = IntParam(req, "log_y", 0, 1, 0, true);
    if (!log_y.ok()) return log_y.status();
    v.log_y = *log_y == 1;
  }
  if (req.has_param("metric")) {
    v.metric = req.get_param_value("metric");
    const bool ok = !v.metric.empty() && v.metric.size() <= 64 &&
                    std::all_of(v.metric.begin(), v.metric.end(), [](char c) {
                      return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                    });
    if (!ok) return absl::InvalidArgumentError("metric: expected [A-Za-z0-9_]{1,64}");
  }
  // Only the parameters that change the page travel on its links (their values are checked).
  std::vector<std::string> q;
  if (v.jobs != kDefaultJobs) q.push_back(absl::StrCat("jobs=", v.jobs));
  if (v.refresh != kDefaultRefresh) q.push_back(absl::StrCat("refresh=", v.refresh));
  if (v.metric != "auto") q.push_back(absl::StrCat("metric=", v.metric));
  if (v.log_y) q.push_back(absl::StrCat("log_y=", *v.log_y ? 1 : 0));
  if (!q.empty()) v.query = absl::StrCat("?", absl::StrJoin(q, "&"));
  return v;
}

// ---- What a sweep page shows ----------------------------------------------------------------

struct AttemptRow {
  int64_t fence = 0;
  std::string worker, outcome, error;
  int64_t started_ms = 0, ended_ms = 0;
};

struct JobRow {
  std::string job_id;
  json labels;
  JobState state = JobState::kQueued;
  std::string last_error;
  std::string result_text;               // the result object's JSON; "" unless done
  std::optional<double> value;           // the view's metric in the result (from the Comparison)
  int attempts = -1, max_attempts = -1;  // -1: unknown (a store without SQL)
  std::vector<AttemptRow> attempt_rows;
};

// The comparison table and plot, built once per sweep, view, set of jobs and count of finished
// jobs (results are only ever added), with the metric of each job that has it.
struct Comparison {
  std::map<std::string, double> values;  // job id -> the view's metric
  std::string table_html;                // "" when there is no table
  std::optional<json> table_json;
  std::string plot_svg;  // the standalone document; "" when there is no plot
  std::vector<std::string> notes;
};

std::string CellString(const QueryResult::Value& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  if (const auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&v)) return absl::StrFormat("%g", *d);
  return "";
}
int64_t CellInt(const QueryResult::Value& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (const auto* d = std::get_if<double>(&v)) return static_cast<int64_t>(*d);
  return 0;
}

class Dashboard final : public DashboardServer {
 public:
  Dashboard(const DashboardOptions& o, ResultStore* store) : options_(o), store_(store) {}
  ~Dashboard() override {
    if (server_ != nullptr) server_->stop();
    if (thread_.joinable()) thread_.join();
  }

  int port() const override { return port_; }
  std::string url() const override {
    const bool v6 = host_.find(':') != std::string::npos;
    return absl::StrCat(options_.tls.enabled() ? "https" : "http", "://", v6 ? "[" : "", host_,
                        v6 ? "]" : "", ":", port_, "/");
  }

  absl::Status Listen(const ListenAddress& address) {
    host_ = address.host;
    if (options_.tls.enabled()) {
      if (options_.tls.cert.empty() || options_.tls.key.empty()) {
        return absl::FailedPreconditionError("--http: TLS needs --tls-cert and --tls-key");
      }
      auto ssl = std::make_unique<httplib::SSLServer>(
          options_.tls.cert.c_str(), options_.tls.key.c_str(),
          options_.tls.ca.empty() ? nullptr : options_.tls.ca.c_str());
      if (!ssl->is_valid()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "--http: cannot load the TLS certificate ", options_.tls.cert, ", key ",
            options_.tls.key, options_.tls.ca.empty() ? "" : " or client CA ", options_.tls.ca));
      }
      server_ = std::move(ssl);
    } else {
      server_ = std::make_unique<httplib::Server>();
    }
    const int threads = std::max(1, options_.threads);
    server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server_->set_payload_max_length(4096);  // GET only: no request has a body
    // A page is one request (styles and the plot are inline): no keep-alive, so that an idle
    // browser connection does not hold one of the few threads.
    server_->set_read_timeout(5, 0);
    server_->set_write_timeout(30, 0);
    server_->set_keep_alive_max_count(1);
    server_->set_default_headers({
        {"Content-Security-Policy",
         "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
         "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"},
        {"X-Content-Type-Options", "nosniff"},
        {"Referrer-Policy", "no-referrer"},
        {"Cache-Control", "no-store"},
    });
    server_->set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return Admit(req, res); });
    server_->set_exception_handler(
        [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "unknown exception";
          try {
            if (ep) std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          KV_LOG(WARNING) << "dashboard: " << req.path << ": " << what;
          res.status = 500;
          res.set_content("internal error\n", "text/plain; charset=utf-8");
        });
    server_->Get("/", [this](const httplib::Request& req, httplib::Response& res) {
      Index(req, res, /*api=*/false);
    });
    server_->Get("/api/sweeps", [this](const httplib::Request& req, httplib::Response& res) {
      Index(req, res, /*api=*/true);
    });
    server_->Get(R"(/sweep/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
      Sweep(req, res, req.matches[1], Kind::kPage);
    });
    server_->Get(R"(/sweep/([^/]+)/plot\.svg)",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   Sweep(req, res, req.matches[1], Kind::kPlot);
                 });
    server_->Get(R"(/api/sweep/([^/]+))",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   Sweep(req, res, req.matches[1], Kind::kApi);
                 });
    server_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      res.set_content(res.status == 404 ? "not found\n" : absl::StrCat("status ", res.status, "\n"),
                      "text/plain; charset=utf-8");
    });

    absl::StatusOr<int> port = ServeInBackground(*server_, address, "--http", &thread_);
    if (!port.ok()) return port.status();
    port_ = *port;
    return absl::OkStatus();
  }

 private:
  enum class Kind { kPage, kPlot, kApi };

  static bool IsApi(const httplib::Request& req) { return absl::StartsWith(req.path, "/api/"); }

  static void Error(const httplib::Request& req, httplib::Response& res, int status,
                    absl::string_view message) {
    res.status = status;
    if (IsApi(req)) {
      res.set_content(Dump(json{{"error", std::string(message)}}),
                      "application/json; charset=utf-8");
    } else {
      res.set_content(absl::StrCat(message, "\n"), "text/plain; charset=utf-8");
    }
  }

  // The token check before any route: 401 (with a Basic challenge, so that a browser asks for
  // the token) or 403, else on to the route.
  httplib::Server::HandlerResponse Admit(const httplib::Request& req, httplib::Response& res) {
    if (req.method != "GET" && req.method != "HEAD") {
      res.set_header("Allow", "GET, HEAD");
      Error(req, res, 405, "the dashboard is read-only: GET and HEAD only");
      return httplib::Server::HandlerResponse::Handled;
    }
    std::string authorization = req.get_header_value("Authorization");
    if (absl::StartsWith(authorization, "Basic ")) {
      // user:password, the password being the token.
      std::string decoded;
      if (absl::Base64Unescape(authorization.substr(6), &decoded)) {
        const size_t colon = decoded.find(':');
        authorization = colon == std::string::npos ? "" : "Bearer " + decoded.substr(colon + 1);
      } else {
        authorization = "Bearer ";  // malformed: matches no token
      }
    }
    absl::StatusOr<Caller> caller = AuthenticateHeader(
        authorization, options_.tokens, absl::StrCat(req.remote_addr, ":", req.remote_port));
    if (!caller.ok()) {
      res.set_header("WWW-Authenticate", "Basic realm=\"kvsweep\", charset=\"UTF-8\"");
      Error(req, res, 401, caller.status().message());
      return httplib::Server::HandlerResponse::Handled;
    }
    if (absl::Status s = Require(*caller, kRoleRead, "read the dashboard"); !s.ok()) {
      Error(req, res, 403, s.message());
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  }

  // ---- / and /api/sweeps ----

  void Index(const httplib::Request& req, httplib::Response& res, bool api) {
    absl::StatusOr<View> view = ParseView(req);
    if (!view.ok()) return Error(req, res, 400, view.status().message());
    absl::StatusOr<std::vector<SweepInfo>> sweeps = store_->ListSweeps();
    if (!sweeps.ok()) return Error(req, res, 503, sweeps.status().message());
    if (api) {
      json out = json::array();
      for (const SweepInfo& s : *sweeps) out.push_back(SweepJson(s));
      res.set_content(Dump(json{{"sweeps", out}}), "application/json; charset=utf-8");
      return;
    }
    bool running = false;
    std::string body = "<h1>Sweeps</h1>\n";
    if (sweeps->empty()) {
      absl::StrAppend(&body,
                      "<p class=\"empty\">No sweeps yet: <code>kvsweep submit "
                      "SWEEP.yaml</code>.</p>\n");
    } else {
      absl::StrAppend(&body,
                      "<table class=\"sweeps\">\n<thead><tr><th scope=\"col\">sweep</th>"
                      "<th scope=\"col\">progress</th>");
      for (JobState st : kStates) {
        absl::StrAppend(&body, "<th scope=\"col\" class=\"num\">", JobStateName(st), "</th>");
      }
      absl::StrAppend(&body,
                      "<th scope=\"col\" class=\"num\">jobs</th><th scope=\"col\">submitted "
                      "(UTC)</th></tr></thead>\n<tbody>\n");
      for (const SweepInfo& s : *sweeps) {
        running = running || !Finished(s);
        absl::StrAppend(&body, "<tr class=\"sweep\" data-sweep=\"", Esc(s.name), "\" data-done=\"",
                        s.count(JobState::kDone), "\" data-total=\"", s.total,
                        "\"><th scope=\"row\"><a href=\"/sweep/", Esc(s.name), Esc(view->query),
                        "\">", Esc(s.name), "</a>",
                        s.cancelled ? " <span class=\"tag\">cancelled</span>" : "", "</th><td>",
                        ProgressBar(s), "</td>");
        for (JobState st : kStates) {
          absl::StrAppend(&body, "<td class=\"num state-", JobStateName(st), "\">", s.count(st),
                          "</td>");
        }
        absl::StrAppend(&body, "<td class=\"num\">", s.total, "</td><td>", FormatMs(s.created_ms),
                        "</td></tr>\n");
      }
      absl::StrAppend(&body, "</tbody>\n</table>\n");
    }
    res.set_content(Page("sweeps", body, running ? view->refresh : 0), "text/html; charset=utf-8");
  }

  static json SweepJson(const SweepInfo& s) {
    json counts = json::object();
    for (JobState st : kStates) counts[JobStateName(st)] = s.count(st);
    return json{
        {"name", s.name},           {"priority", s.priority},          {"created_ms", s.created_ms},
        {"cancelled", s.cancelled}, {"finished", Finished(s)},         {"total", s.total},
        {"counts", counts},         {"recent_errors", s.recent_errors}};
  }

  // Done (green), failed or quarantined (red), leased (blue) out of the total; the numbers in
  // the text beside it, so that the bar needs no colour to be read.
  static std::string ProgressBar(const SweepInfo& s) {
    const int done = s.count(JobState::kDone);
    const int bad = s.count(JobState::kFailed) + s.count(JobState::kQuarantined);
    const int leased = s.count(JobState::kLeased);
    auto pct = [&](int n) {
      return s.total > 0 ? absl::StrFormat("%.2f", 100.0 * n / s.total) : std::string("0");
    };
    return absl::StrCat(
        "<div class=\"progress\"><div class=\"bar\" role=\"progressbar\" aria-valuemin=\"0\" "
        "aria-valuemax=\"",
        s.total, "\" aria-valuenow=\"", done, "\">",
        "<span class=\"done\" style=\"width:", pct(done), "%\"></span>",
        "<span class=\"bad\" style=\"width:", pct(bad), "%\"></span>",
        "<span class=\"leased\" style=\"width:", pct(leased), "%\"></span></div>",
        "<span class=\"progress-text\">", done, " / ", s.total, " done",
        s.total > 0 ? absl::StrFormat(" (%.0f%%)", 100.0 * done / s.total) : "",
        leased > 0 ? absl::StrCat(", ", leased, " running") : "",
        bad > 0 ? absl::StrCat(", ", bad, " failed") : "", "</span></div>");
  }

  // ---- /sweep/NAME, its plot and /api/sweep/NAME ----

  void Sweep(const httplib::Request& req, httplib::Response& res, const std::string& name,
             Kind kind) {
    if (!IsValidSweepName(name)) return Error(req, res, 404, "no such sweep");
    absl::StatusOr<View> view = ParseView(req);
    if (!view.ok()) return Error(req, res, 400, view.status().message());
    absl::StatusOr<SweepInfo> info = store_->GetSweep(name);
    if (!info.ok()) {
      return Error(req, res, info.status().code() == absl::StatusCode::kNotFound ? 404 : 503,
                   info.status().message());
    }
    std::vector<JobRow> jobs;
    size_t ids_hash = 0;
    absl::Status exported = store_->Export(name, false, [&](const ExportRow& r) {
      JobRow j;
      j.job_id = r.job_id;
      j.state = r.state;
      j.last_error = r.last_error;
      j.labels = json::parse(r.labels_json, nullptr, /*allow_exceptions=*/false);
      if (j.labels.is_discarded() || !j.labels.is_object()) j.labels = json::object();
      j.result_text = r.result_json;  // parsed only when the comparison is not cached
      ids_hash = ids_hash * 1000003u ^ std::hash<std::string>()(r.job_id);
      jobs.push_back(std::move(j));
      return true;
    });
    if (!exported.ok()) return Error(req, res, 503, exported.message());
    const std::shared_ptr<const Comparison> cmp = Compare(*info, jobs, ids_hash, *view);
    for (JobRow& j : jobs) {
      auto it = cmp->values.find(j.job_id);
      if (it != cmp->values.end()) j.value = it->second;
      std::string().swap(j.result_text);
    }
    if (kind == Kind::kPlot) {
      if (cmp->plot_svg.empty()) {
        return Error(req, res, 404, absl::StrJoin(cmp->notes, "; "));
      }
      res.set_content(cmp->plot_svg, "image/svg+xml; charset=utf-8");
      return;
    }
    const size_t shown = std::min<size_t>(jobs.size(), view->jobs);
    LoadAttempts(name, &jobs);
    if (kind == Kind::kApi) {
      json j = SweepJson(*info);
      json job_list = json::array();
      for (size_t i = 0; i < shown; ++i) job_list.push_back(JobJson(jobs[i], *view));
      j["jobs"] = job_list;
      j["jobs_shown"] = shown;
      j["table"] = cmp->table_json ? *cmp->table_json : json(nullptr);
      j["plot"] =
          cmp->plot_svg.empty() ? json(nullptr) : json(absl::StrCat("/sweep/", name, "/plot.svg"));
      j["notes"] = cmp->notes;
      res.set_content(Dump(j), "application/json; charset=utf-8");
      return;
    }
    res.set_content(SweepPage(*info, jobs, shown, *cmp, *view), "text/html; charset=utf-8");
  }

  // Attempt counts and every attempt of the sweep's jobs, through the read-only query
  // connection. The sweep name is safe to quote (IsValidSweepName: [A-Za-z0-9._-]). The lease
  // key column is never read. A store without SQL (the fake) leaves them unknown.
  void LoadAttempts(const std::string& sweep, std::vector<JobRow>* jobs) {
    std::map<std::string, JobRow*> by_id;
    for (JobRow& j : *jobs) by_id[j.job_id] = &j;
    const std::string of_sweep = absl::StrCat(
        "JOIN sweep_jobs sj ON sj.job_id = j.job_id JOIN sweeps s ON s.sweep_id = sj.sweep_id "
        "WHERE s.name = '",
        sweep, "'");
    absl::StatusOr<QueryResult> counts = store_->Query(
        absl::StrCat("SELECT j.job_id, j.attempts, j.max_attempts FROM jobs j ", of_sweep),
        static_cast<int>(jobs->size()) + 1, kQueryTimeoutMs);
    if (!counts.ok()) return;
    for (const auto& row : counts->rows) {
      if (row.size() != 3) continue;
      auto it = by_id.find(CellString(row[0]));
      if (it == by_id.end()) continue;
      it->second->attempts = static_cast<int>(CellInt(row[1]));
      it->second->max_attempts = static_cast<int>(CellInt(row[2]));
    }
    absl::StatusOr<QueryResult> attempts = store_->Query(
        absl::StrCat("SELECT a.job_id, a.fence, a.worker_id, a.started_ms, a.ended_ms, "
                     "a.outcome, a.error FROM attempts a JOIN jobs j ON j.job_id = a.job_id ",
                     of_sweep, " ORDER BY a.attempt_id"),
        kMaxAttemptRows, kQueryTimeoutMs);
    if (!attempts.ok()) return;
    for (const auto& row : attempts->rows) {
      if (row.size() != 7) continue;
      auto it = by_id.find(CellString(row[0]));
      if (it == by_id.end()) continue;
      AttemptRow a;
      a.fence = CellInt(row[1]);
      a.worker = CellString(row[2]);
      a.started_ms = CellInt(row[3]);
      a.ended_ms = CellInt(row[4]);
      a.outcome = CellString(row[5]);
      a.error = CellString(row[6]);
      it->second->attempt_rows.push_back(std::move(a));
    }
  }

  static json JobJson(const JobRow& j, const View& view) {
    json attempts = json::array();
    for (const AttemptRow& a : j.attempt_rows) {
      attempts.push_back(json{{"fence", a.fence},
                              {"worker", a.worker},
                              {"started_ms", a.started_ms},
                              {"ended_ms", a.ended_ms > 0 ? json(a.ended_ms) : json(nullptr)},
                              {"outcome", a.outcome},
                              {"error", a.error}});
    }
    json out{{"job_id", j.job_id},
             {"labels", j.labels},
             {"state", JobStateName(j.state)},
             {"last_error", j.last_error},
             {"attempts", j.attempts >= 0 ? json(j.attempts) : json(nullptr)},
             {"max_attempts", j.max_attempts >= 0 ? json(j.max_attempts) : json(nullptr)},
             {"attempt_history", attempts}};
    if (j.state == JobState::kDone) out["value"] = j.value ? json(*j.value) : json(nullptr);
    return out;
  }

  std::shared_ptr<const Comparison> Compare(const SweepInfo& info, const std::vector<JobRow>& jobs,
                                            size_t ids_hash, const View& view) {
    const std::string key = absl::StrCat(
        info.name, "\n", view.metric, "\n", view.log_y ? (*view.log_y ? 1 : 0) : 2, "\n",
        info.total, "\n", info.count(JobState::kDone), "\n", jobs.size(), "\n", ids_hash);
    {
      MutexLock lock(&cache_mu_);
      auto it = cache_.find(key);
      if (it != cache_.end()) return it->second;
    }
    auto cmp = std::make_shared<Comparison>();
    std::vector<TableInput> inputs;
    bool has_none = false, any_result = false;
    for (const JobRow& j : jobs) {
      std::optional<JobResult> result;
      if (!j.result_text.empty()) {
        absl::StatusOr<JobResult> r = JobResult::Parse(j.result_text);
        if (r.ok()) {
          if (std::optional<double> v = r->Number(view.metric)) cmp->values[j.job_id] = *v;
          result = *std::move(r);
        }
      }
      has_none = has_none || LabelText(j.labels, "method") == "none";
      any_result = any_result || result.has_value();
      inputs.push_back({j.labels, std::move(result)});
    }
    if (!any_result) {
      cmp->notes.push_back("no results yet");
    } else {
      TableSpec spec;
      spec.rows = "auto";
      spec.cols = "method";
      spec.metric = view.metric;
      spec.delta = has_none ? "none" : "";
      absl::StatusOr<Table> table = BuildTable(inputs, spec);
      if (!table.ok() && has_none) {
        // A row without its `none` cell yet (a running sweep): the values, without differences.
        cmp->notes.push_back(
            absl::StrCat("differences from none not shown: ", table.status().message()));
        spec.delta.clear();
        table = BuildTable(inputs, spec);
      }
      if (table.ok()) {
        absl::StatusOr<std::string> html = FormatTable(*table, "html");
        absl::StatusOr<std::string> text = FormatTable(*table, "json");
        if (html.ok()) cmp->table_html = *html;
        if (text.ok()) {
          json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
          if (!j.is_discarded()) cmp->table_json = std::move(j);
        }
      } else {
        cmp->notes.push_back(absl::StrCat("no table: ", table.status().message()));
      }
      PlotSpec plot_spec;
      plot_spec.y = view.metric;
      plot_spec.log_y = view.log_y.value_or(true);
      plot_spec.title = info.name;
      absl::StatusOr<Plot> plot = BuildPlot(inputs, plot_spec);
      if (!plot.ok() && !view.log_y.has_value()) {  // values <= 0: a linear axis
        plot_spec.log_y = false;
        plot = BuildPlot(inputs, plot_spec);
      }
      if (plot.ok()) {
        cmp->plot_svg = RenderSvg(*plot);  // its notes are in the figure
      } else {
        cmp->notes.push_back(absl::StrCat("no plot: ", plot.status().message()));
      }
    }
    MutexLock lock(&cache_mu_);
    if (cache_.size() >= kCacheEntries) cache_.clear();
    cache_[key] = cmp;
    return cmp;
  }

  std::string SweepPage(const SweepInfo& info, const std::vector<JobRow>& jobs, size_t shown,
                        const Comparison& cmp, const View& view) {
    const std::string name = Esc(info.name);
    std::string b = absl::StrCat(
        "<p class=\"crumbs\"><a href=\"/", Esc(view.query), "\">sweeps</a> / ", name, "</p>\n<h1>",
        name, info.cancelled ? " <span class=\"tag\">cancelled</span>" : "",
        "</h1>\n<section class=\"summary\" data-sweep=\"", name, "\" data-done=\"",
        info.count(JobState::kDone), "\" data-total=\"", info.total, "\">\n", ProgressBar(info),
        "\n<table class=\"counts\"><tr>");
    for (JobState st : kStates) {
      absl::StrAppend(&b, "<th scope=\"col\">", JobStateName(st), "</th>");
    }
    absl::StrAppend(&b, "<th scope=\"col\">jobs</th></tr>\n<tr>");
    for (JobState st : kStates) {
      absl::StrAppend(&b, "<td class=\"num state-", JobStateName(st), "\">", info.count(st),
                      "</td>");
    }
    absl::StrAppend(&b, "<td class=\"num\">", info.total, "</td></tr></table>\n<p>Submitted ",
                    FormatMs(info.created_ms), " UTC, priority ", info.priority,
                    ". JSON: <a href=\"/api/sweep/", name, "\">/api/sweep/", name,
                    "</a>.</p>\n</section>\n");
    if (!info.recent_errors.empty()) {
      absl::StrAppend(&b, "<h2>Recent errors</h2>\n<ul class=\"errors\">\n");
      for (const std::string& e : info.recent_errors) {
        absl::StrAppend(&b, "<li><code>", Esc(Truncate(e, 4 * kMaxErrorChars)), "</code></li>\n");
      }
      absl::StrAppend(&b, "</ul>\n");
    }
    absl::StrAppend(&b, "<h2>Results</h2>\n");
    if (!cmp.table_html.empty())
      absl::StrAppend(&b, "<div class=\"table-wrap\">", cmp.table_html, "</div>\n");
    if (!cmp.plot_svg.empty()) {
      std::string svg = cmp.plot_svg;
      if (absl::StartsWith(svg, "<?xml")) svg = svg.substr(svg.find('\n') + 1);
      absl::StrAppend(&b, "<figure class=\"plot\">", svg,
                      "<figcaption>kvsweep plot: the metric against the storage fraction, one "
                      "line per method family; error bars: ± one stored standard error. "
                      "<a href=\"/sweep/",
                      name, "/plot.svg", Esc(view.query), "\">SVG</a>.</figcaption></figure>\n");
    }
    if (!cmp.notes.empty()) {
      absl::StrAppend(&b, "<ul class=\"notes\">\n");
      for (const std::string& n : cmp.notes) absl::StrAppend(&b, "<li>", Esc(n), "</li>\n");
      absl::StrAppend(&b, "</ul>\n");
    }
    absl::StrAppend(&b, "<h2>Jobs</h2>\n");
    if (shown < jobs.size()) {
      absl::StrAppend(&b, "<p class=\"notes\">The first ", shown, " of ", jobs.size(),
                      " jobs (<code>?jobs=N</code>, up to ", kMaxJobs, ").</p>\n");
    }
    absl::StrAppend(&b,
                    "<table class=\"jobs\">\n<thead><tr><th scope=\"col\">job</th>"
                    "<th scope=\"col\">model</th><th scope=\"col\">task</th>"
                    "<th scope=\"col\">method</th><th scope=\"col\">kv_heads</th>"
                    "<th scope=\"col\">seed</th><th scope=\"col\">state</th>"
                    "<th scope=\"col\" class=\"num\">attempts</th>"
                    "<th scope=\"col\" class=\"num\">",
                    Esc(view.metric == "auto" ? "ppl / token_ppl" : view.metric),
                    "</th><th scope=\"col\">last error / attempts</th></tr></thead>\n<tbody>\n");
    for (size_t i = 0; i < shown; ++i) {
      const JobRow& j = jobs[i];
      std::string value;
      if (j.value) value = absl::StrFormat("%.6g", *j.value);
      absl::StrAppend(
          &b, "<tr class=\"job state-", JobStateName(j.state), "\"><td><code title=\"",
          Esc(j.job_id), "\">", Esc(j.job_id.substr(0, 12)), "</code></td><td>",
          Esc(LabelText(j.labels, "model")), "</td><td>", Esc(LabelText(j.labels, "task")),
          "</td><td>", Esc(LabelText(j.labels, "method")), "</td><td>",
          Esc(LabelText(j.labels, "kv_heads")), "</td><td>", Esc(LabelText(j.labels, "seed")),
          "</td><td class=\"state\">", JobStateName(j.state), "</td><td class=\"num\">",
          j.attempts >= 0 ? absl::StrCat(j.attempts, " / ", j.max_attempts) : "", "</td>",
          "<td class=\"num\">", value, "</td><td>");
      if (!j.last_error.empty()) {
        absl::StrAppend(&b, "<code class=\"error\">", Esc(Truncate(j.last_error, kMaxErrorChars)),
                        "</code>");
      }
      if (!j.attempt_rows.empty()) {
        absl::StrAppend(&b, "<details><summary>", j.attempt_rows.size(),
                        j.attempt_rows.size() == 1 ? " lease" : " leases",
                        "</summary><table class=\"attempts\"><tr><th>fence</th><th>worker</th>"
                        "<th>started (UTC)</th><th>took</th><th>outcome</th><th>error</th>"
                        "</tr>");
        for (const AttemptRow& a : j.attempt_rows) {
          absl::StrAppend(&b, "<tr><td class=\"num\">", a.fence, "</td><td>", Esc(a.worker),
                          "</td><td>", FormatMs(a.started_ms), "</td><td>",
                          a.ended_ms > 0
                              ? absl::StrFormat("%.1f s", (a.ended_ms - a.started_ms) / 1000.0)
                              : std::string(),
                          "</td><td>", Esc(a.outcome), "</td><td>",
                          Esc(Truncate(a.error, kMaxErrorChars)), "</td></tr>");
        }
        absl::StrAppend(&b, "</table></details>");
      }
      absl::StrAppend(&b, "</td></tr>\n");
    }
    absl::StrAppend(&b, "</tbody>\n</table>\n");
    return Page(info.name, b, Finished(info) ? 0 : view.refresh);
  }

  // The page around `body`; `refresh` > 0: reload every `refresh` seconds (no JavaScript).
  static std::string Page(const std::string& title, const std::string& body, int refresh) {
    return absl::StrCat(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        refresh > 0 ? absl::StrCat("<meta http-equiv=\"refresh\" content=\"", refresh, "\">\n")
                    : "",
        "<title>kvsweep: ", Esc(title), "</title>\n<style>\n", kCss,
        "</style>\n</head>\n<body>\n"
        "<header><a class=\"brand\" href=\"/\">kvsweep</a> <span>coordinator dashboard "
        "(read-only)</span></header>\n<main>\n",
        body, "</main>\n<footer>Rendered ", NowText(),
        refresh > 0 ? absl::StrCat("; reloads every ", refresh, " s while a sweep runs")
                    : std::string(),
        ".</footer>\n</body>\n</html>\n");
  }

  static constexpr const char* kCss = R"css(
body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; margin: 0; color: #1b1f24;
       background: #f6f7f9; font-size: 14px; }
header { background: #1f3a5f; color: #fff; padding: 10px 24px; }
header a.brand { color: #fff; font-weight: bold; font-size: 18px; text-decoration: none;
                 margin-right: 10px; }
main { padding: 8px 24px 24px; }
footer { color: #667; padding: 0 24px 16px; font-size: 12px; }
h1 { font-size: 22px; margin: 12px 0; } h2 { font-size: 17px; margin: 22px 0 8px; }
a { color: #1f5fbf; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #d7dbe0; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th, .counts th, .attempts th { background: #eef1f5; }
td.num, th.num, table.comparison td { text-align: right; font-variant-numeric: tabular-nums; }
table.comparison th[scope=row] { white-space: nowrap; }
td.delta.significant { font-weight: bold; }
.caption, .notes { color: #556; font-size: 12px; }
.table-wrap { overflow-x: auto; }
.progress { display: flex; align-items: center; gap: 8px; min-width: 320px; }
.bar { display: flex; width: 220px; height: 14px; background: #e3e6ea; border-radius: 3px;
       overflow: hidden; flex: none; }
.bar span { display: block; height: 100%; }
.bar .done { background: #2e8540; } .bar .bad { background: #c62828; }
.bar .leased { background: #4a90d9; }
.progress-text, table.sweeps th, table.sweeps td { white-space: nowrap; }
.tag { background: #888; color: #fff; border-radius: 3px; padding: 1px 6px; font-size: 12px; }
.state-failed .state, .state-quarantined .state, code.error { color: #b71c1c; }
.state-leased .state { color: #1f5fbf; font-weight: bold; }
.state-done .state { color: #2e7d32; }
figure.plot { margin: 12px 0; background: #fff; display: inline-block; border: 1px solid #d7dbe0; }
figure.plot figcaption { font-size: 12px; color: #556; padding: 4px 8px; }
details summary { cursor: pointer; color: #1f5fbf; }
code { font-size: 12px; }
)css";

  DashboardOptions options_;
  ResultStore* store_;
  Mutex cache_mu_;
  std::map<std::string, std::shared_ptr<const Comparison>> cache_ ABSL_GUARDED_BY(cache_mu_);
  std::string host_;
  int port_ = 0;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DashboardServer>> StartDashboard(const DashboardOptions& options,
                                                                ResultStore* store) {
  absl::StatusOr<ListenAddress> address = ParseListenAddress("--http", options.listen);
  if (!address.ok()) return address.status();
  absl::StatusOr<bool> loopback = IsLoopbackAddress(address->host_port);
  if (!loopback.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--http: ", loopback.status().message()));
  }
  if (!*loopback &&
      (options.tls.cert.empty() || options.tls.key.empty() || options.tokens.empty())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--http: refusing to serve the dashboard on non-loopback address ", options.listen,
        " without TLS and a bearer token (pass --tls-cert, --tls-key and --token-file)"));
  }
  auto d = std::make_unique<Dashboard>(options, store);
  if (absl::Status s = d->Listen(*address); !s.ok()) return s;
  return d;
}

#else  // !KVSWEEP_WITH_HTTPLIB

absl::StatusOr<std::unique_ptr<DashboardServer>> StartDashboard(const DashboardOptions& options,
                                                                ResultStore*) {
  absl::StatusOr<ListenAddress> address = ParseListenAddress("--http", options.listen);
  if (!address.ok()) return address.status();
  return absl::UnimplementedError(
      "--http: this kvsweep-coordinator was built without cpp-httplib (Debian package "
      "libcpp-httplib-dev)");
}

#endif  // KVSWEEP_WITH_HTTPLIB

}  // namespace kvsweep
