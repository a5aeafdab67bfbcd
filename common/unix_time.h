// Wall-clock time in milliseconds since the Unix epoch: journal lines, log throttling and
// waits that need no monotonic guarantee (the coordinator's lease clock is Clock, in
// coordinator/scheduler.h, which never steps).
#ifndef KVSWEEP_COMMON_UNIX_TIME_H_
#define KVSWEEP_COMMON_UNIX_TIME_H_

#include <chrono>
#include <cstdint>

namespace kvsweep {

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_UNIX_TIME_H_
