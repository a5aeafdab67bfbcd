// A std::mutex that clang's thread-safety analysis can see (-Wthread-safety): members it guards
// are declared ABSL_GUARDED_BY(mu_), functions that need it held ABSL_EXCLUSIVE_LOCKS_REQUIRED,
// and a clang build of the coordinator, store and worker loop fails on an access without the
// lock (their CMakeLists add -Werror=thread-safety for clang).
//
// Not absl::Mutex: Debian's Abseil runs deadlock detection on every lock, which costs the
// scheduler's hot path. libstdc++'s std::mutex carries no annotations, hence this wrapper; it
// adds nothing at run time.
//
// Condition-variable predicates are written as loops in the locking function
// (`while (!ready_) cv_.Wait(&mu_);`) rather than lambdas: the analysis checks a lambda's body
// as a function of its own, which does not hold the lock.
#ifndef KVSWEEP_COMMON_MUTEX_H_
#define KVSWEEP_COMMON_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace kvsweep {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  // Tells the analysis the lock is held where it cannot see it (a callback the caller runs with
  // it held). Checks nothing at run time.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds `mu` for its scope; Unlock() ends that early (then the destructor does nothing).
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() {
    if (mu_ != nullptr) mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void Unlock() ABSL_UNLOCK_FUNCTION() {
    mu_->Unlock();
    mu_ = nullptr;
  }

 private:
  Mutex* mu_;
};

// std::condition_variable over a Mutex the caller holds (it is released while waiting and held
// again on return, as with std::condition_variable).
class CondVar {
 public:
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> l(mu->mu_, std::adopt_lock);
    cv_.wait(l);
    l.release();
  }
  // False once `deadline` has passed (a wake-up before it, spurious or not, returns true).
  template <typename Clock, typename Duration>
  bool WaitUntil(Mutex* mu, const std::chrono::time_point<Clock, Duration>& deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> l(mu->mu_, std::adopt_lock);
    const bool woken = cv_.wait_until(l, deadline) == std::cv_status::no_timeout;
    l.release();
    return woken;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_MUTEX_H_
