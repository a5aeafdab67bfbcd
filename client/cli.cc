#include "client/cli.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/coordinator_client.h"
#include "client/plot.h"
#include "client/progress.h"
#include "client/report.h"
#include "client/table.h"
#include "common/cli_config.h"
#include "common/file_util.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "spec/job_result.h"
#include "storage/result_store.h"

namespace kvsweep {

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitSweepFailed = 3;

int Error(const absl::Status& s) {
  std::string msg(s.message());
  for (char& c : msg) {
    if (c == '\n') c = ' ';
  }
  std::cerr << "kvsweep: " << msg << "\n";
  return kExitError;
}
int Error(const std::string& msg) { return Error(absl::InvalidArgumentError(msg)); }

// Option checks. CLI11's Range says "Value abc not in range ..." of a word and lets NaN through
// (every comparison with NaN is false); these say what is wrong, after "--OPTION: ".
CLI::Validator IntegerIn(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        int64_t v = 0;
        double d = 0;
        const std::string range = absl::StrCat("an integer in [", lo, ", ", hi, "]");
        if (absl::SimpleAtoi(text, &v) && v >= lo && v <= hi) return "";
        if (!absl::SimpleAtod(text, &d) || !std::isfinite(d)) {
          return absl::StrCat("'", text, "' is not a number; it must be ", range);
        }
        return absl::StrCat("'", text, "' must be ", range);
      },
      absl::StrCat("INT in [", lo, ", ", hi, "]"));
}
CLI::Validator NumberIn(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        double d = 0;
        if (absl::SimpleAtod(text, &d) && std::isfinite(d) && d >= lo && d <= hi) return "";
        return absl::StrCat("'", text, "' must be a number in [", lo, ", ", hi, "]");
      },
      absl::StrCat("FLOAT in [", lo, ", ", hi, "]"));
}
// Bootstrap seeds are uint64_t: CLI11 would read -1 as 2^64 - 1.
CLI::Validator SeedNumber() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        uint64_t v = 0;
        if (!text.empty() && absl::ascii_isdigit(text[0]) && absl::SimpleAtoi(text, &v)) return "";
        return absl::StrCat("'", text, "' must be an integer in [0, ",
                            std::numeric_limits<uint64_t>::max(), "]");
      },
      "");  // --help shows the option's type, UINT
}

absl::StatusOr<QueryResult> RunQuery(CoordinatorConnection& g, const std::string& db,
                                     const std::string& sql, int max_rows) {
  if (!db.empty()) {
    SqliteOptions o;
    o.read_only = true;
    absl::StatusOr<std::unique_ptr<ResultStore>> store = NewSqliteResultStore(db, o);
    if (!store.ok()) return store.status();
    return (*store)->Query(sql, max_rows, 60000);
  }
  KV_RETURN_IF_ERROR(CheckUtf8(sql, "the SQL"));
  KV_ASSIGN_OR_RETURN(auto stub, Stub(g));
  grpc::ClientContext ctx;
  PrepareContext(&ctx, g.cfg, std::chrono::milliseconds(g.timeout_ms));
  v1::QueryRequest req;
  req.set_sql(sql);
  req.set_max_rows(max_rows);
  v1::QueryResponse resp;
  grpc::Status s = stub->Query(&ctx, req, &resp);
  if (!s.ok()) return RpcError(s, g.cfg);
  QueryResult out;
  out.columns.assign(resp.columns().begin(), resp.columns().end());
  out.truncated = resp.truncated();
  for (const v1::Row& row : resp.rows()) {
    std::vector<QueryResult::Value> r;
    for (const v1::Cell& c : row.cells()) {
      switch (c.value_case()) {
        case v1::Cell::kIntValue:
          r.emplace_back(static_cast<int64_t>(c.int_value()));
          break;
        case v1::Cell::kRealValue:
          r.emplace_back(c.real_value());
          break;
        case v1::Cell::kTextValue:
          r.emplace_back(c.text_value());
          break;
        case v1::Cell::kBlobValue:
          r.emplace_back(std::vector<uint8_t>(c.blob_value().begin(), c.blob_value().end()));
          break;
        default:
          r.emplace_back(std::monostate());
      }
    }
    out.rows.push_back(std::move(r));
  }
  return out;
}

std::string ValueText(const QueryResult::Value& v) {
  if (std::holds_alternative<int64_t>(v)) return std::to_string(std::get<int64_t>(v));
  if (std::holds_alternative<double>(v)) return absl::StrFormat("%.10g", std::get<double>(v));
  if (std::holds_alternative<std::string>(v)) return std::get<std::string>(v);
  if (std::holds_alternative<std::vector<uint8_t>>(v)) {
    return absl::StrCat("<blob ", std::get<std::vector<uint8_t>>(v).size(), " bytes>");
  }
  return "NULL";
}

