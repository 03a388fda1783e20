# kvtier: two commands.
#   make run    install what is missing, build, run the main job
#   make test   install what is missing, build, run every test
# Also: make build, make demo, make bench, make format, make clean.

BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CTEST_FLAGS ?=

.PHONY: all deps configure build run demo test bench format clean

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

format:
	@git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format -i

clean:
	@rm -rf $(BUILD_DIR)
