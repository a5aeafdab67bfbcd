#include "client/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvsweep {

std::string EtaText(double s) {
  if (!(s >= 0) || !std::isfinite(s)) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}

double RunningJobProgress::eta_s() const {
  return per_s > 0 && std::isfinite(per_s) ? std::max(0.0, 1.0 - fraction) / per_s : NAN;
}

double EtaFromRunningJobs(const ProgressCounts& c) {
  double rate = 0, left = c.queued;
  for (const RunningJobProgress& r : c.running) {
    if (r.per_s > 0 && std::isfinite(r.per_s)) rate += r.per_s;
    left += std::max(0.0, 1.0 - r.fraction);
  }
  return rate > 0 ? left / rate : NAN;
}

std::vector<RunningJobProgress> RunningJobsOf(const v1::SweepStatus& s) {
  std::vector<RunningJobProgress> out;
  for (const v1::RunningJob& r : s.running()) {
    RunningJobProgress p;
    p.job_id = r.job_id();
    p.worker_id = r.worker_id();
    // Bounded here too: the coordinator keeps [0, 1], an older or odd one may not.
    p.fraction = std::isfinite(r.progress()) ? std::clamp(r.progress(), 0.0, 1.0) : 0.0;
    p.per_s = std::isfinite(r.progress_per_s()) && r.progress_per_s() > 0 ? r.progress_per_s() : 0;
    out.push_back(std::move(p));
  }
  return out;
}

std::string RunningJobsText(const ProgressCounts& c) {
  if (c.running.empty()) return "";
  std::string out;
  for (const RunningJobProgress& r : c.running) {
    absl::StrAppendFormat(&out, "  job %s on %s: %.1f%% done, ETA %s\n", r.job_id.substr(0, 12),
                          r.worker_id, 100.0 * r.fraction, EtaText(r.eta_s()));
  }
  absl::StrAppend(&out, "  ETA ", EtaText(EtaFromRunningJobs(c)), "\n");
  return out;
}

void AddRunningJson(const ProgressCounts& c, nlohmann::json* sweep) {
  auto number = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
  nlohmann::json running = nlohmann::json::array();
  for (const RunningJobProgress& r : c.running) {
    running.push_back({{"job_id", r.job_id},
                       {"worker_id", r.worker_id},
                       {"progress", r.fraction},
                       {"progress_per_s", r.per_s},
                       {"eta_s", number(r.eta_s())}});
  }
  (*sweep)["running"] = std::move(running);
  (*sweep)["eta_s"] = number(EtaFromRunningJobs(c));
}

ProgressBar::ProgressBar(std::FILE* out) : out_(out), tty_(::isatty(::fileno(out)) != 0) {}

std::string ProgressBar::Render(const ProgressCounts& c, double eta_s, int width) {
  double running_done = 0;
  for (const RunningJobProgress& r : c.running) running_done += std::clamp(r.fraction, 0.0, 1.0);
  // '#' for done jobs and the done part of running ones, then 'x' for jobs that ended without a
  // result (failed, quarantined, cancelled): a sweep whose every job failed is not a full bar.
  const int ended = c.failed + c.quarantined + c.cancelled;
  auto cells = [&](double jobs) {
    if (c.total <= 0) return 0;
    return std::clamp(static_cast<int>(std::lround(width * jobs / c.total)), 0, width);
  };
  const int good = cells(c.done + running_done);
  const int bad = std::max(0, cells(c.done + running_done + ended) - good);
  std::string bar = absl::StrCat("[", std::string(good, '#'), std::string(bad, 'x'),
                                 std::string(width - good - bad, '.'), "]");
  std::string line = absl::StrFormat("%s %d/%d done, %d running", bar, c.done, c.total, c.leased);
  if (!c.running.empty()) {
    // Each job's percentage while they fit on the line, else their mean.
    if (c.running.size() <= 4) {
      std::vector<std::string> each;
      for (const RunningJobProgress& r : c.running) {
        each.push_back(absl::StrFormat("%.0f%%", 100.0 * r.fraction));
      }
      absl::StrAppend(&line, " (", absl::StrJoin(each, ", "), ")");
    } else {
      absl::StrAppendFormat(&line, " (mean %.0f%%)", 100.0 * running_done / c.running.size());
    }
  }
  absl::StrAppendFormat(&line, ", %d queued", c.queued);
  if (c.failed) absl::StrAppend(&line, ", ", c.failed, " failed");
  if (c.quarantined) absl::StrAppend(&line, ", ", c.quarantined, " quarantined");
  if (c.cancelled) absl::StrAppend(&line, ", ", c.cancelled, " cancelled");
  if (c.finished() < c.total) absl::StrAppend(&line, ", ETA ", EtaText(eta_s));
  return line;
}

void ProgressBar::Update(const ProgressCounts& c) {
  const auto now = std::chrono::steady_clock::now();
  if (!started_) {
    started_ = true;
    first_ = c;
    t0_ = now;
  } else if (!tty_ && c == last_) {
    return;
  }
  last_ = c;
  double eta = EtaFromRunningJobs(c);
  if (std::isnan(eta)) {  // no running job has progressed yet: the completion rate
    const double elapsed = std::chrono::duration<double>(now - t0_).count();
    const int progressed = c.finished() - first_.finished();
    if (progressed > 0) eta = elapsed / progressed * (c.total - c.finished());
  }
  const std::string line = Render(c, eta, 30);
  if (tty_) {
    std::fprintf(out_, "\r%s\033[K", line.c_str());
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressBar::Finish() {
  if (tty_ && started_) std::fprintf(out_, "\n");
  std::fflush(out_);
}

}  // namespace kvsweep