nlohmann::json ValueJson(const QueryResult::Value& v) {
  if (std::holds_alternative<int64_t>(v)) return std::get<int64_t>(v);
  if (std::holds_alternative<double>(v)) return std::get<double>(v);
  if (std::holds_alternative<std::string>(v)) return std::get<std::string>(v);
  if (std::holds_alternative<std::vector<uint8_t>>(v)) return ValueText(v);
  return nullptr;
}

std::string FormatQuery(const QueryResult& q, const std::string& format) {
  std::string out;
  if (format == "csv") {
    std::vector<std::string> h;
    for (const std::string& c : q.columns) h.push_back(CsvField(c));
    out = absl::StrJoin(h, ",") + "\n";
    for (const auto& row : q.rows) {
      std::vector<std::string> f;
      for (const auto& v : row)
        f.push_back(std::holds_alternative<std::monostate>(v) ? "" : CsvField(ValueText(v)));
      absl::StrAppend(&out, absl::StrJoin(f, ","), "\n");
    }
    return out;
  }
  if (format == "json") {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& row : q.rows) {
      nlohmann::json o = nlohmann::json::object();
      for (size_t c = 0; c < row.size() && c < q.columns.size(); ++c)
        o[q.columns[c]] = ValueJson(row[c]);
      rows.push_back(o);
    }
    return rows.dump(2) + "\n";
  }
  // Aligned text columns.
  std::vector<size_t> w(q.columns.size());
  for (size_t c = 0; c < q.columns.size(); ++c) w[c] = q.columns[c].size();
  for (const auto& row : q.rows) {
    for (size_t c = 0; c < row.size() && c < w.size(); ++c)
      w[c] = std::max(w[c], ValueText(row[c]).size());
  }
  for (size_t c = 0; c < q.columns.size(); ++c) {
    absl::StrAppend(&out, c ? "  " : "",
                    absl::StrFormat("%-*s", static_cast<int>(w[c]), q.columns[c]));
  }
  absl::StrAppend(&out, "\n");
  for (const auto& row : q.rows) {
    for (size_t c = 0; c < row.size() && c < w.size(); ++c) {
      absl::StrAppend(&out, c ? "  " : "",
                      absl::StrFormat("%-*s", static_cast<int>(w[c]), ValueText(row[c])));
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

// ---- Commands ------------------------------------------------------------------------------

int Submit(CoordinatorConnection& g, const std::string& file, bool dry_run) {
  absl::StatusOr<std::string> yaml = ReadFile(file);
  if (!yaml.ok()) return Error(yaml.status());
  const std::string dir = DirName(RealPath(file));
  // Protobuf refuses to send a string field that is not UTF-8 (logging a line of its own).
  if (absl::Status u = CheckUtf8(file, "the sweep file's name"); !u.ok()) return Error(u);
  if (absl::Status u = CheckUtf8(dir, "the sweep file's directory"); !u.ok()) return Error(u);
  if (absl::Status u = CheckUtf8(*yaml, file); !u.ok()) return Error(u);
  if (yaml->size() > kMaxSweepYamlBytes) {  // the coordinator's limit, said before sending
    return Error(absl::StrCat(file, ": ", yaml->size(), " bytes; a sweep file may have at most ",
                              kMaxSweepYamlBytes,
                              " (a sweep's combinations come from its lists, "
                              "not from listing them)"));
  }
  v1::SubmitSweepRequest req;
  req.set_sweep_yaml(*yaml);
  req.set_base_dir(dir);
  req.set_dry_run(dry_run);
  req.set_source_name(file);
  absl::StatusOr<v1::SubmitSweepResponse> answer = SubmitAndFollow(g, req);
  if (!answer.ok()) return Error(answer.status());
  const v1::SubmitSweepResponse& resp = *answer;
  std::string shape = absl::StrCat(resp.jobs_total(), " jobs (", resp.combinations(),
                                   " combinations, ", resp.excluded(), " excluded)");
  if (dry_run) {
    std::cout << "sweep '" << resp.sweep() << "' (dry run): " << shape << "; nothing submitted\n";
    // Every job with the concrete method it runs (what a family x budget solved to).
    std::vector<std::vector<std::string>> rows = {
        {"model", "task", "method", "kv_heads", "dtype", "runs"}};
    for (const v1::DryRunJob& j : resp.jobs()) {
      rows.push_back({j.model(), j.task(), j.method(), absl::StrCat(j.kv_heads()), j.dtype(),
                      j.method_spec()});
    }
    std::vector<size_t> width(rows[0].size(), 0);
    for (const auto& r : rows) {
      for (size_t c = 0; c + 1 < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
    }
    for (const auto& r : rows) {
      std::string line;
      for (size_t c = 0; c < r.size(); ++c) {
        absl::StrAppend(
            &line, c ? "  " : "",
            c + 1 < r.size() ? absl::StrFormat("%-*s", static_cast<int>(width[c]), r[c]) : r[c]);
      }
      std::cout << line << "\n";
    }
    if (resp.jobs_size() < resp.jobs_total()) {
      std::cout << "(the first " << resp.jobs_size() << " of " << resp.jobs_total() << " jobs)\n";
    }
  } else {
    std::cout << "sweep '" << resp.sweep() << "': " << shape << "; " << resp.jobs_enqueued()
              << " enqueued, " << resp.jobs_done() << " already done, " << resp.jobs_pending()
              << " already pending, " << resp.jobs_requeued() << " requeued, " << resp.jobs_failed()
              << " failed earlier\n";
  }
  return 0;
}

int Status(CoordinatorConnection& g, const std::string& sweep, bool json) {
  if (absl::Status u = CheckUtf8(sweep, "sweep name"); !u.ok()) return Error(u);
  auto stub = Stub(g);
  if (!stub.ok()) return Error(stub.status());
  v1::GetStatusRequest req;
  req.set_sweep(sweep);
  v1::GetStatusResponse resp;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, g.cfg, std::chrono::milliseconds(g.timeout_ms));
  grpc::Status s = (*stub)->GetStatus(&ctx, req, &resp);
  if (!s.ok()) return Error(RpcError(s, g.cfg));
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const v1::SweepStatus& st : resp.sweeps()) {
      out.push_back({{"sweep", st.sweep()},
                     {"total", st.total()},
                     {"queued", st.queued()},
                     {"leased", st.leased()},
                     {"done", st.done()},
                     {"failed", st.failed()},
                     {"quarantined", st.quarantined()},
                     {"cancelled", st.cancelled()},
                     {"finished", st.finished()},
                     {"priority", st.priority()},
                     {"recent_errors", std::vector<std::string>(st.recent_errors().begin(),
                                                                st.recent_errors().end())}});
      AddRunningJson(Counts(st), &out.back());
    }
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  if (resp.sweeps_size() == 0) {
    std::cout << "no sweeps\n";
    return 0;
  }
  std::printf("%-24s %7s %7s %7s %7s %7s %11s %9s\n", "sweep", "total", "done", "running", "queued",
              "failed", "quarantined", "cancelled");
  for (const v1::SweepStatus& st : resp.sweeps()) {
    std::printf("%-24s %7d %7d %7d %7d %7d %11d %9d\n", st.sweep().c_str(), st.total(), st.done(),
                st.leased(), st.queued(), st.failed(), st.quarantined(), st.cancelled());
    for (const std::string& e : st.recent_errors()) std::printf("  error %s\n", e.c_str());
    std::cout << RunningJobsText(Counts(st));
  }
  return 0;
}

// Follows the sweep's status stream. A coordinator that goes away (restart, kill -9, network)
// after the first update is waited for: the stream is reopened with backoff until it answers
// again, for up to `give_up_s` seconds of continuous absence (0 = forever); any other error
// ends the watch.
int Watch(CoordinatorConnection& g, const std::string& sweep, int interval_ms, int give_up_s) {
  if (absl::Status u = CheckUtf8(sweep, "sweep name"); !u.ok()) return Error(u);
  auto stub = Stub(g);
  if (!stub.ok()) return Error(stub.status());
  v1::WatchRequest req;
  req.set_sweep(sweep);
  req.set_interval_ms(interval_ms);
  ProgressBar bar(stderr);
  bool any = false;
  v1::SweepStatus last;
  bool down = false;  // since down_since
  std::chrono::steady_clock::time_point down_since;
  int backoff_ms = 200;
  while (true) {
    grpc::ClientContext ctx;
    if (!g.cfg.token.empty()) ctx.AddMetadata("authorization", "Bearer " + g.cfg.token);
    auto reader = (*stub)->Watch(&ctx, req);
    v1::SweepStatus st;
    while (reader->Read(&st)) {
      any = true;
      last = st;
      down = false;
      backoff_ms = 200;
      bar.Update(Counts(st));
    }
    const grpc::Status s = reader->Finish();
    if (any && last.finished()) break;
    // The stream ended early: OK (the coordinator shut down), UNAVAILABLE (it is not there) or
    // CANCELLED (it went away mid-stream) are waited out once the watch has seen the sweep (a
    // coordinator that never answered is more likely a wrong address: said at once); anything
    // else is the answer.
    const bool away = s.ok() || s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                      s.error_code() == grpc::StatusCode::CANCELLED;
    if (!away || !any) {
      bar.Finish();
      if (s.ok()) return Error("watch: the stream ended before the sweep finished");
      return Error(RpcError(s, g.cfg));
    }
    const auto now = std::chrono::steady_clock::now();
    if (!down) {
      down = true;
      down_since = now;
      bar.Finish();
      std::fprintf(stderr, "watch: lost the coordinator at %s (%s); reconnecting\n",
                   g.cfg.address.c_str(), s.ok() ? "stream closed" : s.error_message().c_str());
    } else if (give_up_s > 0 && now - down_since > std::chrono::seconds(give_up_s)) {
      return Error(absl::StrCat("watch: the coordinator at ", g.cfg.address,
                                " has been unreachable for ", give_up_s, " s (",
                                s.ok() ? "stream closed" : s.error_message(),
                                "); giving up (--give-up-after-s)"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms = std::min(backoff_ms * 2, 5000);
  }
  bar.Finish();
  std::cout << "sweep '" << sweep << "' finished: " << last.done() << "/" << last.total()
            << " done, " << last.failed() << " failed, " << last.quarantined() << " quarantined, "
            << last.cancelled() << " cancelled\n";
  for (const std::string& e : last.recent_errors()) std::cout << "  error " << e << "\n";
  return last.done() == last.total() ? 0 : kExitSweepFailed;
}

int Cancel(CoordinatorConnection& g, const std::string& sweep) {
  if (absl::Status u = CheckUtf8(sweep, "sweep name"); !u.ok()) return Error(u);
  auto stub = Stub(g);
  if (!stub.ok()) return Error(stub.status());
  v1::CancelRequest req;
  req.set_sweep(sweep);
  v1::CancelResponse resp;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, g.cfg, std::chrono::milliseconds(g.timeout_ms));
  grpc::Status s = (*stub)->Cancel(&ctx, req, &resp);
  if (!s.ok()) return Error(RpcError(s, g.cfg));
  std::cout << "sweep '" << sweep << "': cancelled " << resp.cancelled() << " jobs";
  if (resp.kept_for_others())
    std::cout << " (kept " << resp.kept_for_others() << " that other sweeps need)";
  std::cout << "\n";
  return 0;
}

int Retry(CoordinatorConnection& g, const std::string& sweep, bool failed, bool quarantined) {
  if (!failed && !quarantined) return Error("retry: pass --failed and/or --quarantined");
  if (absl::Status u = CheckUtf8(sweep, "sweep name"); !u.ok()) return Error(u);
  auto stub = Stub(g);
  if (!stub.ok()) return Error(stub.status());
  v1::RetryRequest req;
  req.set_sweep(sweep);
  req.set_failed(failed);
  req.set_quarantined(quarantined);
  v1::RetryResponse resp;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, g.cfg, std::chrono::milliseconds(g.timeout_ms));
  grpc::Status s = (*stub)->Retry(&ctx, req, &resp);
  if (!s.ok()) return Error(RpcError(s, g.cfg));
  std::cout << "sweep '" << sweep << "': requeued " << resp.requeued() << " jobs\n";
  return 0;
}

// Several sweeps in one table: each job's labels get `sweep`, so that rows or columns can pivot
// on it (rows "auto" does when there are several).
int TableCmd(CoordinatorConnection& g, const std::string& db,
             const std::vector<std::string>& sweeps, const TableSpec& spec,
             const std::string& format) {
  if (absl::Status f = CheckTableFormat(format); !f.ok()) return Error(f);
  std::vector<TableInput> in;
  std::set<std::string> seen;
  for (const std::string& sweep : sweeps) {
    if (!seen.insert(sweep).second) {
      return Error(absl::StrCat("table: sweep '", sweep, "' is named twice"));
    }
    absl::StatusOr<std::vector<Item>> items = FetchItems(g, db, sweep, false);
    if (!items.ok()) return Error(items.status());
    for (const Item& it : *items) {
      nlohmann::json labels = it.labels;
      labels["sweep"] = sweep;
      in.push_back({labels, it.result});
    }
  }
  absl::StatusOr<Table> t = BuildTable(in, spec);
  if (!t.ok()) return Error(t.status());
  absl::StatusOr<std::string> text = FormatTable(*t, format);
  if (!text.ok()) return Error(text.status());
  std::cout << *text;
  // In every format, also where the table has no caption (csv): placeholders are said on stderr.
  if (t->placeholders > 0) {
    std::cerr << "kvsweep: table: " << t->notes[0] << "\n";
  }
  return 0;
}

// `kvsweep plot` (client/plot.h): the figure from the same items `table` reads.
int PlotCmd(CoordinatorConnection& g, const std::string& db, const std::string& sweep,
            const PlotOptions& options) {
  absl::StatusOr<std::vector<Item>> items = FetchItems(g, db, sweep, false);
  if (!items.ok()) return Error(items.status());
  std::vector<TableInput> in;
  for (const Item& it : *items) {
    nlohmann::json labels = it.labels;
    labels["sweep"] = sweep;  // as `table` has it (messages name the sweep)
    in.push_back({labels, it.result});
  }
  std::vector<std::string> notes;
  absl::StatusOr<std::string> wrote = WritePlot(sweep, in, options, &notes);
  if (!wrote.ok()) return Error(wrote.status());
  for (const std::string& n : notes) std::cerr << "kvsweep: plot: " << n << "\n";
  std::cout << *wrote << "\n";
  return 0;
}

// `kvsweep report` (client/report.h): the study's claims against the sweep. With --out, the page
// goes to that file and its figures (client/plot.h) beside it; else the page goes to stdout.
int ReportCmd(CoordinatorConnection& g, const std::string& db, const std::string& sweep,
              const ReportOptions& options, const std::string& out) {
  absl::StatusOr<std::vector<Item>> items = FetchItems(g, db, sweep, false);
  if (!items.ok()) return Error(items.status());
  std::vector<TableInput> in;
  for (const Item& it : *items) in.push_back({it.labels, it.result});
  absl::StatusOr<Report> report = BuildReport(sweep, in, options);
  if (!report.ok()) return Error(report.status());
  if (report->placeholders > 0) std::cerr << "kvsweep: report: " << report->notes.front() << "\n";
  std::vector<std::pair<std::string, std::string>> figures;
  if (!out.empty()) {
    std::string stem = out;
    if (absl::EndsWith(stem, ".md")) stem.resize(stem.size() - 3);
    const std::string base = BaseName(stem);
    struct Figure {
      const char* suffix;
      PlotSpec spec;
      const char* caption;
    };
    PlotSpec quality;
    quality.x = "fraction_payload";
    quality.y = "auto";
    quality.log_y = true;
    quality.title = "quality against storage (payload fraction)";
    quality.series = "method";  // one line per method: bases and variants share budgets
    PlotSpec flips;
    flips.x = "bits";
    flips.y = "flip_rate";
    flips.title = "top-1 flip rate against bits per code";
    flips.series = "method";
    for (const Figure& f : {Figure{"-quality.svg", quality,
                                   "Perplexity (log scale) against the payload fraction of the "
                                   "cache, one line per method, one panel per model and "
                                   "task; error bars: ± one stored standard error."},
                            Figure{"-flips.svg", flips,
                                   "Top-1 flip rate (attention diagnostics, mean over layers) "
                                   "against bits per code, for the methods that have bits."}}) {
      absl::StatusOr<Plot> plot = BuildPlot(in, f.spec);
      if (!plot.ok()) {
        report->notes.push_back(
            absl::StrCat("figure ", base, f.suffix, " not drawn: ", plot.status().message()));
        continue;
      }
      const std::string path = stem + f.suffix;
      if (absl::Status w = WriteUserFile(path, RenderSvg(*plot)); !w.ok()) return Error(w);
      figures.emplace_back(base + f.suffix, f.caption);
    }
  }
  const std::string page = RenderReportMarkdown(*report, options, figures);
  if (out.empty()) {
    std::cout << page;
    return 0;
  }
  if (absl::Status w = WriteUserFile(out, page); !w.ok()) return Error(w);
  std::cout << out;
  for (const auto& f : figures) std::cout << " " << f.first;
  std::cout << "\n";
  return 0;
}

int QueryCmd(CoordinatorConnection& g, const std::string& db, const std::string& sql,
             const std::string& format, int max_rows) {
  if (format != "text" && format != "csv" && format != "json") {
    return Error(absl::StrCat("query: unknown format '", format, "' (text, csv, json)"));
  }
  absl::StatusOr<QueryResult> q = RunQuery(g, db, sql, max_rows);
  if (!q.ok()) return Error(q.status());
  std::cout << FormatQuery(*q, format);
  if (q->truncated) std::cerr << "kvsweep: (output truncated at " << max_rows << " rows)\n";
  return 0;
}

int Export(CoordinatorConnection& g, const std::string& db, const std::string& sweep,
           const std::string& format, const std::string& output, bool include_spec) {
  if (format != "jsonl" && format != "csv") {
    return Error(absl::StrCat("export: unknown format '", format, "' (jsonl, csv)"));
  }
  absl::StatusOr<std::vector<Item>> items = FetchItems(g, db, sweep, include_spec);
  if (!items.ok()) return Error(items.status());
  std::string out;
  if (format == "jsonl") {
    for (const Item& it : *items) {
      nlohmann::json j = {{"job_id", it.job_id},
                          {"sweep", it.sweep},
                          {"state", it.state},
                          {"labels", it.labels},
                          {"result", it.result ? it.result->json() : nlohmann::json(nullptr)}};
      if (it.spec) j["spec"] = *it.spec;
      if (!it.last_error.empty()) j["last_error"] = it.last_error;
      absl::StrAppend(&out, j.dump(), "\n");
    }
  } else {
    // Columns: identity, labels, then every metric seen (task.metric, ledger.*, timing.*).
    std::set<std::string> metric_cols;
    std::vector<std::map<std::string, std::string>> flat;
    for (const Item& it : *items) {
      flat.push_back(it.result ? it.result->Columns() : std::map<std::string, std::string>());
      for (const auto& [k, v] : flat.back()) metric_cols.insert(k);
    }
    std::vector<std::string> header = {"job_id", "sweep", "state"};
    for (const std::string& d : TableDimensions()) header.push_back(d);
    header.insert(header.end(), metric_cols.begin(), metric_cols.end());
    header.push_back("last_error");
    std::vector<std::string> h;
    for (const std::string& c : header) h.push_back(CsvField(c));
    out = absl::StrJoin(h, ",") + "\n";
    for (size_t i = 0; i < items->size(); ++i) {
      const Item& it = (*items)[i];
      std::vector<std::string> row = {it.job_id, it.sweep, it.state};
      for (const std::string& d : TableDimensions()) row.push_back(LabelText(it.labels, d));
      for (const std::string& m : metric_cols) {
        auto f = flat[i].find(m);
        row.push_back(f == flat[i].end() ? "" : f->second);
      }
      row.push_back(it.last_error);
      for (std::string& f : row) f = CsvField(f);
      absl::StrAppend(&out, absl::StrJoin(row, ","), "\n");
    }
  }
  if (output.empty() || output == "-") {
    std::cout << out;
  } else {
    absl::Status w = WriteUserFile(output, out);
    if (!w.ok()) return Error(w);
    std::cerr << "kvsweep: wrote " << items->size() << " jobs to " << output << "\n";
  }
  return 0;
}

}  // namespace

int RunKvsweep(int argc, char** argv) {
  CoordinatorConnection g;
  CLI::App app{"kvsweep: KV-cache compression sweeps (submit, follow, query results)"};
  app.set_version_flag("--version", "kvsweep " KVSWEEP_VERSION);
  app.require_subcommand(1);
  // The connection settings also come from KVSWEEP_<FLAG> variables and --config FILE
  // (common/cli_config.h): command line, then environment, then file.
  WithEnv(app.add_option("--coordinator", g.cfg.address, "coordinator address"))
      ->capture_default_str();
  WithEnv(app.add_option("--token-file", g.token_file, "bearer token file"));
  WithEnv(app.add_flag("--tls", g.cfg.tls, "use TLS (system roots unless --tls-ca)"));
  WithEnv(app.add_option("--tls-ca", g.cfg.tls_files.ca, "CA of the coordinator's certificate"));
  WithEnv(app.add_option("--tls-cert", g.cfg.tls_files.cert, "client certificate (mTLS)"));
  WithEnv(app.add_option("--tls-key", g.cfg.tls_files.key, "client key (mTLS)"));
  WithEnv(app.add_option("--tls-server-name", g.cfg.tls_server_name, "expected certificate name"));
  app.add_option("--timeout-ms", g.timeout_ms, "deadline of each call")
      ->check(IntegerIn(100, 86400000))
      ->capture_default_str();
  AddConfigFile(&app);

  std::string file, sweep, db, sql, output;
  std::string table_format, query_format, export_format;
  bool dry_run = false, json = false, failed = false, quarantined = false, include_spec = false;
  int interval_ms = 1000, max_rows = 10000, give_up_s = 600;
  TableSpec tspec;
  std::vector<std::string> where;
  DemoOptions demo;

  CLI::App* submit = app.add_subcommand("submit", "expand a sweep file and enqueue its jobs");
  submit->add_option("sweep_file", file, "sweep YAML (docs/sweep-spec.md)")->required();
  submit->add_flag("--dry-run", dry_run, "validate and count the jobs; submit nothing");

  CLI::App* status = app.add_subcommand("status", "job counts per state");
  status->add_option("sweep", sweep, "one sweep (default: all)");
  status->add_flag("--json", json, "machine-readable output");

  CLI::App* watch = app.add_subcommand("watch", "follow a sweep until it finishes");
  watch->add_option("sweep", sweep)->required();
  watch->add_option("--interval-ms", interval_ms, "update period")
      ->check(IntegerIn(50, 60000))
      ->capture_default_str();
  watch
      ->add_option("--give-up-after-s", give_up_s,
                   "while the coordinator is unreachable, keep reconnecting this long (0: forever)")
      ->check(IntegerIn(0, 365 * 86400))
      ->capture_default_str();

  CLI::App* cancel = app.add_subcommand("cancel", "cancel a sweep's unfinished jobs");
  cancel->add_option("sweep", sweep)->required();

  CLI::App* retry = app.add_subcommand("retry", "requeue failed (or quarantined) jobs");
  retry->add_option("sweep", sweep)->required();
  retry->add_flag("--failed", failed, "requeue failed jobs");
  retry->add_flag("--quarantined", quarantined, "requeue quarantined (poison) jobs");

  std::vector<std::string> table_sweeps;
  CLI::App* table = app.add_subcommand("table", "pivot a sweep's results (or several sweeps')");
  table
      ->add_option("sweep", table_sweeps, "one or more sweeps (the label `sweep` tells them apart)")
      ->required();
  tspec.rows = "auto";
  tspec.metric = "auto";
  table->add_option("--rows", tspec.rows, "label for rows (auto: every label that varies, joined)")
      ->capture_default_str();
  table->add_option("--cols", tspec.cols, "label for columns")->capture_default_str();
  table
      ->add_option("--metric", tspec.metric,
                   "metric to show (auto: ppl for LAMBADA, token_ppl for text tasks)")
      ->capture_default_str();
  table->add_option("--delta", tspec.delta,
                    "show differences from this column (e.g. none), with paired-bootstrap "
                    "intervals where results have per-document values");
  table->add_option("--resamples", tspec.resamples, "bootstrap resamples for intervals")
      ->check(IntegerIn(100, 100000))
      ->capture_default_str();
  table->add_option("--seed", tspec.seed, "bootstrap seed (the same seed, the same intervals)")
      ->check(SeedNumber())
      ->capture_default_str();
  table->add_option("--level", tspec.level, "interval coverage")
      ->check(NumberIn(0.5, 0.999))
      ->capture_default_str();
  table->add_option("--where", where, "keep jobs whose label KEY has VALUE (KEY=VALUE)");
  table
      ->add_option("--format", table_format,
                   "md, csv, latex, json or html (a <table> fragment, cells escaped)")
      ->default_val("md");
  table->add_option("--db", db, "read this database file instead of asking the coordinator");

  PlotOptions plot_opts;
  CLI::App* plot = app.add_subcommand("plot", "draw a sweep's results as SVG (and PNG)");
  plot->add_option("sweep", sweep)->required();
  plot->add_option("--x", plot_opts.spec.x,
                   "x axis: a result number (fraction_total, ...), bits, budget or kv_heads")
      ->capture_default_str();
  plot->add_option("--y", plot_opts.spec.y,
                   "metric (auto: ppl for LAMBADA, token_ppl for text tasks; flip_rate, ...)")
      ->capture_default_str();
  plot->add_option("--series", plot_opts.spec.series, "label that makes one line each")
      ->capture_default_str();
  plot->add_option("--title", plot_opts.spec.title, "figure title (default: SWEEP: y vs x)");
  plot->add_flag("--log-y", plot_opts.spec.log_y, "logarithmic y axis (perplexities)");
  plot->add_option("--where", where, "keep jobs whose label KEY has VALUE (KEY=VALUE)");
  plot->add_option("--out,-o", plot_opts.out, "SVG file (default SWEEP.svg)");
  plot->add_option("--png", plot_opts.png, "also render a PNG with headless Chromium");
  plot->add_option("--db", db, "read this database file instead of asking the coordinator");

  ReportOptions report_opts;
  std::string report_out;
  CLI::App* report = app.add_subcommand(
      "report", "check the quantization-vs-rank study's claims against a sweep (Markdown)");
  report->add_option("sweep", sweep)->required();
  report->add_option("--out,-o", report_out,
                     "write the page here and its figures beside it (default: stdout, no figures)");
  report->add_option("--resamples", report_opts.resamples, "bootstrap resamples")
      ->check(IntegerIn(100, 100000))
      ->capture_default_str();
  report->add_option("--seed", report_opts.seed, "bootstrap seed")
      ->check(SeedNumber())
      ->capture_default_str();
  report->add_option("--note", report_opts.note,
                     "Markdown shown under the title (how the page was made, the machine)");
  report->add_option("--db", db, "read this database file instead of asking the coordinator");

  CLI::App* query = app.add_subcommand("query", "run read-only SQL on the result database");
  query->add_option("sql", sql)->required();
  query->add_option("--format", query_format, "text, csv or json")->default_val("text");
  query->add_option("--max-rows", max_rows, "row limit")
      ->check(IntegerIn(1, 100000))
      ->capture_default_str();
  query->add_option("--db", db, "read this database file instead of asking the coordinator");

  CLI::App* exp = app.add_subcommand("export", "write a sweep's jobs and results");
  exp->add_option("sweep", sweep)->required();
  exp->add_option("--format", export_format, "jsonl or csv")->default_val("jsonl");
  exp->add_option("--output,-o", output, "file (default stdout)");
  exp->add_flag("--include-spec", include_spec, "add each job's spec (jsonl)");
  exp->add_option("--db", db, "read this database file instead of asking the coordinator");

  CLI::App* demo_cmd = app.add_subcommand(
      "demo", "run a small sweep end to end: embedded coordinator + local workers on ref-llama");
  demo_cmd->add_option("--workers", demo.workers, "worker processes")
      ->check(IntegerIn(1, 64))
      ->capture_default_str();
  demo_cmd
      ->add_option("--evaluator", demo.evaluator,
                   "engine, or fake (placeholder numbers: exercises the pipeline only)")
      ->capture_default_str();
  demo_cmd->add_option("--worker-bin", demo.worker_bin, "kvsweep-worker to run");
  demo_cmd->add_option("--coordinator-bin", demo.coordinator_bin, "kvsweep-coordinator to run");
  demo_cmd->add_option("--keep", demo.keep_dir, "keep the database and logs in this directory");
  demo_cmd->add_option("--limit", demo.limit, "LAMBADA documents per job")
      ->check(IntegerIn(1, 5153))
      ->capture_default_str();
  demo_cmd->add_option("--timeout-s", demo.timeout_s, "give up after this long")
      ->check(IntegerIn(1, 86400))
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    // `kvsweep bogus`: CLI11 keeps the word as a leftover and says only that a subcommand is
    // required.
    const std::vector<std::string> left = app.remaining();
    if (app.get_subcommands().empty() && !left.empty() && left[0].rfind("-", 0) != 0) {
      std::vector<std::string> names;
      for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        names.push_back(sub->get_name());
      }
      std::cerr << "kvsweep: unknown command '" << left[0]
                << "' (commands: " << absl::StrJoin(names, ", ") << "; see kvsweep --help)\n";
      return kExitUsage;
    }
    std::cerr << "kvsweep: " << e.what() << " (see kvsweep --help)\n";
    return kExitUsage;
  }
  for (const std::string& w : where) {
    std::pair<std::string, std::string> kv = absl::StrSplit(w, absl::MaxSplits('=', 1));
    if (w.find('=') == std::string::npos || kv.first.empty()) {
      return Error(absl::StrCat("--where: '", w, "' is not KEY=VALUE"));
    }
    tspec.where.push_back(kv);
  }
  if (*submit) return Submit(g, file, dry_run);
  if (*status) return Status(g, sweep, json);
  if (*watch) return Watch(g, sweep, interval_ms, give_up_s);
  if (*cancel) return Cancel(g, sweep);
  if (*retry) return Retry(g, sweep, failed, quarantined);
  if (*table) return TableCmd(g, db, table_sweeps, tspec, table_format);
  if (*plot) {
    plot_opts.spec.where = tspec.where;
    return PlotCmd(g, db, sweep, plot_opts);
  }
  if (*report) return ReportCmd(g, db, sweep, report_opts, report_out);
  if (*query) return QueryCmd(g, db, sql, query_format, max_rows);
  if (*exp) return Export(g, db, sweep, export_format, output, include_spec);
  if (*demo_cmd) return RunDemo(demo);
  return kExitUsage;
}

}  // namespace kvsweep
