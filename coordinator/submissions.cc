#include "coordinator/submissions.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "common/log.h"
#include "coordinator/lease_secret.h"

namespace kvsweep {
namespace {

std::string RequestKey(const v1::SubmitSweepRequest& r, const std::string& owner) {
  // Length-prefixed fields: no two different requests share a key.
  std::string k;
  for (const std::string* f : {&owner, &r.sweep_yaml(), &r.base_dir(), &r.source_name()}) {
    absl::StrAppend(&k, f->size(), ":", *f, ";");
  }
  absl::StrAppend(&k, r.dry_run() ? "dry" : "real");
  return Sha256Hex(k);
}

}  // namespace

Submissions::Submissions(PrepareFn prepare, SubmissionsOptions options)
    : prepare_(std::move(prepare)), options_(options) {}

Submissions::~Submissions() { Shutdown(); }

int Submissions::running() const {
  MutexLock lock(&mu_);
  return running_;
}

std::vector<std::thread> Submissions::ReapLocked(std::chrono::steady_clock::time_point now) {
  std::vector<std::thread> done;
  std::vector<std::pair<std::chrono::steady_clock::time_point, std::string>> finished;
  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& e = *it->second;
    if (e.finished && e.thread.joinable()) done.push_back(std::move(e.thread));
    if (e.finished && now - e.finished_at > options_.keep_finished) {
      it = entries_.erase(it);
      continue;
    }
    if (e.finished) finished.emplace_back(e.finished_at, it->first);
    ++it;
  }
  if (static_cast<int>(finished.size()) > options_.max_finished) {
    std::sort(finished.begin(), finished.end());
    for (size_t i = 0; i + options_.max_finished < finished.size(); ++i) {
      entries_.erase(finished[i].second);
    }
  }
  return done;
}

absl::StatusOr<std::string> Submissions::Start(const v1::SubmitSweepRequest& request,
                                               const std::string& owner, const std::string& actor) {
  const std::string key = RequestKey(request, owner);
  std::vector<std::thread> to_join;
  absl::StatusOr<std::string> id;
  {
    MutexLock lock(&mu_);
    if (shutdown_) return absl::UnavailableError("coordinator shutting down");
    to_join = ReapLocked(std::chrono::steady_clock::now());
    for (const auto& [eid, e] : entries_) {
      if (!e->finished && e->key == key) {
        id = eid;
        break;
      }
    }
    if (!id.ok()) {
      if (running_ >= options_.max_running) {
        id = absl::ResourceExhaustedError(
            absl::StrCat(running_,
                         " submissions are being prepared (their input files hashed); "
                         "submit again once one of them has finished"));
      } else {
        auto e = std::make_shared<Entry>();
        e->owner = owner;
        e->actor = actor;
        e->key = key;
        e->started = std::chrono::steady_clock::now();
        // 128 random bits: another caller cannot guess it (and Wait checks the caller too).
        const std::string new_id = NewLeaseSecret();
        entries_[new_id] = e;
        ++running_;
        e->thread = std::thread(&Submissions::Run, this, e, request);
        id = new_id;
      }
    }
  }
  for (std::thread& t : to_join) t.join();
  return id;
}

void Submissions::Run(std::shared_ptr<Entry> entry, v1::SubmitSweepRequest request) {
  absl::StatusOr<v1::SubmitSweepResponse> answer;
  {
    ScopedHashMonitor scoped(&entry->monitor);
    answer = prepare_(request, entry->actor, &entry->monitor);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - entry->started).count();
  if (seconds >= 1.0) {
    KV_LOG(INFO) << "submission of "
                 << (request.source_name().empty() ? "a sweep" : request.source_name())
                 << " prepared in " << seconds << " s ("
                 << entry->monitor.bytes_hashed.load() / double(1 << 30)
                 << " GiB hashed): " << (answer.ok() ? "ok" : answer.status().ToString());
  }
  MutexLock lock(&mu_);
  entry->answer = std::move(answer);
  entry->finished = true;
  entry->finished_at = std::chrono::steady_clock::now();
  --running_;
  cv_.SignalAll();
}

absl::StatusOr<v1::SubmitSweepResponse> Submissions::Wait(
    const std::string& id, const std::string& owner,
    std::chrono::steady_clock::time_point deadline) {
  MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second->owner != owner) {
    return absl::NotFoundError(absl::StrCat(
        "submission '", id.substr(0, 64), "' is unknown to this coordinator (answered over ",
        std::chrono::duration_cast<std::chrono::minutes>(options_.keep_finished).count(),
        " minutes ago, started by another caller, or before a restart): submit the sweep "
        "again; the input hashes computed so far are kept"));
  }
  std::shared_ptr<Entry> e = it->second;
  while (!e->finished && !shutdown_ && cv_.WaitUntil(&mu_, deadline)) {
  }
  if (e->finished) {
    if (!e->answer.ok()) return e->answer.status();
    v1::SubmitSweepResponse r = *e->answer;
    r.set_submission(id);
    return r;
  }
  v1::SubmitSweepResponse r;
  r.set_pending(true);
  r.set_submission(id);
  v1::SubmitProgress* p = r.mutable_progress();
  p->set_bytes_hashed(e->monitor.bytes_hashed.load());
  const HashMonitor::Current c = e->monitor.current();
  p->set_file(c.path);
  p->set_file_bytes(c.size);
  p->set_file_bytes_hashed(c.hashed);
  p->set_elapsed_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - e->started)
                        .count());
  return r;
}

void Submissions::Shutdown() {
  std::vector<std::thread> threads;
  {
    MutexLock lock(&mu_);
    shutdown_ = true;
    for (auto& [id, e] : entries_) {
      e->monitor.cancelled.store(true);
      if (e->thread.joinable()) threads.push_back(std::move(e->thread));
    }
    cv_.SignalAll();
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace kvsweep
