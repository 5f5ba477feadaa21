# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make serve   install what is needed, then run the all-in-one service
#   make test    install what is needed, then run the test suite
PYTHON ?= python3
# The sandbox's interpreter must live under /usr: only /usr is visible inside the sandbox.
SANDBOX_PYTHON ?= /usr/bin/python3
VENV := .venv
SANDBOX_VENV := .sandbox-venv
SYSTEM_PACKAGES := bubblewrap nodejs gcc g++ python3-venv python3-seccomp e2fsprogs util-linux

.PHONY: serve test lint bench soak system-packages test-system-packages clean

serve: $(VENV)/.installed $(SANDBOX_VENV)/.installed
	$(VENV)/bin/codeproxy serve

# Two workers take about 40% off the suite's time on two cores. A test file stays on one worker:
# some files share fixed resources (a uid range) between their tests.
TEST_WORKERS ?= 2
test: $(VENV)/.dev-installed $(SANDBOX_VENV)/.installed test-system-packages
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check codeproxy proxy executor storage tests examples
	$(VENV)/bin/ruff format --check codeproxy proxy executor storage tests examples
	$(VENV)/bin/mypy

bench: $(VENV)/.dev-installed $(SANDBOX_VENV)/.installed
	$(VENV)/bin/python -m tests.bench

# Mixed traffic from many clients for a long time (see tests/bench/soak.py).
SOAK_SECONDS ?= 600
SOAK_CLIENTS ?= 64
soak: $(VENV)/.dev-installed $(SANDBOX_VENV)/.installed
	$(VENV)/bin/python -m tests.bench.soak --seconds $(SOAK_SECONDS) --clients $(SOAK_CLIENTS)

system-packages:
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v setsid >/dev/null || missing="$$missing util-linux"; \
	command -v mkfs.ext4 >/dev/null || missing="$$missing e2fsprogs"; \
	$(SANDBOX_PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	$(SANDBOX_PYTHON) -c 'import seccomp' 2>/dev/null || missing="$$missing python3-seccomp"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# The tests run every storage test on a throwaway PostgreSQL cluster too (tests/postgres.py).
test-system-packages:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages: postgresql"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    (apt-get install -y -q postgresql || (apt-get update -q && apt-get install -y -q postgresql)) >/dev/null; \
	  else \
	    echo "missing system packages: postgresql"; \
	    echo "run: sudo apt-get install -y postgresql"; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[dev,e2b]'
	touch $@

$(SANDBOX_VENV)/.installed: executor/requirements-sandbox.txt | system-packages
	test -x $(SANDBOX_VENV)/bin/python || $(SANDBOX_PYTHON) -m venv $(SANDBOX_VENV)
	$(SANDBOX_VENV)/bin/pip install -q -r executor/requirements-sandbox.txt
	# Prebuilt matplotlib font list, copied into every sandbox (see executor/local/fontcache.py).
	rm -rf $(SANDBOX_VENV)/share/codeproxy/matplotlib
	env -i HOME=/nonexistent MPLCONFIGDIR=$(CURDIR)/$(SANDBOX_VENV)/share/codeproxy/matplotlib \
	  $(SANDBOX_VENV)/bin/python -c 'import matplotlib.font_manager'
	touch $@

clean:
	rm -rf $(VENV) $(SANDBOX_VENV)
