#include "coordinator/group_committer.h"

#include <chrono>
#include <iterator>
#include <utility>

#include "common/log.h"

namespace kvsweep {

GroupCommitter::GroupCommitter(ResultStore* store, int max_batch, ReloadFn reload)
    : store_(store), max_batch_(max_batch), reload_(std::move(reload)) {}

GroupCommitter::~GroupCommitter() { Stop(); }

void GroupCommitter::Start() {
  started_ = true;
  answerer_ = std::thread([this] { AnswerLoop(); });
  committer_ = std::thread([this] { CommitLoop(); });
}

void GroupCommitter::Stop() {
  if (!started_) return;
  started_ = false;
  {
    MutexLock q(&q_mu_);
    stopping_ = true;
  }
  q_cv_.SignalAll();
  if (committer_.joinable()) committer_.join();
  {
    MutexLock a(&a_mu_);
    a_stop_ = true;
  }
  a_cv_.SignalAll();
  if (answerer_.joinable()) answerer_.join();  // after answering everything handed to it
  const Stats s = stats();
  KV_LOG(INFO) << "scheduler: stopped after " << s.commits << " commits of " << s.mutations
               << " mutations, " << (s.commits > 0 ? s.apply_us / 1000.0 / s.commits : 0.0)
               << " ms per commit (" << commit_ms_.Summary() << ")";
}

void GroupCommitter::Enqueue(Mutation::Op op, std::function<void(Mutation&)> done,
                             bool must_succeed) {
  MutexLock q(&q_mu_);
  queue_.push_back(Pending{Mutation(std::move(op)), std::move(done), must_succeed});
  ++enqueued_;
  q_cv_.Signal();
}

void GroupCommitter::TakeQueued(std::vector<Pending>* out) {
  MutexLock q(&q_mu_);
  for (Pending& p : queue_) out->push_back(std::move(p));
  queue_.clear();
  reload_requested_ = false;
}

void GroupCommitter::RequestReload() {
  MutexLock q(&q_mu_);
  reload_requested_ = true;
  q_cv_.Signal();
}

void GroupCommitter::CommitLoop() {
  for (;;) {
    std::vector<Pending> batch;
    bool reload = false;
    int64_t reload_batch = 0;
    q_mu_.Lock();
    while (queue_.empty() && !stopping_ && !reload_requested_) q_cv_.Wait(&q_mu_);
    if (queue_.empty() && stopping_) {
      // A callback still running may queue one more mutation (a lease handed back).
      q_mu_.Unlock();
      WaitAnswered();
      q_mu_.Lock();
      if (queue_.empty()) {
        q_mu_.Unlock();
        return;
      }
    }
    if (static_cast<int>(queue_.size()) <= max_batch_) {
      batch.swap(queue_);
    } else {
      batch.assign(std::make_move_iterator(queue_.begin()),
                   std::make_move_iterator(queue_.begin() + max_batch_));
      queue_.erase(queue_.begin(), queue_.begin() + max_batch_);
    }
    reload = reload_requested_;
    q_mu_.Unlock();
    if (!batch.empty()) {
      std::vector<Mutation> muts;
      muts.reserve(batch.size());
      for (Pending& p : batch) muts.push_back(std::move(p.mutation));
      const auto apply_start = std::chrono::steady_clock::now();
      absl::Status s = store_->Apply(muts);
      const int64_t apply_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::steady_clock::now() - apply_start)
                                   .count();
      if (!s.ok()) {
        KV_LOG(ERROR) << "commit of " << muts.size() << " mutations failed: " << s;
        reload = true;
      }
      for (size_t i = 0; i < muts.size(); ++i) {
        if (!muts[i].status.ok() && batch[i].must_succeed &&
            !absl::IsInvalidArgument(muts[i].status)) {
          if (s.ok()) {
            KV_LOG(ERROR) << "store refused a scheduled mutation (" << muts[i].status
                          << "); reloading the schedule from the store";
          }
          reload = true;
        }
      }
      commit_ms_.Record(apply_us / 1000.0);
      {
        MutexLock q(&q_mu_);
        ++stats_.commits;
        stats_.mutations += static_cast<int64_t>(muts.size());
        stats_.apply_us += apply_us;
      }
      // A batch that causes a reload counts as answered only after it (below), so that
      // Flush() also waits for the reload.
      const int64_t n = static_cast<int64_t>(muts.size());
      Answer(std::move(batch), std::move(muts), reload ? 0 : n);
      if (reload) reload_batch = n;
    }
    if (reload) {
      // The callbacks update memory; let them all run on the memory they were decided on
      // before it is thrown away.
      WaitAnswered();
      std::vector<Pending> failed;
      reload_(&failed);
      std::vector<Mutation> muts;
      muts.reserve(failed.size());
      for (Pending& p : failed) {
        p.mutation.status =
            absl::UnavailableError("coordinator storage error; the schedule was reloaded, retry");
        muts.push_back(std::move(p.mutation));
      }
      const int64_t n = static_cast<int64_t>(muts.size()) + reload_batch;
      Answer(std::move(failed), std::move(muts), n);
    }
  }
}

void GroupCommitter::Answer(std::vector<Pending> batch, std::vector<Mutation> muts, int64_t count) {
  {
    MutexLock a(&a_mu_);
    answers_.push_back(AnswerBatch{std::move(batch), std::move(muts), count});
  }
  a_cv_.SignalAll();
}

void GroupCommitter::WaitAnswered() {
  MutexLock a(&a_mu_);
  while (!answers_.empty() || a_busy_) a_cv_.Wait(&a_mu_);
}

void GroupCommitter::AnswerLoop() {
  a_mu_.Lock();
  for (;;) {
    while (answers_.empty() && !a_stop_) a_cv_.Wait(&a_mu_);
    if (answers_.empty()) break;  // stopping, and everything handed over is answered
    AnswerBatch b = std::move(answers_.front());
    answers_.pop_front();
    a_busy_ = true;
    a_mu_.Unlock();
    for (size_t i = 0; i < b.pending.size(); ++i) {
      if (b.pending[i].done) b.pending[i].done(b.muts[i]);
    }
    {
      MutexLock q(&q_mu_);
      answered_ += b.count;
      flushed_cv_.SignalAll();
    }
    a_mu_.Lock();
    a_busy_ = false;
    a_cv_.SignalAll();
  }
  a_mu_.Unlock();
}

void GroupCommitter::Flush() {
  MutexLock q(&q_mu_);
  const int64_t target = enqueued_;
  while (answered_ < target) flushed_cv_.Wait(&q_mu_);
}

GroupCommitter::Stats GroupCommitter::stats() {
  MutexLock q(&q_mu_);
  return stats_;
}

}  // namespace kvsweep
