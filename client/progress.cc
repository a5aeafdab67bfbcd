#include "client/progress.h"

#include <unistd.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvsweep {

namespace {
std::string Duration(double s) {
  if (!(s >= 0) || !std::isfinite(s)) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}
}  // namespace

ProgressBar::ProgressBar(std::FILE* out) : out_(out), tty_(::isatty(::fileno(out)) != 0) {}

std::string ProgressBar::Render(const ProgressCounts& c, double eta_s, int width) {
  const int filled = c.total > 0 ? static_cast<int>(std::lround(1.0 * width * c.finished() / c.total)) : 0;
  std::string bar = absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '.'), "]");
  std::string line = absl::StrFormat("%s %d/%d done, %d running, %d queued", bar, c.done, c.total,
                                     c.leased, c.queued);
  if (c.failed) absl::StrAppend(&line, ", ", c.failed, " failed");
  if (c.quarantined) absl::StrAppend(&line, ", ", c.quarantined, " quarantined");
  if (c.cancelled) absl::StrAppend(&line, ", ", c.cancelled, " cancelled");
  if (c.finished() < c.total) absl::StrAppend(&line, ", ETA ", Duration(eta_s));
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
  const double elapsed = std::chrono::duration<double>(now - t0_).count();
  const int progressed = c.finished() - first_.finished();
  const double eta = progressed > 0 ? elapsed / progressed * (c.total - c.finished()) : NAN;
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
