// Minimal leveled logging to stderr (Debian's Abseil has no absl/log). Logs never go to stdout:
// stdout is reserved for machine-readable output (e.g. `kvsweep-worker eval --format json`).
//
//   KV_LOG(INFO) << "loaded " << n << " tensors";
//
// The threshold comes from KVSWEEP_LOG_LEVEL (debug|info|warning|error; default info) or
// SetLogLevel(). Lines are dated (UTC):
//
//   I 2026-12-02T07:20:26.678Z [worker-3] model.cc:138] loaded llama model ...
//
// or, with KVSWEEP_LOG_FORMAT=json (or SetLogFormat), one JSON object per line for log
// collectors: {"ts":"2026-12-02T07:20:26.678Z","level":"info","tag":"worker-3",
// "src":"model.cc:138","msg":"loaded llama model ..."} ("tag" only when set).
#ifndef KVSWEEP_COMMON_LOG_H_
#define KVSWEEP_COMMON_LOG_H_

#include <cstdint>
#include <sstream>
#include <string>

namespace kvsweep {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
enum class LogFormat { kText = 0, kJson = 1 };
void SetLogFormat(LogFormat format);
LogFormat GetLogFormat();
// One formatted line (with its newline), as the logger writes it; exposed for tests.
std::string FormatLogLine(LogFormat format, LogLevel level, int64_t unix_ms, const std::string& tag,
                          const char* file, int line, const std::string& message);
// Sets a short tag printed on every line (e.g. "worker-3"), to tell processes apart in tests.
void SetLogTag(const std::string& tag);

namespace internal {
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  const char* file_;
  int line_;
  int64_t unix_ms_;
  std::ostringstream stream_;
};
// Swallows the stream when the level is below threshold.
struct LogVoidify {
  void operator&(std::ostream&) {}
};
}  // namespace internal
}  // namespace kvsweep

#define KV_LOG_LEVEL_DEBUG ::kvsweep::LogLevel::kDebug
#define KV_LOG_LEVEL_INFO ::kvsweep::LogLevel::kInfo
#define KV_LOG_LEVEL_WARNING ::kvsweep::LogLevel::kWarning
#define KV_LOG_LEVEL_ERROR ::kvsweep::LogLevel::kError

#define KV_LOG(severity)                               \
  (KV_LOG_LEVEL_##severity < ::kvsweep::GetLogLevel()) \
      ? (void)0                                        \
      : ::kvsweep::internal::LogVoidify() &            \
            ::kvsweep::internal::LogMessage(KV_LOG_LEVEL_##severity, __FILE__, __LINE__).stream()

#endif  // KVSWEEP_COMMON_LOG_H_
