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
  libstb-dev libcli11-dev python3-torch python3-matplotlib

.PHONY: all deps configure build test demo bench clean
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

# The demo: synthesise the modality-conflict benchmark, train the `demo` preset from scratch with CE only
# and with the alignment loss of configs/demo.yaml side by side on CPU, print both evaluations (aligned /
# conflict / no-hint splits, hint rate, accuracy per question type), draw the curves.
DEMO_DIR ?= demo
demo: build
	bash tools/demo.sh $(BUILD_DIR) $(DEMO_DIR) $(PYTHON)

# Benchmarks: modalign vs an equivalent PyTorch-Python step (demo and small presets), the GEMM limit and
# the data loader; prints the table and writes build/bench/compare.md (copied into bench/README.md by hand).
bench: build
	cmake --build $(BUILD_DIR) --target step_bench -j $(JOBS)
	@test -f $(DEMO_DIR)/data/train.json || $(BUILD_DIR)/modalign synth --out $(DEMO_DIR)/data --train 2000 --eval 100
	$(PYTHON) bench/compare.py --build $(BUILD_DIR)

clean:
	rm -rf $(BUILD_DIR)
