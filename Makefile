# udplogger - see README.md.  Packagers: CXXFLAGS, LDFLAGS, CPPFLAGS, DESTDIR,
# PREFIX, SBINDIR, MANDIR, UNITDIR, SYSUSERSDIR and TMPFILESDIR are honoured.
# The version is set in one place, udplogger.h (kVersion).
VERSION := $(shell sed -n 's/^constexpr const char kVersion\[\] = "\([^"]*\)".*/\1/p' udplogger.h)
CXX ?= g++
CXXFLAGS ?= -O2 -g
HARDENING = -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
WARNINGS = -Wall -Wextra
DAEMON_FLAGS = -std=c++17 $(WARNINGS) $(HARDENING)
# No exceptions and no RTTI, after the packager's flags (Fedora's have
# -fexceptions): the daemon needs nothing from libstdc++, so it links
# against libc alone, and statically with musl.
DAEMON_ONLY = -fno-exceptions -fno-rtti
DAEMON_LDFLAGS = -pie -Wl,-z,relro,-z,now -Wl,--as-needed
TEST_FLAGS = -std=c++17 $(WARNINGS) -I. -I/usr/include/doctest
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d

TEST_SOURCES = test/main.cpp test/core_test.cpp test/core_fleet_test.cpp test/core_lines_test.cpp test/core_senders_test.cpp test/netconsole_test.cpp test/sinks_test.cpp test/daemon_test.cpp test/daemon_reliability_test.cpp test/daemon_systemd_test.cpp test/daemon_fleet_test.cpp test/clients_test.cpp test/package_test.cpp test/helpers.cpp test/netconsole.cpp

.PHONY: all check check-core check-flags check-asan bench clean install uninstall dist static rpm deb fuzz lint

all: udplogger

udplogger: udplogger.cpp udplogger.h
	$(CXX) $(CPPFLAGS) $(DAEMON_FLAGS) $(CXXFLAGS) $(DAEMON_ONLY) -o $@ udplogger.cpp $(DAEMON_LDFLAGS) $(LDFLAGS)

