#include "coordinator/lease_reaper.h"

#include <chrono>
#include <utility>

namespace kvsweep {

LeaseReaper::LeaseReaper(int period_ms, std::function<void()> expire)
    : period_ms_(period_ms), expire_(std::move(expire)) {}

LeaseReaper::~LeaseReaper() { Stop(); }

void LeaseReaper::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void LeaseReaper::Stop() {
  {
    MutexLock l(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  if (thread_.joinable()) thread_.join();
}

void LeaseReaper::Loop() {
  mu_.Lock();
  while (!stop_) {
    cv_.WaitUntil(&mu_, std::chrono::steady_clock::now() + std::chrono::milliseconds(period_ms_));
    if (stop_) break;
    mu_.Unlock();
    expire_();
    mu_.Lock();
  }
  mu_.Unlock();
}

}  // namespace kvsweep
