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

demo: build
	@$(BUILD_DIR)/modalign train --help >/dev/null 2>&1 || { echo "demo: not yet available (the trainer is not built yet)"; exit 1; }

bench: build
	@echo "bench: not yet available"; exit 1

clean:
	rm -rf $(BUILD_DIR)