# For rescue images: statically linked, needing no /etc and no environment
# (numeric ids, no DNS, no locale).  With musl (Debian: musl-tools) it is
# a few hundred KiB; otherwise glibc, static-pie, about 1 MiB.
MUSL_SPECS ?= $(firstword $(wildcard /usr/lib/*/musl-gcc.specs /usr/lib/musl/lib/musl-gcc.specs /usr/local/musl/lib/musl-gcc.specs))
ifneq ($(MUSL_SPECS),)
STATIC_FLAGS = -specs $(MUSL_SPECS) -static
else
STATIC_FLAGS = -static-pie
endif

static: udplogger-static

udplogger-static: udplogger.cpp udplogger.h
	$(CXX) $(STATIC_FLAGS) $(CPPFLAGS) $(DAEMON_FLAGS) $(CXXFLAGS) $(DAEMON_ONLY) -o $@ udplogger.cpp -Wl,-z,relro,-z,now $(LDFLAGS)

test/udplogger-core.o: udplogger.cpp udplogger.h
	$(CXX) $(CPPFLAGS) $(TEST_FLAGS) $(CXXFLAGS) -DUDPLOGGER_NO_MAIN -c -o $@ udplogger.cpp

# The tests are compiled one object a file, so that make -j compiles them
# at once (check and check-flags do, two at a time).
TEST_HEADERS = test/helpers.h test/netconsole.h test/core_harness.h udplogger.h
test/%.o: test/%.cpp $(TEST_HEADERS)
	$(CXX) $(CPPFLAGS) $(TEST_FLAGS) $(CXXFLAGS) -c -o $@ $<
test/run-tests: $(TEST_SOURCES:.cpp=.o) test/udplogger-core.o
	$(CXX) $(CXXFLAGS) -o $@ $^ $(LDFLAGS)

# The daemon as the distributions build it: Fedora's %optflags and
# %build_ldflags (less the redhat specs files, which only Fedora has) and
# Debian's dpkg-buildflags with hardening=+all.  check-flags builds each,
# dynamic and static, warning-free, and runs the binary and daemon tests
# that matter to a packager against it.
FEDORA_CXXFLAGS = -O2 -flto=auto -ffat-lto-objects -fexceptions -g -grecord-gcc-switches -pipe \
	-Wall -Werror=format-security -Wp,-U_FORTIFY_SOURCE,-D_FORTIFY_SOURCE=3 -Wp,-D_GLIBCXX_ASSERTIONS \
	-fstack-protector-strong -m64 -march=x86-64 -mtune=generic -fasynchronous-unwind-tables \
	-fstack-clash-protection -fcf-protection -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer
FEDORA_LDFLAGS = -Wl,-z,relro -Wl,--as-needed -Wl,-z,pack-relative-relocs -Wl,-z,now -Wl,--build-id=sha1
DEBIAN_FLAGS = DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get
FLAGS_TESTS = binary*,daemon: start-up line*,daemon: lines split*,daemon: SIGTERM*,daemon: every capture*,daemon: split=host*,stop:*
check-flags:
	$(MAKE) -s -j2 --no-print-directory test/run-tests
	rm -rf test/flags && mkdir -p test/flags/fedora test/flags/debian
	$(MAKE) -s -j2 --no-print-directory udplogger udplogger-static CXXFLAGS="$(FEDORA_CXXFLAGS) -Werror" \
	  LDFLAGS="$(FEDORA_LDFLAGS)" CPPFLAGS= && mv udplogger udplogger-static test/flags/fedora/
	$(MAKE) -s -j2 --no-print-directory udplogger udplogger-static CXXFLAGS="$$($(DEBIAN_FLAGS) CXXFLAGS) -Werror" \
	  LDFLAGS="$$($(DEBIAN_FLAGS) LDFLAGS)" CPPFLAGS="$$($(DEBIAN_FLAGS) CPPFLAGS)" && mv udplogger udplogger-static test/flags/debian/
	for d in fedora debian; do \
	  file test/flags/$$d/udplogger-static | grep -q 'statically linked' || exit 1; \
	  (cd test && UDPLOGGER=./flags/$$d/udplogger ./run-tests --no-intro=true -tc='$(FLAGS_TESTS)' | tail -n 3) || exit 1; \
	done

# Runs lint, check-flags, then every test; the last line is "N passed, N
# failed, N skipped".  A test that cannot run here (not root, no IPv6) is
# skipped and says why.  The package builds (rpm, deb: mostly compiling)
# and the minute-long test (slow:) run in a second test process beside the
# others, whose output follows; each process counts the other's tests as
# skipped (filtered), hence k - all.
PACKAGE_TESTS = rpm:*,deb:*,release:*,slow:*
check: lint check-flags udplogger udplogger-static test/run-tests
	@cd test && { ./run-tests --no-intro=true -tc='$(PACKAGE_TESTS)' > run-packages.log 2>&1 & \
	   packages=$$!; FUZZTIME=$(FUZZTIME) ./run-tests --no-intro=true -tce='$(PACKAGE_TESTS)' 2>&1 | tee run-tests.log; \
	   wait $$packages; cat run-packages.log; }; \
	 awk -F'|' '/test cases:/ { for (i = 1; i <= 4; i++) gsub(/[^0-9]/, "", $$i); \
	   p += $$2; f += $$3; k += $$4; all = $$1 + $$4; runs++ } \
	   END { if (runs < 2) f++; print p " passed, " f " failed, " k - all " skipped"; exit (f != 0) }' \
	   run-tests.log run-packages.log

# The tests that need no root, no network and no tool beyond the build:
# the core, extended netconsole and the sinks on a fake clock.  For the
# packages' %check and dh_auto_test.
CORE_SOURCES = test/main.cpp test/core_test.cpp test/core_fleet_test.cpp test/core_lines_test.cpp test/core_senders_test.cpp \
	test/netconsole_test.cpp test/sinks_test.cpp test/helpers.cpp test/netconsole.cpp
test/run-core-tests: $(CORE_SOURCES:.cpp=.o) test/udplogger-core.o
	$(CXX) $(CXXFLAGS) -o $@ $^ $(LDFLAGS)
check-core: test/run-core-tests
	cd test && ./run-core-tests --no-intro=true -tce='daemon:*'


# The same tests with AddressSanitizer and UBSan in the core and the daemon;
# those of the binary's libraries and memory use say they are skipped.
SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1
check-asan: $(TEST_SOURCES) test/helpers.h test/netconsole.h test/core_harness.h udplogger.cpp udplogger.h udplogger-static
	$(CXX) -std=c++17 -fno-exceptions -fno-rtti $(WARNINGS) $(SANITIZE) -o test/udplogger-asan udplogger.cpp
	$(CXX) $(TEST_FLAGS) $(SANITIZE) -DUDPLOGGER_NO_MAIN -o test/run-tests-asan $(TEST_SOURCES) udplogger.cpp
	cd test && UDPLOGGER=./udplogger-asan UDPLOGGER_SANITIZED=1 ./run-tests-asan --no-intro=true

# libFuzzer over the core (clang, Debian: clang and libclang-rt-14-dev):
# each target runs FUZZTIME seconds (both at once, one a core) from the
# netconsole captures and the saved regressions; FUZZTIME=0 runs each of those inputs once.  A finding
# stops with its input in test/fuzz/work/; save it to test/fuzz/regressions/.
FUZZ_CXX ?= clang++
FUZZTIME ?= 0
FUZZ_FLAGS = -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-I. -DUDPLOGGER_NO_MAIN

# fuzz-core builds the scan that CPUs without SSE2 (arm64 and others) run,
# so that it is tested on x86-64 too; fuzz-raw and the tests run the SSE2 one.
test/fuzz/fuzz-core: FUZZ_SCAN = -U__SSE2__

test/fuzz/fuzz-core test/fuzz/fuzz-raw: test/fuzz/fuzz-%: test/fuzz/fuzz_%.cpp test/fuzz/harness.cpp test/fuzz/harness.h udplogger.cpp udplogger.h
	$(FUZZ_CXX) $(FUZZ_FLAGS) $(FUZZ_SCAN) -o $@ $< test/fuzz/harness.cpp udplogger.cpp

test/fuzz/seed: test/fuzz/seed.cpp
	$(CXX) -std=c++17 -O2 -o $@ $<

fuzz:
	$(MAKE) -s -j2 --no-print-directory test/fuzz/fuzz-core test/fuzz/fuzz-raw test/fuzz/seed
	rm -rf test/fuzz/work && mkdir -p test/fuzz/work/seeds test/fuzz/work/core test/fuzz/work/raw
	test/fuzz/seed test/fuzz/work/seeds test/netconsole/*.dump
	if [ $(FUZZTIME) -gt 0 ]; then runs="-max_total_time=$(FUZZTIME)"; else runs="-runs=0"; fi; \
	pids=; for t in core raw; do \
	  test/fuzz/fuzz-$$t $$runs -max_len=80000 -timeout=10 -artifact_prefix=test/fuzz/work/$$t- \
	    test/fuzz/work/$$t test/fuzz/work/seeds test/fuzz/regressions > test/fuzz/work/$$t.log 2>&1 & \
	  pids="$$pids $$!"; \
	done; \
	status=0; for p in $$pids; do wait $$p || status=1; done; \
	cat test/fuzz/work/core.log test/fuzz/work/raw.log; exit $$status

# Static analysis of the daemon: cppcheck, and clang-tidy as .clang-tidy says.
lint:
	cppcheck --enable=warning,performance,portability --std=c++17 --error-exitcode=1 -q udplogger.cpp & \
	  cppcheck=$$!; clang-tidy --quiet udplogger.cpp -- -std=c++17 -fno-exceptions || failed=1; \
	  wait $$cppcheck || failed=1; exit $${failed:-0}

# The benchmark against a null receiver and the peers; see README.md.
bench: udplogger test/bench/loadgen test/bench/nullrecv test/bench/latency
	bash test/bench/run.sh

test/bench/latency: test/bench/latency.cpp
	$(CXX) -std=c++17 -O2 $(WARNINGS) $(CXXFLAGS) -pthread -o $@ $<

test/bench/nullrecv: test/bench/nullrecv.cpp udplogger.cpp udplogger.h
	$(CXX) -std=c++17 -O2 $(WARNINGS) -I. $(CXXFLAGS) -DUDPLOGGER_NO_MAIN -o $@ test/bench/nullrecv.cpp udplogger.cpp

test/bench/loadgen: %: %.cpp
	$(CXX) -std=c++17 -O2 $(WARNINGS) $(CXXFLAGS) -o $@ $<

# The units name the binary where it is installed.
INSTALLED = $(SBINDIR)/udplogger $(MANDIR)/man8/udplogger.8 $(UNITDIR)/udplogger.service \
	$(UNITDIR)/udplogger.socket $(UNITDIR)/udplogger-compress.service \
	$(UNITDIR)/udplogger-compress.timer $(SYSUSERSDIR)/udplogger.conf $(TMPFILESDIR)/udplogger.conf

install: udplogger
	install -D -m 0755 udplogger $(DESTDIR)$(SBINDIR)/udplogger
	install -D -m 0644 man/udplogger.8 $(DESTDIR)$(MANDIR)/man8/udplogger.8
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR)
	sed 's|@SBINDIR@|$(SBINDIR)|g' contrib/udplogger.service > $(DESTDIR)$(UNITDIR)/udplogger.service
	install -m 0644 contrib/udplogger.socket $(DESTDIR)$(UNITDIR)/udplogger.socket
	install -m 0644 contrib/udplogger-compress.service contrib/udplogger-compress.timer $(DESTDIR)$(UNITDIR)/
	install -m 0644 contrib/udplogger.sysusers $(DESTDIR)$(SYSUSERSDIR)/udplogger.conf
	install -m 0644 contrib/udplogger.tmpfiles $(DESTDIR)$(TMPFILESDIR)/udplogger.conf

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

# udplogger-VERSION.tar.gz of the committed tree: one top directory, no .git.
dist:
	git archive --format=tar.gz --prefix=udplogger-$(VERSION)/ -o udplogger-$(VERSION).tar.gz HEAD

# The RPMs, from that tarball, into RPMDIR.  Where systemd's rpm macros are
# missing (rpmbuild on Debian, whose rpm database lists no packages), their
# paths are given here and build dependencies are not checked.
RPMDIR ?= $(CURDIR)/rpmbuild
RPM_FOREIGN = $(if $(shell rpm --eval '%{?_unitdir}' 2>/dev/null),,--nodeps \
	--define "_unitdir /usr/lib/systemd/system" --define "_sysusersdir /usr/lib/sysusers.d" \
	--define "_tmpfilesdir /usr/lib/tmpfiles.d")
RPMBUILD_OPTS ?=
rpm: dist
	mkdir -p $(RPMDIR)/SOURCES
	cp udplogger-$(VERSION).tar.gz contrib/udplogger.sysusers $(RPMDIR)/SOURCES/
	rpmbuild -ba $(RPMBUILD_OPTS) --define "_topdir $(RPMDIR)" $(RPM_FOREIGN) contrib/udplogger.spec

# The Debian package, from that tarball: contrib/debian becomes debian/,
# with the sysusers and tmpfiles files dh_installsysusers and
# dh_installtmpfiles take; the .deb lands in DEBDIR.  Needs dpkg-dev and
# debhelper (and doctest-dev for the tests it runs).
DEBDIR ?= $(CURDIR)/debian-build
deb: dist
	rm -rf $(DEBDIR) && mkdir -p $(DEBDIR)
	cp udplogger-$(VERSION).tar.gz $(DEBDIR)/udplogger_$(VERSION).orig.tar.gz
	tar xzf udplogger-$(VERSION).tar.gz -C $(DEBDIR)
	cd $(DEBDIR)/udplogger-$(VERSION) && cp -r contrib/debian debian && \
	  cp contrib/udplogger.sysusers debian/udplogger.sysusers && \
	  cp contrib/udplogger.tmpfiles debian/udplogger.tmpfiles && \
	  dpkg-buildpackage -us -uc -b

clean:
	rm -rf rpmbuild debian-build test/fuzz/work test/fuzz/fuzz-core test/fuzz/fuzz-raw test/fuzz/seed test/flags
	rm -f udplogger udplogger-static udplogger-*.tar.gz test/run-tests test/run-core-tests test/run-tests-asan test/udplogger-asan test/*.o test/run-tests.log test/run-packages.log test/bench/loadgen test/bench/nullrecv test/bench/latency
