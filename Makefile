# modalign front door. On a fresh Debian machine, as root:
#   make demo   # install missing packages, build, synthesise data, short alignment fine-tune
#   make test   # install missing packages, build, run the whole test suite
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
PYTHON ?= /usr/bin/python3

# Debian packages the project needs (build, tests, benchmark peer and plots).
PACKAGES := cmake make g++ pkg-config ccache libtorch-dev libopenblas0-openmp libgloo-dev \
  libyaml-cpp-dev libspdlog-dev libfmt-dev libgtest-dev nlohmann-json3-dev libsentencepiece-dev \
  libstb-dev libcli11-dev libpcre2-dev libutf8proc-dev python3-torch python3-matplotlib clang libclang-rt-14-dev

.PHONY: all deps configure build test demo bench fuzz test-sanitize clean
all: build

deps:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all $(words $(PACKAGES)) packages present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing; \
	else echo "deps: missing packages; run as root:"; echo "  apt-get install -y$$missing"; exit 1; fi

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

configure: $(BUILD_DIR)/CMakeCache.txt

build: deps configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

# The demo: the seeing study's stage 2 from its stage-1 model (bench/seeing/stage1, a model that sees):
# synthesise the hint-heavy data, evaluate the stage-1 model, fine-tune it with CE only and with the loss of
# configs/demo.yaml side by side on CPU, print the three evaluations (aligned / conflict / no-hint splits,
# hint rate, accuracy per question type), draw the curves.
DEMO_DIR ?= demo
demo: build
	bash tools/demo.sh $(BUILD_DIR) $(DEMO_DIR) $(PYTHON)

# Benchmarks: modalign vs an equivalent PyTorch-Python step (demo and small presets), the GEMM limit and
# the data loader; prints the table and writes build/bench/compare.md (copied into bench/README.md by hand).
bench: build
	cmake --build $(BUILD_DIR) --target step_bench -j $(JOBS)
	@test -f $(DEMO_DIR)/data/train.json || $(BUILD_DIR)/modalign synth --out $(DEMO_DIR)/data --train 2000 --eval 100
	$(PYTHON) bench/compare.py --build $(BUILD_DIR)

# libFuzzer (clang, with ASan + UBSan) on the safetensors reader, the config loader, the LLaVA JSON reader
# and image decoding, SECONDS each, seeded from tests/fuzz/corpus; a finding fails with its input saved.
FUZZ_DIR ?= build-fuzz
SECONDS ?= 60
fuzz: deps
	cmake -S . -B $(FUZZ_DIR) -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DMODALIGN_FUZZ=ON -DMODALIGN_BUILD_TESTS=OFF -DMODALIGN_BUILD_TOOLS=OFF
	cmake --build $(FUZZ_DIR) --target fuzz_targets -j $(JOBS)
	bash tests/fuzz/run.sh $(FUZZ_DIR)/fuzz $(SECONDS)

# The whole test suite built with AddressSanitizer + UndefinedBehaviorSanitizer (LibTorch itself is not
# instrumented; leak checking is off because LibTorch keeps its allocations until exit).
SANITIZE_DIR ?= build-sanitize
test-sanitize: deps
	cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODALIGN_SANITIZE=ON
	cmake --build $(SANITIZE_DIR) -j $(JOBS)
	cd $(SANITIZE_DIR) && ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_DIR) $(SANITIZE_DIR)
