#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

#include "nlohmann/json.hpp"

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

LogFormat FormatFromEnv() {
  const char* env = std::getenv("KVSWEEP_LOG_FORMAT");
  return env != nullptr && std::strcmp(env, "json") == 0 ? LogFormat::kJson : LogFormat::kText;
}

std::atomic<int>& Format() {
  static std::atomic<int> format{static_cast<int>(FormatFromEnv())};
  return format;
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
const char* const kLevelName[] = {"debug", "info", "warning", "error"};

// 2026-12-02T07:20:26.678Z
std::string Timestamp(int64_t unix_ms) {
  const std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm_buf;
  gmtime_r(&secs, &tm_buf);
  char ts[32];
  std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm_buf);
  char out[48];
  std::snprintf(out, sizeof(out), "%s.%03dZ", ts, static_cast<int>(unix_ms % 1000));
  return out;
}

}  // namespace

void SetLogLevel(LogLevel level) { Threshold().store(static_cast<int>(level)); }
void SetLogFormat(LogFormat format) { Format().store(static_cast<int>(format)); }
LogFormat GetLogFormat() { return static_cast<LogFormat>(Format().load()); }

std::string FormatLogLine(LogFormat format, LogLevel level, int64_t unix_ms, const std::string& tag,
                          const char* file, int line, const std::string& message) {
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  const std::string src = std::string(base) + ":" + std::to_string(line);
  if (format == LogFormat::kJson) {
    nlohmann::json j = {{"ts", Timestamp(unix_ms)}, {"level", kLevelName[static_cast<int>(level)]}};
    if (!tag.empty()) j["tag"] = tag;
    j["src"] = src;
    j["msg"] = message;
    // Invalid UTF-8 in a message (a path, a file's bytes) becomes U+FFFD, never a throw.
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  std::string out;
  out += kLevelChar[static_cast<int>(level)];
  out += ' ';
  out += Timestamp(unix_ms);
  out += ' ';
  if (!tag.empty()) out += "[" + tag + "] ";
  out += src + "] " + message + "\n";
  return out;
}
LogLevel GetLogLevel() { return static_cast<LogLevel>(Threshold().load()); }
void SetLogTag(const std::string& tag) {
  std::lock_guard<std::mutex> lock(TagMutex());
  Tag() = tag;
}

namespace internal {

LogMessage::LogMessage(LogLevel level, const char* file, int line)
    : level_(level),
      file_(file),
      line_(line),
      unix_ms_(std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count()) {}

LogMessage::~LogMessage() {
  std::string tag;
  {
    std::lock_guard<std::mutex> lock(TagMutex());
    tag = Tag();
  }
  const std::string s =
      FormatLogLine(GetLogFormat(), level_, unix_ms_, tag, file_, line_, stream_.str());
  // One write(2) per line so lines from threads/processes don't interleave mid-line.
  ssize_t unused = ::write(STDERR_FILENO, s.data(), s.size());
  (void)unused;
}

}  // namespace internal
}  // namespace kvsweep
