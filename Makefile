# Thin wrapper over CMake so that the README's commands are one word each.
#   make test   - install Debian deps (if missing), build, run every test
#   make demo   - build the two binaries it runs (the kvsweep CLI, whose `demo` embeds the
#                 coordinator, and kvsweep-worker), then run a small sweep end to end
#   make asan   - the test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench  - the orchestration load benchmark (docs/orchestration-bench.md)
#   make fuzz   - the fuzz targets under libFuzzer (clang-14, ASan + UBSan), FUZZ_SECONDS each
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: setup configure build test demo asan bench fuzz fuzz-smoke clean

setup:
	./deploy/setup-debian.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

configure: setup $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# The fuzz targets run a few seconds each first (their own clang build in build-fuzz/); then
# every test of the main build (the fuzz targets' seed and regression inputs included).
test: build fuzz-smoke
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Only what the demo runs: not the tests and benchmarks `build` compiles.
DEMO_TARGETS = kvsweep kvsweep-coordinator kvsweep-worker

demo: configure
	cmake --build $(BUILD) -j $(JOBS) --target $(DEMO_TARGETS)
	$(BUILD)/client/kvsweep demo

asan:
	$(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DKVSWEEP_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSWEEP_BUILD_BENCH=ON"

bench: build
	$(BUILD)/bench/kvsweep_orchestration_bench --jobs 10000 --workers 200 --sleep-ms 75 --jitter 0.5 --ramp-ms 500
	$(BUILD)/bench/kvsweep_orchestration_bench --jobs 10000 --workers 200 --sleep-ms 50
	$(BUILD)/bench/kvsweep_result_store_bench

FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 300
FUZZ_TARGETS = fuzz_method_spec fuzz_sweep_yaml fuzz_rpc fuzz_hf_tokenizer fuzz_spm_model \
               fuzz_safetensors
# Built in the same clang build, for clang's thread-safety analysis of their locks
# (kvsweep_check_thread_safety in CMakeLists.txt): a violation fails `make test` here.
TSA_TARGETS = kvsweep_coordinator kvsweep_storage kvsweep_worker

fuzz: setup
	CC=clang-14 CXX=clang++-14 cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DKVSWEEP_FUZZ=ON -DKVSWEEP_WITH_TORCH=OFF -DKVSWEEP_BUILD_TESTS=OFF \
	  -DKVSWEEP_BUILD_BENCH=OFF -DKVSWEEP_FUZZ_SECONDS=$(FUZZ_SECONDS)
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_TARGETS) $(TSA_TARGETS)
	cd $(FUZZ_BUILD) && ctest -L fuzz --output-on-failure -j $(JOBS)

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=5

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD)
