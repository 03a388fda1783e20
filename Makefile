# kvtier: two commands.
#   make run    install what is missing, build, run the main job
#   make test   install what is missing, build, run every test
# Also: make build, make demo, make bench, make sanitize, make fuzz, make format, make clean.

BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CTEST_FLAGS ?=

SANITIZE ?= address,undefined
SANITIZE_DIR ?= build-sanitize
FUZZ_DIR ?= build-fuzz
FUZZ_SECONDS ?= 60

.PHONY: all deps configure build run demo test bench sanitize fuzz format clean

all: build

deps:
	@./scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# The main job on the embedded default.
run: build
	@./scripts/run-main.sh $(BUILD_DIR)

# The main job's workload through kvtierd, then exit.
demo: build
	@./scripts/run-main.sh $(BUILD_DIR) --exit-after-demo

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_FLAGS)

bench: build
	@$(BUILD_DIR)/src/cli/kvtier bench dram

# Every test again in a separate build with AddressSanitizer, LeakSanitizer
# and UndefinedBehaviorSanitizer. Not part of make test: the build alone takes
# about 40 minutes on 2 cores.
sanitize: deps
	@cmake -S . -B $(SANITIZE_DIR) -DKVTIER_SANITIZE=$(SANITIZE) -DKVTIER_CUDA=OFF \
	  -DKVTIER_PYTHON=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(SANITIZE_DIR) -j $(JOBS)
	@cd $(SANITIZE_DIR) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS) $(CTEST_FLAGS)

# Coverage-guided fuzzing of the decoders of outside bytes (fuzz/): clang,
# libFuzzer, AddressSanitizer and UBSan, FUZZ_SECONDS per target. make test
# runs the same targets on seeded damage instead (ctest -L fuzz).
fuzz:
	@./scripts/install-deps.sh --fuzz
	@cmake -S . -B $(FUZZ_DIR) -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
	  -DKVTIER_FUZZ=ON -DKVTIER_SANITIZE=address,undefined -DKVTIER_CUDA=OFF \
	  -DKVTIER_PYTHON=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(FUZZ_DIR) -j $(JOBS) --target fuzz_all
	@./scripts/run-fuzz.sh $(FUZZ_DIR) $(FUZZ_SECONDS)

format:
	@git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format -i

clean:
	@rm -rf $(BUILD_DIR) $(SANITIZE_DIR) $(FUZZ_DIR)
