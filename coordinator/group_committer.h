// Group commit for the scheduler: mutations are queued by the threads that decided them and a
// single committer thread applies whatever has accumulated in ONE transaction (one fsync for
// many leases and results). A mutation's callback runs only after its transaction committed, so
// everything acknowledged is durable; the callbacks run on an answer thread, in commit order,
// while the committer starts the next transaction.
//
// Memory (the Scheduler's LeaseSchedule) is always "DB + the queued mutations". Should the store
// ever disagree (an I/O error, a mutation marked must_succeed refused), the committer calls the
// owner's reload function, which takes what is queued (TakeQueued) and reloads memory from the
// store; those mutations are answered kUnavailable.
//
// Threads: the committer and the answerer. Locks: q_mu_ (the queue and the counters) and a_mu_
// (batches handed to the answerer); neither is held while the store applies a batch or a
// callback runs. Callers that enqueue under a lock of their own (the Scheduler's mutex) take it
// before q_mu_.
#ifndef KVSWEEP_COORDINATOR_GROUP_COMMITTER_H_
#define KVSWEEP_COORDINATOR_GROUP_COMMITTER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common/latency_histogram.h"
#include "common/mutex.h"
#include "storage/result_store.h"

namespace kvsweep {

class GroupCommitter {
 public:
  struct Pending {
    Mutation mutation;
    std::function<void(Mutation&)> done;  // may be empty
    bool must_succeed = false;            // memory assumed success: a refusal means memory is wrong
  };
  // Runs on the committer thread once memory may disagree with the store: must call
  // TakeQueued(failed) and reload memory, with no decision (Enqueue) in between, and
  // RequestReload() if the reload failed.
  using ReloadFn = std::function<void(std::vector<Pending>* failed)>;

  struct Stats {
    int64_t commits = 0;    // transactions
    int64_t mutations = 0;  // mutations in them
    int64_t apply_us = 0;   // time spent applying them (SQL + fsync)
  };

  // `store` must outlive the committer; at most `max_batch` mutations per transaction.
  GroupCommitter(ResultStore* store, int max_batch, ReloadFn reload);
  ~GroupCommitter();
  GroupCommitter(const GroupCommitter&) = delete;
  GroupCommitter& operator=(const GroupCommitter&) = delete;

  // Starts the committer and answer threads.
  void Start();
  // Commits what is queued, answers it, and stops the threads. Idempotent.
  void Stop();

  // Queues one mutation; `done` (may be empty) runs on the answer thread after its commit, with
  // mutation.status set.
  void Enqueue(Mutation::Op op, std::function<void(Mutation&)> done, bool must_succeed)
      ABSL_LOCKS_EXCLUDED(q_mu_);
  // Moves everything queued to *out and clears a reload request (the reload function).
  void TakeQueued(std::vector<Pending>* out) ABSL_LOCKS_EXCLUDED(q_mu_);
  // Makes the committer reload memory before its next batch.
  void RequestReload() ABSL_LOCKS_EXCLUDED(q_mu_);
  // Blocks until every mutation queued so far is committed and answered.
  void Flush() ABSL_LOCKS_EXCLUDED(q_mu_);

  Stats stats() ABSL_LOCKS_EXCLUDED(q_mu_);

 private:
  struct AnswerBatch {
    std::vector<Pending> pending;
    std::vector<Mutation> muts;  // muts[i] is pending[i]'s mutation, as applied
    int64_t count = 0;           // added to answered_ once the callbacks have run
  };

  void CommitLoop() ABSL_LOCKS_EXCLUDED(q_mu_, a_mu_);
  // Runs the callbacks of committed batches, in commit order, off the committer thread (so the
  // next transaction starts while this one's callers are answered).
  void AnswerLoop() ABSL_LOCKS_EXCLUDED(q_mu_, a_mu_);
  // Hands a committed (or failed) batch to AnswerLoop, which then counts `count` mutations
  // as answered (for Flush).
  void Answer(std::vector<Pending> batch, std::vector<Mutation> muts, int64_t count)
      ABSL_LOCKS_EXCLUDED(a_mu_);
  // Blocks until AnswerLoop has run every callback handed to it.
  void WaitAnswered() ABSL_LOCKS_EXCLUDED(a_mu_);

  ResultStore* const store_;
  const int max_batch_;
  const ReloadFn reload_;

  Mutex q_mu_;
  CondVar q_cv_;        // queue_ non-empty, stopping_ or reload_requested_
  CondVar flushed_cv_;  // answered_ grew
  std::vector<Pending> queue_ ABSL_GUARDED_BY(q_mu_);
  bool reload_requested_ ABSL_GUARDED_BY(q_mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(q_mu_) = false;
  int64_t enqueued_ ABSL_GUARDED_BY(q_mu_) = 0;
  int64_t answered_ ABSL_GUARDED_BY(q_mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(q_mu_);

  Mutex a_mu_;
  CondVar a_cv_;  // answers_ grew, a batch was answered, or a_stop_
  std::deque<AnswerBatch> answers_ ABSL_GUARDED_BY(a_mu_);
  bool a_busy_ ABSL_GUARDED_BY(a_mu_) = false;  // AnswerLoop is running a batch's callbacks
  bool a_stop_ ABSL_GUARDED_BY(a_mu_) = false;

  // Start/Stop only (the owner's thread).
  bool started_ = false;
  std::thread committer_, answerer_;
  LatencyHistogram commit_ms_;  // wall time of each transaction (SQL + fsync); lock-free
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_GROUP_COMMITTER_H_
