// `kvsweep-worker eval --model DIR --task T --data FILE --method SPEC ... --format json`:
// runs one job from flags and prints exactly one JSON object on stdout (docs/architecture.md,
// "The eval contract"). The worker binary's command (the libtorch engine, worker/engine, does
// the math).
// Logs and progress go to stderr. Exit status: 0 ok, 2 bad input (one-line reason on stderr),
// 1 internal error, 3 out of memory.
#ifndef KVSWEEP_WORKER_EVAL_COMMAND_H_
#define KVSWEEP_WORKER_EVAL_COMMAND_H_

namespace kvsweep {

// argv[0] is the subcommand name ("eval").
int RunEvalCommand(int argc, char** argv);

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_EVAL_COMMAND_H_
