#include "worker/fault_injection.h"

#include <chrono>
#include <cstdlib>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/unix_time.h"

namespace kvsweep {

absl::Status ParseFault(const std::string& text, WorkerFaults* f) {
  auto ms = [&](absl::string_view v, int* out) -> absl::Status {
    if (!absl::SimpleAtoi(v, out) || *out < 0) {
      return absl::InvalidArgumentError(absl::StrCat("--fault ", text, ": bad milliseconds"));
    }
    return absl::OkStatus();
  };
  if (absl::StartsWith(text, "crash-on-job-substring:")) {
    f->crash_on_substring = text.substr(std::string("crash-on-job-substring:").size());
    if (f->crash_on_substring.empty()) {
      return absl::InvalidArgumentError("--fault crash-on-job-substring: needs a substring");
    }
    return absl::OkStatus();
  }
  if (text == "hang") {
    f->hang = true;
    return absl::OkStatus();
  }
  if (absl::StartsWith(text, "pause-before-complete:")) {
    return ms(absl::string_view(text).substr(22), &f->pause_before_complete_ms);
  }
  if (absl::StartsWith(text, "delay-job:")) {
    return ms(absl::string_view(text).substr(10), &f->delay_job_ms);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--fault: unknown fault '", text,
      "' (known: crash-on-job-substring:XYZ, hang, pause-before-complete:MS, delay-job:MS)"));
}

FaultInjector::FaultInjector(const WorkerFaults& faults, std::string worker_id, JournalFn journal)
    : faults_(faults), worker_id_(std::move(worker_id)), journal_(std::move(journal)) {}

void FaultInjector::OnJobStart(const std::string& job_id, int64_t fence,
                               const std::string& spec_json) const {
  if (!faults_.crash_on_substring.empty() &&
      absl::StrContains(spec_json, faults_.crash_on_substring)) {
    journal_("crash", job_id, fence);
    KV_LOG(ERROR) << "worker " << worker_id_ << ": fault injection: crashing on job "
                  << job_id.substr(0, 12);
    std::abort();
  }
  if (faults_.hang) {
    journal_("hang", job_id, fence);
    KV_LOG(ERROR) << "worker " << worker_id_ << ": fault injection: hanging";
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
}

void FaultInjector::BeforeEvaluate(const std::function<bool()>& keep_going) const {
  if (faults_.delay_job_ms <= 0) return;
  const int64_t until = NowMs() + faults_.delay_job_ms;
  while (NowMs() < until && keep_going()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void FaultInjector::PauseBeforeComplete(const std::string& job_id, int64_t fence) const {
  journal_("pause", job_id, fence);
  std::this_thread::sleep_for(std::chrono::milliseconds(faults_.pause_before_complete_ms));
}

}  // namespace kvsweep
