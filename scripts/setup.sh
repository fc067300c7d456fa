#!/usr/bin/env bash
# Installs what vmgrid needs from Debian's packages. Idempotent: installs only
# what is missing, so it is cheap to run before every build.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config
  # scripts/check-format.sh
  clang-format
  libsqlite3-dev nlohmann-json3-dev libcpp-httplib-dev libssl-dev libcli11-dev
  libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev
  # the PostgreSQL backend (libpq) and the server its tests run against
  libpq-dev postgresql
  # run VMs
  qemu-system-x86 qemu-utils
  # build guest images (guest/build-tiny.sh)
  busybox-static qemu-guest-agent kmod e2fsprogs cpio zstd xz-utils
  # the egress NAT of virtual networks (src/vnet/egress_gateway.h); slirp.pc requires glib
  libslirp-dev libglib2.0-dev
  # NBD peers used by tests
  libnbd-bin python3-libnbd
  # tests/packaging_test.sh checks the systemd units with systemd-analyze
  systemd
  # the portal's browser test (tests/portal_browser_test.cc): headless Chromium,
  # driven from Node.js by playwright-core (installed below)
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU runs as this unprivileged user when the agent runs as root.
if [ "$(id -u)" -eq 0 ] && ! getent passwd vmgrid-qemu >/dev/null; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vmgrid-qemu
  echo "setup: created system user vmgrid-qemu"
fi
# The browser test's driver, pinned by tests/ui/package-lock.json, into
# tests/ui/node_modules (playwright-core only: it downloads no browser and
# drives Debian's /usr/bin/chromium). Node.js from Debian when the machine
# has none; `npm ci` again only when the lock file changed.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: installing nodejs npm"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
UI_DIR="$(cd "$(dirname "$0")/../tests/ui" && pwd)"
LOCK_SUM=$(sha256sum "$UI_DIR/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$UI_DIR/node_modules/.vmgrid-lock" 2>/dev/null)" != "$LOCK_SUM" ]; then
  echo "setup: npm ci in tests/ui (playwright-core for the portal's browser test)"
  (cd "$UI_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$LOCK_SUM" >"$UI_DIR/node_modules/.vmgrid-lock"
fi
echo "setup: all dependencies present"
