# ulp: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
BUILD := build
CC := gcc
RUNTIME_CFLAGS := -O2 -g -fPIC -Wall -Wextra -Werror -std=gnu11 -fvisibility=hidden \
	-fno-omit-frame-pointer -D_GNU_SOURCE
RUNTIME_SRCS := $(wildcard runtime/*.c) $(wildcard runtime/*.S)
RUNTIME_HDRS := $(wildcard runtime/*.h)
RUNTIME := runtime/libulp.so
# The installed ulp-trigger: raises the priority, then runs the Python command (launcher/)
LAUNCHER := $(BUILD)/launcher/ulp-trigger
# Shipped manual pages and bash completion, generated from the parsers (make man)
MAN_DIR := man

.PHONY: all setup system-deps venv runtime launcher demo test bench bench-fleet fuzz lint clean man realworld realworld-deps

all: setup

setup: system-deps venv runtime

# Tools the suite runs besides Python: installed with apt-get when missing (as root).
system-deps:
	@missing=""; for tool in gcc gdb make; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq gcc gdb make; \
		else echo "missing:$$missing (install them, or run as root)"; exit 1; fi; \
	fi
	@# boost.context: the coroutine tests make stacks with it (make_fcontext)
	@if ! ldconfig -p | grep -q 'libboost_context\.so'; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libboost-context1.74.0; \
		else echo "missing: libboost_context (install libboost-context1.74.0, or run as root)"; exit 1; fi; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py launcher/ulp-trigger.c
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

runtime: $(RUNTIME)

$(RUNTIME): $(RUNTIME_SRCS) $(RUNTIME_HDRS)
	$(CC) $(RUNTIME_CFLAGS) -shared -o $@ $(RUNTIME_SRCS) -ldl -lpthread

launcher: $(LAUNCHER)

$(LAUNCHER): launcher/ulp-trigger.c
	mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $<

demo: setup
	$(VENV)/bin/python demo/run_demo.py

test: setup lint
	$(VENV)/bin/python -m pytest -q tests

# Instruction counts need valgrind (apt-get, as for system-deps), the plot
# matplotlib (the bench extra); see docs/benchmarks.md.
bench: setup
	@command -v valgrind >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq valgrind; \
		else echo "missing: valgrind (install it, or run as root)"; exit 1; fi; }
	@$(VPY) -c 'import matplotlib' 2>/dev/null || $(VPY) -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/python bench/run_bench.py
	$(VENV)/bin/python bench/operators.py | tee $(BUILD)/bench/operators.txt
	@if [ -f $(BUILD)/bench/fleet.txt ]; then echo "last make bench-fleet:"; cat $(BUILD)/bench/fleet.txt; \
	else echo "fleet of 4,000 processes: not run (make bench-fleet)"; fi

# One ulp-trigger call over FLEET + 1 idle processes, and libpulp's on the same
# machine in the same run when LIBPULP_DIR names a built libpulp tree (it is
# in no package registry: docs/benchmarks.md).  make bench shows the last result.
FLEET ?= 4000
LIBPULP_DIR ?=
bench-fleet: setup
	@mkdir -p $(BUILD)/bench
	$(VENV)/bin/python bench/operators.py --fleet $(FLEET) \
		$(if $(LIBPULP_DIR),--libpulp $(LIBPULP_DIR)) | tee $(BUILD)/bench/fleet.txt

# ulp-prepare on mutated libraries: FUZZ_COUNT cases of seed FUZZ_SEED (the
# suite runs 1,200 of another seed); failing inputs are kept in build/fuzz-failures.
FUZZ_COUNT ?= 20000
FUZZ_SEED ?= 1
FUZZ_JOBS ?= 2
# It also prepares and runs generated libraries of PREPARE_SIZES (start:stop:step) functions.
PREPARE_SIZES ?= 1:2000:7
fuzz: setup
	nice $(VENV)/bin/python tests/fuzz_prepare.py --count $(FUZZ_COUNT) --seed $(FUZZ_SEED) \
		--jobs $(FUZZ_JOBS) --work $(BUILD)/fuzz --save $(BUILD)/fuzz-failures
	ULP_PREPARE_SIZES=$(PREPARE_SIZES) nice $(VENV)/bin/python -m pytest -q \
		tests/test_prepare_sizes.py -k every_size

# zlib and SQLite from Debian's source packages, made live-patchable, tested
# three ways, fixed live under load (docs/realworld.md). Downloads and builds
# are cached in build/realworld; results in build/realworld/results.json.
REALWORLD_ARGS ?=
realworld: setup realworld-deps
	$(VENV)/bin/python realworld/run.py $(REALWORLD_ARGS)

# What building Debian source packages needs besides gcc: apt-get source
# (dpkg-dev), patch, tclsh for SQLite's generated sources; valgrind counts
# instructions.
realworld-deps:
	@missing=""; for tool in dpkg-source patch tclsh gdb valgrind; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends dpkg-dev patch tcl gdb valgrind; \
		else echo "missing:$$missing (install them, or run as root)"; exit 1; fi; \
	fi

# Manual pages and bash completion from the commands' parsers (ulp/manpages.py),
# into man/, which `pip install .` installs (tests/test_manpages.py checks they
# are current: run this after changing a command's options).
man: venv
	rm -rf $(MAN_DIR)/man1 $(MAN_DIR)/bash-completion
	$(VENV)/bin/python -m ulp.manpages $(MAN_DIR)

lint: venv
	$(VENV)/bin/ruff check ulp toolchain packer trigger tests demo bench realworld

clean:
	rm -rf $(BUILD) $(RUNTIME) $(VENV)
