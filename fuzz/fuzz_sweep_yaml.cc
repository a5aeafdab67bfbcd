// The sweep YAML parser and expander: any text gives a sweep or a one-line error, within the
// job limit. Paths resolve under an empty directory, so nothing outside it is read.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "coordinator/sweep_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string base = [] {
    char tmpl[] = "/tmp/kvsweep_fuzz_yaml_XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    return std::string(d == nullptr ? "/nonexistent" : d);
  }();
  kvsweep::ExpandOptions o;
  o.base_dir = base;
  o.max_jobs = 2000;
  (void)kvsweep::ExpandSweep(std::string(reinterpret_cast<const char*>(data), size), o);
  return 0;
}
