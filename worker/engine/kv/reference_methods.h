// The quantized methods the transformers reference fixtures cover
// (tools/reference/make_reference.py QUANT_METHODS); shared by the reference tests.
#ifndef KVSWEEP_WORKER_ENGINE_KV_REFERENCE_METHODS_H_
#define KVSWEEP_WORKER_ENGINE_KV_REFERENCE_METHODS_H_

namespace kvsweep::engine {

inline constexpr const char* kReferenceMethods[] = {
    "quant:bits=8,group=64",          "quant:bits=4,group=64", "quant:bits=3,group=64",
    "quant:bits=2,group=64",          "quant:bits=4,group=32", "quant:bits=2,group=32,target=k",
    "quant:bits=2,group=32,target=v",
};

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_KV_REFERENCE_METHODS_H_
