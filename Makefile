# bellbuild — `make demo` and `make test` do all set-up on a fresh Debian
# bookworm machine (as root): they install what they need first.

GO        ?= go
BIN       := bin/bellbuild
BIN_ARM64 := bin/bellbuild-arm64
# The applier is embedded in images as a static binary: never cgo.
export CGO_ENABLED := 0
# Tests that boot VMs and build images find the binary here, and the
# applier of arm64 images (bellbuild cross-built for arm64) beside it.
export BELLBUILD_BIN := $(CURDIR)/$(BIN)
export BELLBUILD_BIN_ARM64 := $(CURDIR)/$(BIN_ARM64)

# Debian packages the product and its tests use (see docs/architecture.md).
PKGS := qemu-system-x86 ipxe-qemu ovmf linux-image-amd64 busybox-static ipxe \
	systemd-boot-efi isolinux syslinux-common debootstrap squashfs-tools gdisk dosfstools mtools cpio \
	dnsmasq-base tftp-hpa bash-static apparmor ethtool zstd xz-utils iproute2 \
	kea-admin kea-dhcp4-server file bzip2 gzip tar openssl \
	qemu-system-arm qemu-efi-aarch64 qemu-user-static binfmt-support \
	chromium etcd-server
# arm64 images: Debian packages fetched for arm64 (apt-get download, never
# installed) after deps has added the architecture to dpkg.
FOREIGN_ARCHS := arm64

.PHONY: all build build-arm64 deps test test-short bench demo demo-arm64 clean fmt vet tidy-check

all: build

build:
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN) ./cmd/bellbuild

# build-arm64 cross-builds the applier of arm64 images.
build-arm64:
	GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN_ARM64) ./cmd/bellbuild

# deps installs the Debian packages that are missing (nothing when all are
# there), and adds FOREIGN_ARCHS to dpkg with their package lists (once).
deps:
	@for a in $(FOREIGN_ARCHS); do \
		if ! dpkg --print-foreign-architectures | grep -qx "$$a" || ! apt-cache show busybox-static:$$a >/dev/null 2>&1; then \
			if [ "$$(id -u)" != 0 ]; then echo "deps: need root to run: dpkg --add-architecture $$a && apt-get update" >&2; exit 1; fi; \
			echo "deps: adding architecture $$a to dpkg (its packages are fetched, never installed)"; \
			dpkg --add-architecture "$$a" && apt-get update -qq || exit 1; \
		fi; \
	done
	@missing=$$(for p in $(PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "deps: need root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "deps: all present"; fi

# vet also checks the benchmarks' helper programs (built by their scripts,
# ignored by ./...), so that they keep compiling against the packages.
vet:
	$(GO) vet ./...
	@for f in .ci/bench/*.go; do $(GO) vet $$f || exit 1; done

# tidy-check fails when go.mod or go.sum is not tidy: a fresh clone must
# build without the go command rewriting either.
tidy-check:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy and commit the result" >&2; exit 1; }

# test runs every test: VM boots, network namespaces and root-only tests
# included. A test whose tool is missing skips, unless BELLBUILD_REQUIRE_TOOLS=1
# (set by .ci/run) makes it fail.
test: deps tidy-check build build-arm64 vet
	$(GO) test -count=1 -timeout 60m ./...

# test-short is the quick inner loop: no VM boots.
test-short: build
	$(GO) test -short -count=1 ./...

bench: deps build build-arm64
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...
	for s in .ci/bench/*.sh; do bash $$s || exit 1; done

demo: deps build
	$(BIN) image demo -o out
	$(BIN) run demo -o out --timeout 120s --expect 'bellbuild: node='

# demo-arm64 bakes the demo profile for arm64 (demo-arm64) and boots it in
# qemu-system-aarch64 (TCG).
demo-arm64: deps build build-arm64
	$(BIN) image demo-arm64 -o out
	$(BIN) run demo-arm64 -o out --arch arm64 --timeout 300s --expect 'bellbuild: node='

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin out
