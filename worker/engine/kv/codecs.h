// Factories of the codec families; the registry (registry.cc) is the only caller.
#ifndef KVSWEEP_WORKER_ENGINE_KV_CODECS_H_
#define KVSWEEP_WORKER_ENGINE_KV_CODECS_H_

#include <memory>

#include "worker/engine/kv/kv_codec.h"

namespace kvsweep::engine {

std::unique_ptr<KvCodec> NewNoneCodec(const MethodSpec& spec);
std::unique_ptr<KvCodec> NewQuantCodec(const MethodSpec& spec);
std::unique_ptr<KvCodec> NewRankCodec(const MethodSpec& spec);
std::unique_ptr<KvCodec> NewHybridCodec(const MethodSpec& spec);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_KV_CODECS_H_
