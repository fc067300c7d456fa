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
  # chunks travel from the image server as zstd frames (src/chunks/chunk_codec.h)
  libzstd-dev
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
  # compiler cache: `make` in a fresh clone reuses earlier builds' objects
  ccache
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

# QEMU 10 from bookworm-backports (the default; VMGRID_QEMU_BACKPORTS=0 keeps
# Debian 12's QEMU 7.2). Under TCG QEMU 7.2's live migration loses guest
# stores, so vmgrid pauses a TCG guest while its RAM moves; QEMU >= 9.0 has the fix and migrates live
# (docs/migration.md, "QEMU 10 from backports"). The backports suite is added
# with the mirror this machine's Debian sources already use. Every host of a
# grid must run the same QEMU: migrations and checkpoints do not cross versions.
if [ "${VMGRID_QEMU_BACKPORTS:-1}" = 1 ]; then
  have=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  if [ -z "$have" ] || dpkg --compare-versions "$have" lt 1:9; then
    list=/etc/apt/sources.list.d/vmgrid-backports.sources
    if [ ! -e "$list" ]; then
      . /etc/os-release
      uri=$(awk -v s="$VERSION_CODENAME" '/^URIs:/ {u=$2} /^Suites:/ && $0 ~ ("[ ]" s "([ ]|$)") {print u; exit}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
      [ -n "$uri" ] || uri=$(awk -v s="$VERSION_CODENAME" '$1 == "deb" && $3 == s {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null || true)
      [ -n "$uri" ] || { echo "setup: no Debian mirror found in the apt sources" >&2; exit 1; }
      printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" "$VERSION_CODENAME" | $SUDO tee "$list" >/dev/null
      echo "setup: added $list"
    fi
    echo "setup: installing QEMU from ${VERSION_CODENAME:-bookworm}-backports (installed: ${have:-none})"
    $SUDO apt-get update -qq
    . /etc/os-release
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "qemu-system-x86/$VERSION_CODENAME-backports" "qemu-utils/$VERSION_CODENAME-backports" >/dev/null
  fi
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
