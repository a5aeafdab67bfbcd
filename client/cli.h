// The `kvsweep` command line (docs/cli.md): submit, status, watch, cancel, retry, table, plot,
// query, export, demo. Errors print one line "kvsweep: <problem>" to stderr.
//
// Exit status: 0 success; 1 an error (bad input, the coordinator refused, unreachable);
// 2 bad usage; 3 `watch` saw the sweep finish with failed, quarantined or cancelled jobs.
#ifndef KVSWEEP_CLIENT_CLI_H_
#define KVSWEEP_CLIENT_CLI_H_

#include <string>

#include "rpc/rpc_util.h"

namespace kvsweep {

int RunKvsweep(int argc, char** argv);

struct DemoOptions {
  int workers = 3;
  std::string evaluator = "engine";  // engine | fake
  std::string worker_bin;            // "" = next to this binary, then the build tree, then PATH
  std::string coordinator_bin;       // likewise
  std::string keep_dir;              // "" = a temporary directory, removed afterwards
  int limit = 20;                    // LAMBADA documents per job
  int fake_sleep_ms = 300;
  int timeout_s = 900;
};
// Starts a kvsweep-coordinator process on a temporary SQLite file and `workers` local worker
// processes, submits a small sweep on the assets' ref-llama over gRPC, follows it, prints the
// tables.
int RunDemo(const DemoOptions& options);

}  // namespace kvsweep

#endif  // KVSWEEP_CLIENT_CLI_H_
