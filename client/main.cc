// kvsweep: the command line for sweeps (docs/cli.md).
#include "client/cli.h"
#include "rpc/rpc_util.h"

int main(int argc, char** argv) {
  kvsweep::InitRpcProcess();
  kvsweep::QuietGrpcLogsUnlessAsked();  // errors are the one line RunKvsweep prints
  return kvsweep::RunKvsweep(argc, argv);
}
