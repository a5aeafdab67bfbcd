// kvsweep: the command line for sweeps (docs/cli.md).
#include "client/cli.h"

int main(int argc, char** argv) { return kvsweep::RunKvsweep(argc, argv); }
