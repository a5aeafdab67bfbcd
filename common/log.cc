#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace kvsweep {
namespace {

LogLevel LevelFromEnv() {
  const char* env = std::getenv("KVSWEEP_LOG_LEVEL");
  if (env == nullptr) return LogLevel::kInfo;
  if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(env, "warning") == 0) return LogLevel::kWarning;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  return LogLevel::kInfo;
}

std::atomic<int>& Threshold() {
  static std::atomic<int> level{static_cast<int>(LevelFromEnv())};
  return level;
}

std::mutex& TagMutex() {
  static std::mutex mu;
  return mu;
}
std::string& Tag() {
  static std::string tag;
  return tag;
}

const char kLevelChar[] = {'D', 'I', 'W', 'E'};

}  // namespace

void SetLogLevel(LogLevel level) { Threshold().store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(Threshold().load()); }
void SetLogTag(const std::string& tag) {
  std::lock_guard<std::mutex> lock(TagMutex());
  Tag() = tag;
}

namespace internal {

LogMessage::LogMessage(LogLevel level, const char* file, int line) : level_(level) {
  auto now = std::chrono::system_clock::now();
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() %
      1000);
  std::tm tm_buf;
  gmtime_r(&secs, &tm_buf);
  char ts[32];
  std::strftime(ts, sizeof(ts), "%H:%M:%S", &tm_buf);
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  stream_ << kLevelChar[static_cast<int>(level)] << ' ' << ts << '.' << millis / 100
          << (millis / 10) % 10 << millis % 10 << ' ';
  {
    std::lock_guard<std::mutex> lock(TagMutex());
    if (!Tag().empty()) stream_ << '[' << Tag() << "] ";
  }
  stream_ << base << ':' << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  const std::string s = stream_.str();
  // One write(2) per line so lines from threads/processes don't interleave mid-line.
  ssize_t unused = ::write(STDERR_FILENO, s.data(), s.size());
  (void)unused;
}

}  // namespace internal
}  // namespace kvsweep
