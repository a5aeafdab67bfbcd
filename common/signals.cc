#include "common/signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvsweep {
namespace {

int g_pipe[2] = {-1, -1};
std::atomic<bool> g_installed{false};

void OnSignal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  ssize_t unused = ::write(g_pipe[1], &b, 1);
  (void)unused;
  errno = saved;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShutdownSignals>> ShutdownSignals::Install(
    std::function<void(int sig)> on_signal, std::vector<int> signals) {
  if (g_installed.exchange(true)) {
    return absl::FailedPreconditionError("shutdown signal handlers are already installed");
  }
  if (::pipe2(g_pipe, O_CLOEXEC) != 0) {
    g_installed = false;
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  std::unique_ptr<ShutdownSignals> s(new ShutdownSignals());
  s->on_signal_ = std::move(on_signal);
  s->signals_ = std::move(signals);
  s->reader_ = std::thread([p = s.get()] {
    for (;;) {
      unsigned char b = 0;
      ssize_t n = ::read(g_pipe[0], &b, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || b == 0) return;  // 0: the destructor's stop byte
      p->on_signal_(b);
    }
  });
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : s->signals_) ::sigaction(sig, &sa, nullptr);
  // Unblock them in this thread in case an earlier version of main blocked them.
  sigset_t sigs;
  sigemptyset(&sigs);
  for (int sig : s->signals_) sigaddset(&sigs, sig);
  pthread_sigmask(SIG_UNBLOCK, &sigs, nullptr);
  return s;
}

ShutdownSignals::~ShutdownSignals() {
  for (int sig : signals_) ::signal(sig, SIG_DFL);
  const unsigned char stop = 0;
  ssize_t unused = ::write(g_pipe[1], &stop, 1);
  (void)unused;
  if (reader_.joinable()) reader_.join();
  ::close(g_pipe[0]);
  ::close(g_pipe[1]);
  g_pipe[0] = g_pipe[1] = -1;
  g_installed = false;
}

}  // namespace kvsweep
