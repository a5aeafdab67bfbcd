// Sweep submissions prepared apart from the RPC that asked for them.
//
// Expanding a sweep hashes its input files: seconds per GiB the first time a model is seen. That
// work must not race the client's deadline, so SubmitSweep starts a submission here, waits a
// bounded time for it and, when it is not finished, answers "pending" with the submission's id,
// which the client follows with GetSubmission. The preparation goes on whether or not anyone
// waits; a client that gives up and submits again joins the submission still running (same
// caller, same request) instead of hashing the same files a second time.
//
// Each running submission has its own thread and HashMonitor (progress, cancellation). Finished
// submissions are kept for a while so that a client whose answer was lost can ask again.
#ifndef KVSWEEP_COORDINATOR_SUBMISSIONS_H_
#define KVSWEEP_COORDINATOR_SUBMISSIONS_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/fingerprint.h"
#include "common/mutex.h"
#include "kvsweep/v1/coordinator.pb.h"

namespace kvsweep {

// What a submission runs: expands the request, enqueues its jobs (not for a dry run) and fills
// the final answer; `actor` is for the audit log. Runs on the submission's thread with `monitor`
// installed for its hashing; returns kCancelled soon after monitor->cancelled is set.
using PrepareFn = std::function<absl::StatusOr<v1::SubmitSweepResponse>(
    const v1::SubmitSweepRequest& request, const std::string& actor, HashMonitor* monitor)>;

struct SubmissionsOptions {
  int max_running = 4;    // more at once: kResourceExhausted
  int max_finished = 64;  // finished submissions kept (oldest dropped first) ...
  std::chrono::milliseconds keep_finished{std::chrono::minutes(10)};  // ... for this long
};

class Submissions {
 public:
  Submissions(PrepareFn prepare, SubmissionsOptions options = {});
  ~Submissions();  // Shutdown()
  Submissions(const Submissions&) = delete;
  Submissions& operator=(const Submissions&) = delete;

  // Starts preparing `request` for `owner` (a credential: Caller::principal), or joins the
  // same owner's identical submission that is still running; returns the submission's id (128
  // random bits, hex). `actor` (Caller::name) goes to PrepareFn. kResourceExhausted at
  // max_running, kUnavailable after Shutdown.
  absl::StatusOr<std::string> Start(const v1::SubmitSweepRequest& request, const std::string& owner,
                                    const std::string& actor);

  // Waits until the submission has finished or `deadline` passes (or Shutdown), then returns
  // its final answer or error, or an answer with pending set and the progress so far. Every
  // answer names the submission. kNotFound for an id `owner` did not start (or one dropped).
  absl::StatusOr<v1::SubmitSweepResponse> Wait(const std::string& id, const std::string& owner,
                                               std::chrono::steady_clock::time_point deadline);

  // Cancels the hashing of every running submission, waits for their threads to end and
  // refuses new ones. Waiters return pending answers.
  void Shutdown();

  int running() const;

 private:
  struct Entry {
    std::string owner;
    std::string actor;
    std::string key;  // owner + request: what an identical submission matches
    HashMonitor monitor;
    std::chrono::steady_clock::time_point started;
    std::chrono::steady_clock::time_point finished_at;
    bool finished = false;  // guarded by the Submissions' mu_
    absl::StatusOr<v1::SubmitSweepResponse> answer = v1::SubmitSweepResponse();  // once finished
    std::thread thread;
  };

  void Run(std::shared_ptr<Entry> entry, v1::SubmitSweepRequest request);
  // Joins the threads of finished entries and drops those past keep_finished/max_finished.
  // Called with mu_ held; returns the threads to join after unlocking.
  std::vector<std::thread> ReapLocked(std::chrono::steady_clock::time_point now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const PrepareFn prepare_;
  const SubmissionsOptions options_;
  mutable Mutex mu_;
  CondVar cv_;  // an entry finished, or shutdown
  std::map<std::string, std::shared_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);  // by id
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_SUBMISSIONS_H_
