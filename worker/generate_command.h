// `kvsweep-worker generate --model M [--tokenizer T] --prompt TEXT [--max-new-tokens N]
// [--method SPEC] [--dtype D] [--device D]`: greedy continuation of a prompt, printed on stdout
// (engine::GreedyGenerate does the math). argv[0] = "generate". Exit status: 0 ok, 2 bad input
// (one line `error: ...` on stderr), 1 internal error.
#ifndef KVSWEEP_WORKER_GENERATE_COMMAND_H_
#define KVSWEEP_WORKER_GENERATE_COMMAND_H_

namespace kvsweep {

int RunGenerateCommand(int argc, char** argv);

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_GENERATE_COMMAND_H_
