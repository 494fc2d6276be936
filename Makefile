# recmg top-level build. `make demo` runs the main job, `make test` the whole test suite.
# Both set up everything they need themselves (system packages when run as root, .venv, native build).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
APT_PACKAGES := gcc make pkg-config liburing-dev libsystemd-dev fio
# The NUMA test VM (tools/numa_vm.py, run by the `vm` tests in `make test`), without recommends: qemu's
# would pull in a desktop stack. Not root: the VM tests skip, saying why.
APT_VM_PACKAGES := qemu-system-x86 busybox-static
TRACE  ?=
PREFIX ?= /usr/local
# where `make install` puts the units: the admin's place by default; a package builds with
# UNITDIR=/usr/lib/systemd/system
UNITDIR ?= /etc/systemd/system
# The TorchRec front's torchrec, without its declared deps (pyproject.toml's torchrec extra says why).
TORCHREC := torchrec==1.8.0

.PHONY: all help sysdeps venv native test test-vm demo bench bench-e2e lint install install-venv install-files uninstall clean

all: native

help:
	@echo "recmg's targets (README.md says more):"
	@echo "  make demo        a TorchRec DLRM server on recmg against all-DRAM (TRACE=path: on that trace;"
	@echo "                   LOOKAHEAD_BATCHES=N: the server announces batches N ahead)"
	@echo "  make test        the whole test suite (system packages, .venv and the native build first)"
	@echo "  make test-vm     only the tests in the QEMU guest (a CPU-less NUMA node, systemd as PID 1)"
	@echo "  make native      librecmg (native/build) and the Python extension, in .venv"
	@echo "  make bench       the benchmarks (BENCHMARKS.md holds their numbers)"
	@echo "  make bench-e2e   the full end-to-end comparison (tools/bench_e2e.py)"
	@echo "  make lint        ruff, and the C build with -Wall -Wextra -Werror"
	@echo "  make install     the package in its venv, librecmg, recmg.h, recmg.pc, the units, the config"
	@echo "                   example, the recmgd user (PREFIX=$(PREFIX), DESTDIR=, UNITDIR=$(UNITDIR),"
	@echo "                   PYTHON=$(PYTHON): the interpreter the venv is made from)"
	@echo "  make uninstall   what install put down, but the config, the user and its state (give it"
	@echo "                   install's PREFIX, DESTDIR and UNITDIR)"
	@echo "  make clean       the build outputs"

