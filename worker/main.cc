// kvsweep-worker. `eval` runs one job from flags (the engine's contract); the coordinator-pull
// loop lands with the orchestration work.
#include <cstdio>
#include <cstring>

#include "worker/engine/eval_command.h"
#include "worker/engine/generate.h"

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "eval") == 0) {
    return kvsweep::engine::RunEvalCommand(argc - 1, argv + 1);
  }
  if (argc >= 2 && std::strcmp(argv[1], "generate") == 0) {
    return kvsweep::engine::RunGenerateCommand(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "usage: kvsweep-worker eval --model DIR --task T --data FILE [--method SPEC] ...\n");
  return 2;
}
