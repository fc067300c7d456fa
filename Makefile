# The two commands of the README:
#   make demo   install what is missing, build, and run a local grid that creates real VMs
#   make test   install what is missing, build, and run every test
BUILD ?= build
JOBS ?= $(shell nproc)
IMAGE_DIR := $(BUILD)/images/tiny

.PHONY: demo test check setup build image clean bench

demo: setup build image
	$(BUILD)/vmgrid dev --hosts 2 --demo $(DEMO_ARGS)

# The tests run against SQLite and a throwaway PostgreSQL (scripts/run-tests.sh).
# (scripts/run-tests.sh repeats the static checks for those who call it
# directly; `check` first fails fast, before a long build.)
test: setup check build image
	@bash scripts/run-tests.sh $(BUILD) $(JOBS)

# Static checks, seconds: formatting (clang-format) and include direction.
check:
	@bash scripts/check-format.sh
	@bash scripts/check-includes.sh

setup:
	@bash scripts/setup.sh

# With ccache (scripts/setup.sh installs it) a rebuild, or a build in a fresh
# clone of the same tree, takes minutes instead of half an hour: paths inside
# the clone are hashed relative to it, so all clones share one cache.
CCACHE := $(shell command -v ccache 2>/dev/null)
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := true

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  $(if $(CCACHE),-DCMAKE_CXX_COMPILER_LAUNCHER=$(CCACHE)) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

image:
	@bash guest/build-tiny.sh $(IMAGE_DIR)

# The start-up benchmarks against plain QEMU, guest disk throughput, many
# hosts pulling one cold image and the listing rate (about 25 minutes); each
# rewrites its table in docs/benchmarks.md. The others (infosvc,
# image_transfer, vnet, migrate, nbd_read, ...) run one by one: see there.
bench: setup build image
	$(BUILD)/bench/instantiate
	$(BUILD)/bench/storm
	$(BUILD)/bench/guest_disk
	$(BUILD)/bench/fanout
	$(BUILD)/bench/listing
	@if command -v gnuplot >/dev/null; then python3 scripts/plot-tables.py; \
	  else echo "no gnuplot (Debian: gnuplot-nox): the plots in docs/plots were not redrawn"; fi

clean:
	rm -rf $(BUILD)