# System packages: installed when missing and we are root; otherwise the exact command is printed.
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	vm_missing=""; for p in $(APT_VM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || vm_missing="$$vm_missing $$p"; \
	done; \
	if [ -n "$$missing$$vm_missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing$$vm_missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq || exit 1; \
	    if [ -n "$$missing" ]; then \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	    fi; \
	    if [ -n "$$vm_missing" ]; then \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$vm_missing >/dev/null || exit 1; \
	    fi; \
	  else \
	    if [ -n "$$vm_missing" ]; then \
	      echo "missing system packages for the VM tests (they skip); run: sudo apt-get install -y --no-install-recommends$$vm_missing"; \
	    fi; \
	    if [ -n "$$missing" ]; then \
	      echo "missing system packages; run: sudo apt-get install -y$$missing"; exit 1; \
	    fi; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml setup.py | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cffi
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e '.[test,torchrec]'
	$(PIP) install -q --no-deps $(TORCHREC)
	touch $@

venv: sysdeps $(VENV)/.installed

# librecmg for C apps (native/build) and the cffi extension module in place (recmgd/_native*.so).
native: venv
	$(MAKE) -s -C native
	$(PY) setup.py -q build_ext --inplace >/dev/null

test: native
	$(PY) -m pytest -q tests

# Only the tests in the QEMU NUMA test VM (a CPU-less NUMA node, systemd as PID 1); also part of `make test`.
test-vm: native
	$(PY) -m pytest -q -m vm tests

demo: native
	mkdir -p build
	$(PY) -m recmgd.cli.recmg demo --png build/recmg-demo.png $(if $(TRACE),--trace $(TRACE),) \
		$(if $(LOOKAHEAD_BATCHES),--lookahead-batches $(LOOKAHEAD_BATCHES),)

# The end-to-end comparison (tools/bench_e2e.py): a TorchRec DLRM server on recmg against all-DRAM.
bench-e2e: native
	$(PY) tools/bench_e2e.py --json build/bench_e2e.json --png build/bench_e2e.png

bench: native
	$(PY) tools/bench.py

lint: venv
	$(VENV)/bin/ruff check recmgd tests tools
	$(MAKE) -s -C native clean all

# A self-contained install: the package in its own venv under $(PREFIX)/lib/recmgd, its three commands
# linked into $(PREFIX)/bin (where recmgd.service looks), librecmg, recmg.h and recmg.pc (pkg-config,
# $(PREFIX)/lib/pkgconfig) for C apps, the units
# (recmg-hugepages.service installed, not enabled),
# the config example (never over an existing config), the sysusers and tmpfiles rules; then (not into a
# DESTDIR) the recmgd user and group (systemd-sysusers, or groupadd/useradd without it) and its directories.
INSTALL_VENV := $(PREFIX)/lib/recmgd/venv
# recmg.pc's Version: the package's
PC_VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml)
# what `make install` puts down (uninstall removes them; /etc/recmgd/recmgd.toml, an admin's, stays)
INSTALLED := $(PREFIX)/bin/recmgd $(PREFIX)/bin/recmgctl $(PREFIX)/bin/recmg $(PREFIX)/include/recmg.h \
  $(PREFIX)/lib/librecmg.so $(PREFIX)/lib/librecmg.a $(PREFIX)/lib/pkgconfig/recmg.pc \
  $(PREFIX)/share/doc/recmgd/README.md \
  $(UNITDIR)/recmgd.service $(UNITDIR)/recmg-hugepages.service \
  /usr/lib/sysusers.d/recmgd.conf /usr/lib/tmpfiles.d/recmgd.conf
install: install-venv install-files
	@# the daemon's user and group, then its directories (owned by them); into DESTDIR only the files.
	@# ldconfig: the loader's cache learns $(PREFIX)/lib/librecmg.so (where that is on its path)
	@if [ -z "$(DESTDIR)" ]; then \
	  if command -v ldconfig >/dev/null 2>&1; then ldconfig || exit 1; fi; \
	  if command -v systemd-sysusers >/dev/null 2>&1; then \
	    systemd-sysusers /usr/lib/sysusers.d/recmgd.conf || exit 1; \
	  else \
	    getent group recmgd >/dev/null || groupadd --system recmgd || exit 1; \
	    getent passwd recmgd >/dev/null || useradd --system --gid recmgd --home-dir /var/lib/recmgd \
	      --no-create-home --shell /usr/sbin/nologin --comment "recmg tiered-memory daemon" recmgd || exit 1; \
	  fi; \
	  if command -v systemd-tmpfiles >/dev/null 2>&1; then \
	    systemd-tmpfiles --create /usr/lib/tmpfiles.d/recmgd.conf || exit 1; \
	  else \
	    install -d -o recmgd -g recmgd -m 0755 /run/recmgd && \
	    install -d -o recmgd -g recmgd -m 0700 /var/lib/recmgd /var/lib/recmgd/models || exit 1; \
	  fi; \
	  if command -v runuser >/dev/null 2>&1 && \
	     ! runuser -u recmgd -- $(INSTALL_VENV)/bin/python -c "import recmgd.daemon.service" 2>/dev/null; then \
	    echo "make install: user recmgd cannot run $(INSTALL_VENV)/bin/python (its Python, $$(readlink -f $(INSTALL_VENV)/bin/python), is under a directory only root may enter, e.g. /root/.pyenv); install again with a system Python: rm -rf $(INSTALL_VENV) && make install PREFIX=$(PREFIX) UNITDIR=$(UNITDIR) PYTHON=/usr/bin/python3"; \
	    exit 1; \
	  fi; \
	fi
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now recmgd"
	@echo "(and, for 2 MiB pages in the pools: systemctl enable --now recmg-hugepages; README, Huge pages)"
	@echo "apps share pools with the daemon through group recmgd: usermod -aG recmgd APPUSER (README, Security)"

# the venv, built at $(DESTDIR)$(INSTALL_VENV) and pointing at $(INSTALL_VENV) (its scripts' #! lines
# rewritten: a DESTDIR tree is moved into / to run); umask 022: the daemon's user reads it all.
# Into a DESTDIR, where the recmgd user may not exist (install checks it by running the venv as recmgd
# otherwise), tools/check_python_access.sh judges from permission bits, before the long pip installs,
# that others can reach and run the Python the venv links to; refused, the venv is removed (a venv
# made again over it would keep its links to the old Python).
install-venv:
	umask 022; $(PYTHON) -m venv $(DESTDIR)$(INSTALL_VENV)
	@if [ -n "$(DESTDIR)" ]; then \
	  why=$$(sh tools/check_python_access.sh $(DESTDIR)$(INSTALL_VENV)/bin/python) || { \
	    rm -rf $(DESTDIR)$(INSTALL_VENV); \
	    echo "make install: user recmgd will not be able to run $(INSTALL_VENV)/bin/python: $$why; install again with a system Python: make install DESTDIR=$(DESTDIR) PREFIX=$(PREFIX) UNITDIR=$(UNITDIR) PYTHON=/usr/bin/python3" >&2; \
	    exit 1; }; \
	fi
	umask 022; $(DESTDIR)$(INSTALL_VENV)/bin/pip install -q --upgrade pip setuptools wheel cffi
	umask 022; $(DESTDIR)$(INSTALL_VENV)/bin/pip install -q torch==2.13.0
	umask 022; $(DESTDIR)$(INSTALL_VENV)/bin/pip install -q --no-build-isolation .
	@if [ -n "$(DESTDIR)" ]; then \
	  grep -rlIZ -F "$(DESTDIR)$(INSTALL_VENV)" $(DESTDIR)$(INSTALL_VENV)/bin $(DESTDIR)$(INSTALL_VENV)/pyvenv.cfg | \
	    xargs -0 -r sed -i "s|$(DESTDIR)$(INSTALL_VENV)|$(INSTALL_VENV)|g"; \
	fi
# everything but the venv (the units name $(PREFIX)/bin; tests/test_systemd.py installs these into a DESTDIR)
install-files: native
	umask 022; install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib \
	  $(DESTDIR)/etc/recmgd $(DESTDIR)$(PREFIX)/share/doc/recmgd
	umask 022; for c in recmgd recmgctl recmg; do ln -sfn $(INSTALL_VENV)/bin/$$c $(DESTDIR)$(PREFIX)/bin/$$c; done
	umask 022; install -m 0644 native/include/recmg.h $(DESTDIR)$(PREFIX)/include/recmg.h
	umask 022; install -m 0755 native/build/librecmg.so $(DESTDIR)$(PREFIX)/lib/librecmg.so
	umask 022; install -m 0644 native/build/librecmg.a $(DESTDIR)$(PREFIX)/lib/librecmg.a
	umask 022; install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig && \
	  sed -e '/^#/d' -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(PC_VERSION)|g' native/recmg.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/recmg.pc
	umask 022; install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/recmgd/README.md
	umask 022; [ -f $(DESTDIR)/etc/recmgd/recmgd.toml ] || \
	  install -m 0644 systemd/recmgd.toml.example $(DESTDIR)/etc/recmgd/recmgd.toml
	umask 022; for u in recmgd recmg-hugepages; do \
	  install -d $(DESTDIR)$(UNITDIR) && \
	  sed 's|/usr/local/|$(PREFIX)/|g' systemd/$$u.service > $(DESTDIR)$(UNITDIR)/$$u.service || exit 1; \
	done
	umask 022; install -D -m 0644 systemd/recmgd.sysusers $(DESTDIR)/usr/lib/sysusers.d/recmgd.conf
	umask 022; install -D -m 0644 systemd/recmgd.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/recmgd.conf

# Removes what install put down but /etc/recmgd/recmgd.toml, the recmgd user and group, and its state
# (/var/lib/recmgd): an admin's. Stop and disable the units first.
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	rm -rf $(DESTDIR)$(PREFIX)/lib/recmgd
	-rmdir $(DESTDIR)$(PREFIX)/share/doc/recmgd 2>/dev/null
	-rmdir $(DESTDIR)$(PREFIX)/lib/pkgconfig 2>/dev/null
	@echo "uninstalled; kept /etc/recmgd/recmgd.toml, the recmgd user and /var/lib/recmgd"

clean:
	$(MAKE) -s -C native clean
	rm -rf build recmgd/_native*.so recmgd/_native.c
