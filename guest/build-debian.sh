#!/usr/bin/env bash
# Build the "debian" vmgrid guest image: a realistic Debian 12 (bookworm)
# system with systemd, udev and the packaged qemu-guest-agent, made from
# Debian packages only (debootstrap + apt in a chroot).
#
#   guest/build-debian.sh [OUTDIR]      (default: <repo>/build/images/debian)
#
# Outputs (all mode 0644): vmlinuz, vmlinux (PVH, when extractable),
# initrd.img, rootfs.raw, manifest.json (same keys as the tiny image) and
# packages.txt (the exact package set, "name version" per line).
# See docs/guest-images.md, section "The debian image".
#
# Needs root (debootstrap, chroot, mount of /proc in the chroot) and network
# access to the Debian archive.  The build is skipped when OUTDIR/manifest.json
# already records the same inputs_digest: this script plus the exact package
# versions that apt (with the host's package lists) resolves for the image.
#
# Environment:
#   DEBIAN_CACHE       .deb cache dir (default <repo>/build/images/.debian-cache)
#   DEBIAN_MIRROR      archive URL (default: the .../debian URI of the host's
#                      apt sources; the script names no archive host itself)
#   DEBIAN_SECURITY_MIRROR   (default: the host's .../debian-security URI, else
#                      debian-security beside DEBIAN_MIRROR)
#   DEBIAN_VERBOSE=1   print build details on stderr
#   DEBIAN_FORCE=1     rebuild even if the digest matches
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
OUTDIR=${1:-$REPO_ROOT/build/images/debian}
CACHE=${DEBIAN_CACHE:-$REPO_ROOT/build/images/.debian-cache}
VERBOSE=${DEBIAN_VERBOSE:-0}

# What the image is booted with.  Keep in sync with docs/guest-images.md.
IMAGE_NAME=debian
SUITE=bookworm
APPEND="console=ttyS0 root=/dev/vda rw quiet"
MIN_MEMORY_MB=256
DISK_SIZE_MB=2048
JOURNAL_MB=32
GUEST_HOSTNAME=debian
# Installed on top of debootstrap's minbase (required packages + apt), without
# Recommends.  The kernel comes last so the initramfs is generated only once.
PACKAGES="systemd-sysv udev dbus kmod qemu-guest-agent iproute2 iputils-ping procps psmisc
 less vim-tiny ca-certificates curl python3 xz-utils zstd systemd-resolved netcat-openbsd"
KERNEL_PACKAGE=linux-image-amd64
# Modules in the initramfs (MODULES=list keeps it small; dependencies are added).
INITRAMFS_MODULES="virtio_pci virtio_blk virtio_console ext4"
# Units that only cost boot time or do periodic work a short-lived VM does not need.
MASK_UNITS="apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer
 e2scrub_reap.service fstrim.timer systemd-tmpfiles-clean.timer systemd-networkd-wait-online.service
 systemd-pstore.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
 sys-kernel-debug.mount sys-kernel-tracing.mount modprobe@drm.service"

log() { if [[ $VERBOSE == 1 ]]; then echo "build-debian: $*" >&2; fi; }
die() { echo "build-debian: error: $*" >&2; exit 1; }

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export LC_ALL=C
[[ $EUID == 0 ]] || die "must run as root (debootstrap and chroot need it)"
for tool in apt-get apt-config dpkg mkfs.ext4 chroot mount umount sha256sum flock find sort truncate xz od dd; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (apt-get install apt dpkg e2fsprogs coreutils util-linux mount xz-utils)"
done
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "debian: debootstrap is not installed; installing it with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 ||
        die "apt-get install debootstrap failed (install it by hand)"
fi

# ---------------------------------------------------------------- inputs ---

# The mirror: the archive the host's apt already uses (on these machines
# only that one is reachable), read from its sources: one-line `deb [opts]
# URI suite…` entries and deb822 `URIs:` fields. No host name is built in.
host_uri() {  # PATH_SUFFIX (debian | debian-security) -> URI or empty
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && cat "$f"
    done 2>/dev/null |
        sed -n -E -e 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
            -e 's/^[[:space:]]*URIs:[[:space:]]*(.*)$/\1/p' |
        tr -s ' \t' '\n\n' | grep -E "^[a-z+]+://.*/$1/?\$" | head -n1 | sed 's:/*$::' || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_uri debian)}
[[ -n $MIRROR ]] || die "no .../debian archive in the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/*.sources); set DEBIAN_MIRROR"
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-$(host_uri debian-security)}
SECURITY_MIRROR=${SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

# Resolve the full package set with the host's apt lists, as if installing
# into an empty system: Priority: required + apt + PACKAGES + kernel
# (+ usr-is-merged, which debootstrap picks over usrmerge).
main_packages_index() {
    apt-get indextargets --format '$(FILENAME)' 'Created-By: Packages' "Codename: $SUITE" \
        'Component: main' "Architecture: $(dpkg --print-architecture)" 2>/dev/null | head -n1
}
INDEX=$(main_packages_index)
if [[ -z $INDEX || ! -f $INDEX ]] || ! apt-cache show --no-all-versions "$KERNEL_PACKAGE" >/dev/null 2>&1; then
    log "apt lists for $SUITE missing, running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (needs Debian's archive)"
    INDEX=$(main_packages_index)
    [[ -n $INDEX && -f $INDEX ]] || die "the host's apt sources have no '$SUITE main' index; add $MIRROR $SUITE main"
fi
mapfile -t REQUIRED < <(/usr/lib/apt/apt-helper cat-file "$INDEX" |
    awk '/^Package:/ {p = $2} /^Priority: required$/ {print p}' | sort -u)
((${#REQUIRED[@]} > 10)) || die "found only ${#REQUIRED[@]} Priority: required packages in $INDEX"
EMPTY_STATUS=$(mktemp)
# shellcheck disable=SC2086
if ! RESOLVED=$(apt-get -s -q -o Dir::State::status="$EMPTY_STATUS" -o APT::Install-Recommends=false \
    -o Debug::NoLocking=true install "${REQUIRED[@]}" apt usr-is-merged $PACKAGES "$KERNEL_PACKAGE" 2>&1); then
    rm -f "$EMPTY_STATUS"
    echo "$RESOLVED" >&2
    die "apt cannot resolve the image's package set (see above)"
fi
rm -f "$EMPTY_STATUS"
# "Inst NAME (VERSION SUITES [ARCH])" -> "NAME VERSION"
PKGSET=$(sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1 \2/p' <<<"$RESOLVED" | sort)
(($(wc -l <<<"$PKGSET") > 50)) || die "apt resolved an implausibly small package set:"$'\n'"$PKGSET"
KPKG_LINE=$(grep -E '^linux-image-[0-9][^ ]*-amd64 ' <<<"$PKGSET" | head -n1) ||
    die "the resolved package set has no linux-image-*-amd64"

DIGEST_TEXT=$(
    echo "script-sha256 $(sha256sum <"$SCRIPT_PATH" | cut -d' ' -f1)"
    echo "arch $(dpkg --print-architecture)"
    echo "suite $SUITE"
    echo "e2fsprogs $(dpkg-query -W -f='${Version}' e2fsprogs 2>/dev/null || true)"
    echo "$PKGSET"
)
INPUTS_DIGEST="sha256:$(printf '%s\n' "$DIGEST_TEXT" | sha256sum | cut -d' ' -f1)"
log "mirror $MIRROR, security $SECURITY_MIRROR, $(wc -l <<<"$PKGSET") packages, kernel $KPKG_LINE"

# ------------------------------------------------------------ cache check ---

OUTDIR=$(realpath -m "$OUTDIR")
OUTPARENT=$(dirname "$OUTDIR")
mkdir -p "$OUTPARENT"
exec 9>"$OUTPARENT/.$(basename "$OUTDIR").lock"
flock 9   # serialize concurrent builds of the same OUTDIR

manifest_digest() {
    [[ -f $1/manifest.json ]] || return 0
    sed -n 's/.*"inputs_digest": *"\([^"]*\)".*/\1/p' "$1/manifest.json" | head -n1
}
if [[ ${DEBIAN_FORCE:-0} != 1 && "$(manifest_digest "$OUTDIR")" == "$INPUTS_DIGEST" ]] &&
    [[ -s $OUTDIR/vmlinuz && -s $OUTDIR/initrd.img && -s $OUTDIR/rootfs.raw ]]; then
    echo "debian: cached ($OUTDIR, ${KPKG_LINE/ /=}, $INPUTS_DIGEST)"
    exit 0
fi
echo "debian: building $OUTDIR ($SUITE from $MIRROR, ${KPKG_LINE/ /=}; a few minutes)"

# ------------------------------------------------------------------ build ---

# Unmount everything below DIR (deepest first).  Never rm -rf a chroot with
# the host's /proc or /dev still mounted in it.
umount_below() {
    local dir m
    dir=$(realpath -m "$1")
    for _ in 1 2 3; do
        mapfile -t ms < <(awk -v d="$dir/" 'index($2 "/", d) == 1 {print $2}' /proc/mounts | sort -r)
        ((${#ms[@]} > 0)) || return 0
        for m in "${ms[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    done
    awk -v d="$dir/" 'index($2 "/", d) == 1 {found = 1} END {exit !found}' /proc/mounts &&
        die "cannot unmount file systems below $dir"
    return 0
}
safe_rm() {  # DIR...
    local d
    for d in "$@"; do
        [[ -e $d ]] || continue
        umount_below "$d"
        rm -rf --one-file-system "$d"
    done
}

# We hold the lock, so any leftover build dir is from a killed build.
for old in "$OUTPARENT/.$(basename "$OUTDIR").build."*; do safe_rm "$old"; done
WORK=$(mktemp -d "$OUTPARENT/.$(basename "$OUTDIR").build.XXXXXX")
cleanup() { safe_rm "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

ROOT=$WORK/root
mkdir -p "$CACHE/debootstrap" "$CACHE/apt"
START_TIME=$SECONDS
step() { echo "debian: [$((SECONDS - START_TIME))s] $*"; }

# --- debootstrap (minbase) ----------------------------------------------------
# The .debs are kept in $CACHE/debootstrap; debootstrap re-downloads any file
# whose checksum does not match the Release file, so a stale cache is harmless.
step "debootstrap --variant=minbase $SUITE"
ok=0
for attempt in 1 2; do
    if debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        ok=1
        break
    fi
    echo "debian: debootstrap attempt $attempt failed; last lines of its log:" >&2
    tail -n 15 "$WORK/debootstrap.log" >&2
    [[ -f $ROOT/debootstrap/debootstrap.log ]] && tail -n 15 "$ROOT/debootstrap/debootstrap.log" >&2
    safe_rm "$ROOT"
done
((ok)) || die "debootstrap $SUITE from $MIRROR failed twice"
umount_below "$ROOT"

# --- chroot setup -------------------------------------------------------------
in_root() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}
mount -t proc -o nosuid,nodev,noexec proc "$ROOT/proc"
# Keep services from starting inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cat >"$ROOT/etc/apt/apt.conf.d/90vmgrid" <<'EOF'
// vmgrid debian image: no Recommends/Suggests, retry flaky downloads.
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
EOF
# Reuse (hard links, same file system) the .debs apt fetched in earlier builds.
find "$CACHE/apt" -maxdepth 1 -name '*.deb' -exec ln -f -t "$ROOT/var/cache/apt/archives/" {} + 2>/dev/null ||
    find "$CACHE/apt" -maxdepth 1 -name '*.deb' -exec cp -t "$ROOT/var/cache/apt/archives/" {} +

apt_in_root() {  # LABEL apt-get-args...
    local label=$1
    shift
    if ! in_root apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" \
        >>"$WORK/apt.log" 2>&1; then
        tail -n 30 "$WORK/apt.log" >&2
        die "$label failed in the chroot (apt-get $*)"
    fi
}
step "apt-get update + dist-upgrade ($SUITE, $SUITE-updates, $SUITE-security)"
apt_in_root "apt-get update" update
apt_in_root "apt-get dist-upgrade" dist-upgrade
step "installing initramfs-tools"
apt_in_root "installing initramfs-tools" install initramfs-tools

# initramfs: only the listed virtio/ext4 modules (the default MODULES=most
# makes a much bigger initrd that is slower to load under TCG), no resume.
for m in $INITRAMFS_MODULES; do
    grep -qx "$m" "$ROOT/etc/initramfs-tools/modules" || echo "$m" >>"$ROOT/etc/initramfs-tools/modules"
done
cat >"$ROOT/etc/initramfs-tools/conf.d/vmgrid.conf" <<'EOF'
# vmgrid debian image: virtio guest, modules from /etc/initramfs-tools/modules only.
MODULES=list
RESUME=none
COMPRESS=zstd
EOF

step "installing $(echo $PACKAGES) $KERNEL_PACKAGE"
# shellcheck disable=SC2086
apt_in_root "installing the packages" install $PACKAGES "$KERNEL_PACKAGE"

PACKAGES_TXT=$(in_root dpkg-query -W -f='${Package} ${Version}\n' | sort)
# Keep the downloaded .debs for the next build.
find "$ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -newer "$ROOT/etc/apt/apt.conf.d/90vmgrid" \
    -exec cp -f -t "$CACHE/apt/" {} +
# Prune .debs of versions the image no longer uses.
while IFS= read -r f; do
    n=$(basename "$f")
    pkg=${n%%_*}
    ver=${n#*_}; ver=${ver%_*}; ver=${ver//%3a/:}
    grep -qxF "$pkg $ver" <<<"$PACKAGES_TXT" || rm -f "$f"
done < <(find "$CACHE/apt" -maxdepth 1 -name '*.deb')

# --- configuration -------------------------------------------------------------
step "configuring systemd, fstab, serial console"
mapfile -t kvers < <(ls "$ROOT/lib/modules")
((${#kvers[@]} == 1)) || die "expected one kernel in the image, found: ${kvers[*]}"
KVER=${kvers[0]}
[[ -f $ROOT/boot/vmlinuz-$KVER && -f $ROOT/boot/initrd.img-$KVER ]] ||
    die "the kernel package did not leave /boot/vmlinuz-$KVER and /boot/initrd.img-$KVER"

echo "$GUEST_HOSTNAME" >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$GUEST_HOSTNAME" >"$ROOT/etc/hosts"
# Pass 0: no fsck of the root (every VM boots a fresh overlay; the journal is
# replayed on mount anyway), so the initramfs carries no fsck and skips it.
cat >"$ROOT/etc/fstab" <<'EOF'
# vmgrid debian image: the root disk is attached as /dev/vda (virtio-blk).
/dev/vda  /  ext4  rw,errors=remount-ro  0 0
EOF
# Each VM gets its own machine-id at first boot (written into its overlay).
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
mkdir -p "$ROOT/etc/systemd/journald.conf.d" "$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d"
cat >"$ROOT/etc/systemd/journald.conf.d/vmgrid.conf" <<'EOF'
# Journal in RAM only: nothing to flush at boot, no writes into the VM overlay.
[Journal]
Storage=volatile
RuntimeMaxUse=16M
EOF
rm -rf "$ROOT/var/log/journal"
# Root shell on the serial console (like the tiny image); the console is only
# visible on the host (QEMU -serial file:...).
cat >"$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM
EOF
# qemu-ga: Debian's unit waits for udev to announce the port device, which
# under TCG comes after udev's coldplug, ~10-30 s into userspace.  This full
# override (same name, so the package's udev rule still points at it) starts
# from sysinit.target without default dependencies and polls sysfs for the
# port itself; virtio_console is already loaded by the initramfs and devtmpfs
# has the /dev/vportNpM node.  The guest may still be booting when the agent
# first answers (`systemctl is-system-running --wait` waits for the rest).
cat >"$ROOT/usr/local/sbin/vmgrid-qga-run" <<'EOF2'
#!/bin/sh
# vmgrid: run qemu-ga on the virtio-serial port org.qemu.guest_agent.0 as soon
# as it exists, without waiting for udev.
name=org.qemu.guest_agent.0
i=0
while :; do
    for d in /sys/class/virtio-ports/vport*; do
        [ -r "$d/name" ] && [ "$(cat "$d/name")" = "$name" ] && [ -c "/dev/${d##*/}" ] &&
            exec /usr/sbin/qemu-ga --method=virtio-serial --path="/dev/${d##*/}"
    done
    [ $i -eq 0 ] && /sbin/modprobe -q virtio_console 2>/dev/null
    i=$((i + 1))
    if [ $i -lt 250 ]; then
        sleep 0.02
    else
        [ $i -eq 250 ] && echo "vmgrid-qga-run: waiting for virtio-serial port $name"
        sleep 1
    fi
done
EOF2
chmod 0755 "$ROOT/usr/local/sbin/vmgrid-qga-run"
cat >"$ROOT/etc/systemd/system/qemu-guest-agent.service" <<'EOF2'
# vmgrid: overrides /lib/systemd/system/qemu-guest-agent.service (see
# /usr/local/sbin/vmgrid-qga-run) so the agent answers early in the boot.
[Unit]
Description=QEMU Guest Agent
DefaultDependencies=no
After=systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStart=/usr/local/sbin/vmgrid-qga-run
Restart=always
RestartSec=0

[Install]
WantedBy=sysinit.target
EOF2
mkdir -p "$ROOT/etc/systemd/system/sysinit.target.wants"
ln -sfn /etc/systemd/system/qemu-guest-agent.service "$ROOT/etc/systemd/system/sysinit.target.wants/qemu-guest-agent.service"
# guest-shutdown runs "/sbin/shutdown -h -P +0 msg".  systemd 252's shutdown
# hands any "+N" to logind over D-Bus, which does not run yet in the early
# boot phase where the agent already answers ("Failed to connect to bus").
# A diverted wrapper falls back to an immediate systemctl poweroff/reboot/halt,
# which talks to PID 1 directly.
in_root dpkg-divert --quiet --local --rename --divert /sbin/shutdown.systemd --add /sbin/shutdown ||
    die "dpkg-divert of /sbin/shutdown failed in the chroot"
cat >"$ROOT/sbin/shutdown" <<'EOF2'
#!/bin/sh
# vmgrid: wrapper around systemd's shutdown (diverted to /sbin/shutdown.systemd).
# Early in the boot D-Bus/logind are not up and "shutdown +0" fails; then an
# immediate request goes straight to PID 1 with systemctl.
/sbin/shutdown.systemd "$@" && exit 0
rc=$?
now=0 action=poweroff
for a in "$@"; do
    case $a in
    now | +0) now=1 ;;
    -r | --reboot) action=reboot ;;
    -H | --halt) action=halt ;;
    -c | -k | --help | --version) exit $rc ;;
    esac
done
[ $now = 1 ] || exit $rc
echo "shutdown: falling back to systemctl $action" >&2
exec /bin/systemctl --no-block "$action"
EOF2
chmod 0755 "$ROOT/sbin/shutdown"

# --- networking ------------------------------------------------------------------
# systemd-networkd runs DHCP on every virtio NIC; systemd-resolved takes the
# DNS servers and search domains it learns (/etc/resolv.conf -> its stub).
# vmgrid.netN=ADDR/PREFIX[,GATEWAY] | off | dhcp on the kernel command line
# overrides NIC N (PCI slot 0x10+N, as src/vmm places it), like the tiny image.
step "configuring systemd-networkd and systemd-resolved"
mkdir -p "$ROOT/etc/systemd/network" "$ROOT/etc/systemd/system-generators"
cat >"$ROOT/etc/systemd/network/80-vmgrid-virtio.network" <<'EOF2'
# vmgrid: DHCP (IPv4) on every virtio NIC.  The switch answers DHCP and DNS.
[Match]
Driver=virtio_net

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
ClientIdentifier=mac
UseDomains=yes
UseHostname=yes
EOF2
cat >"$ROOT/etc/systemd/system-generators/vmgrid-net-generator" <<'EOF2'
#!/bin/sh
# vmgrid: vmgrid.netN=ADDR/PREFIX[,GATEWAY] | off | dhcp on the kernel command
# line -> /run/systemd/network/10-vmgrid-netN.network for the NIC at PCI slot
# 0x10+N (it sorts before 80-vmgrid-virtio.network, so it wins).
out=/run/systemd/network
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case $arg in vmgrid.net[0-9]*=*) ;; *) continue ;; esac
    key=${arg%%=*} val=${arg#*=}
    n=${key#vmgrid.net}
    case $n in '' | *[!0-9]*) continue ;; esac
    [ "$n" -lt 8 ] || continue
    slot=$(printf '%02x' $((16 + n)))
    f=$out/10-vmgrid-net$n.network
    mkdir -p $out
    case $val in
    off) printf '[Match]\nPath=pci-0000:00:%s.0\n\n[Link]\nUnmanaged=yes\n' "$slot" >"$f" ;;
    dhcp) rm -f "$f" ;;
    */*)
        addr=${val%%,*} gw=''
        case $val in *,*) gw=${val#*,} ;; esac
        {
            printf '[Match]\nPath=pci-0000:00:%s.0\n\n[Network]\nAddress=%s\n' "$slot" "$addr"
            printf 'LinkLocalAddressing=no\nIPv6AcceptRA=no\n'
            [ -z "$gw" ] || printf 'Gateway=%s\n' "$gw"
        } >"$f"
        ;;
    esac
done
exit 0
EOF2
chmod 0755 "$ROOT/etc/systemd/system-generators/vmgrid-net-generator"
in_root systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1 ||
    die "systemctl enable systemd-networkd systemd-resolved failed in the chroot"

# shellcheck disable=SC2086
for u in $MASK_UNITS; do ln -sfn /dev/null "$ROOT/etc/systemd/system/$u"; done
in_root systemctl set-default multi-user.target >/dev/null 2>&1 || die "systemctl set-default failed in the chroot"

cat >"$ROOT/etc/profile.d/vmgrid.sh" <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF

# --- cleanup of the tree ------------------------------------------------------
in_root apt-get clean
rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/etc/resolv.conf"
umount_below "$ROOT"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old \
    "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/root/.bash_history "$ROOT/debootstrap"
mkdir -p "$ROOT/var/lib/apt/lists/partial"
find "$ROOT/var/log" -type f \( -name '*.log' -o -name '*.gz' \) -delete
# systemd-resolved's stub (127.0.0.53, with the DHCP search domains).
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"

# ---------------------------------------------------------------- outputs ---
OUT=$WORK/out
mkdir -p "$OUT"
step "writing outputs"
install -m 0644 "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
install -m 0644 "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"
printf '%s\n' "$PACKAGES_TXT" >"$OUT/packages.txt"

# Optional fast-boot kernel: the same Debian kernel decompressed out of the
# bzImage into its ELF vmlinux (CONFIG_PVH=y), booted via the PVH entry point,
# which skips ~2.5 s of in-guest decompression under TCG.  Same as build-tiny.sh.
extract_vmlinux() {  # BZIMAGE DEST
    local bz=$1 dest=$2 setup_sects payload_off payload_len start magic
    [[ "$(od -An -c -j $((0x202)) -N4 "$bz" | tr -d ' ')" == HdrS ]] || return 1
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    ((setup_sects == 0)) && setup_sects=4
    payload_off=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    payload_len=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    start=$(((setup_sects + 1) * 512 + payload_off))
    magic=$(od -An -tx1 -j "$start" -N4 "$bz" | tr -d ' ')
    local decomp
    case $magic in
    fd377a58) decomp=(xz -dc --single-stream) ;;
    1f8b*) decomp=(gzip -dc) ;;
    28b52ffd) decomp=(zstd -qdc) ;;
    *) return 1 ;;
    esac
    dd if="$bz" bs=64K iflag=skip_bytes,count_bytes skip="$start" count=$((payload_len - 4)) status=none |
        "${decomp[@]}" >"$dest" || return 1
    [[ "$(od -An -c -N4 "$dest" | tr -d ' ')" == '177ELF' ]] || return 1
    [[ "$(stat -c %s "$dest")" == "$(od -An -tu4 -j $((start + payload_len - 4)) -N4 "$bz" | tr -d ' ')" ]]
}
KERNEL_PVH=
if grep -qx 'CONFIG_PVH=y' "$ROOT/boot/config-$KVER" && extract_vmlinux "$OUT/vmlinuz" "$OUT/vmlinux"; then
    KERNEL_PVH=vmlinux
else
    rm -f "$OUT/vmlinux"
    log "no PVH vmlinux (CONFIG_PVH off or unknown bzImage payload)"
fi

# Stable file system UUID per inputs digest.
fs_uuid=$(echo "$INPUTS_DIGEST" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
truncate -s "${DISK_SIZE_MB}M" "$OUT/rootfs.raw"
# Regular-file target: mke2fs punches holes (discard) and marks the inode
# tables zeroed, so the image stays sparse and ext4lazyinit has nothing to do.
E2FSPROGS_FAKE_TIME=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$OUT/vmlinuz")} \
    mkfs.ext4 -q -F -t ext4 -b 4096 -m 1 -J size=$JOURNAL_MB -L vmgrid-debian -U "$fs_uuid" \
    -E "discard,hash_seed=$fs_uuid,root_owner=0:0" \
    -d "$ROOT" "$OUT/rootfs.raw" >"$WORK/mkfs.log" 2>&1 || { cat "$WORK/mkfs.log" >&2; die "mkfs.ext4 -d failed"; }

cat >"$OUT/manifest.json" <<EOF
{
  "name": "$IMAGE_NAME",
  "kernel": "${KERNEL_PVH:-vmlinuz}",
  "kernel_bzimage": "vmlinuz",
  "initrd": "initrd.img",
  "disk": "rootfs.raw",
  "disk_format": "raw",
  "append": "$APPEND",
  "min_memory_mb": $MIN_MEMORY_MB,
  "kernel_version": "$KVER",
  "inputs_digest": "$INPUTS_DIGEST"
}
EOF
chmod 0644 "$OUT"/*
chmod 0755 "$OUT"
if ! diff -q <(cut -d' ' -f1,2 <<<"$PACKAGES_TXT") <(printf '%s\n' "$PKGSET") >/dev/null; then
    echo "debian: note: installed packages differ from the set resolved with the host's apt lists" \
        "(run apt-get update on the host so the inputs digest follows the archive):" >&2
    diff <(printf '%s\n' "$PKGSET") <(printf '%s\n' "$PACKAGES_TXT") | grep '^[<>]' | head -n 20 >&2 || true
fi

# Swap into place: OUTDIR is either the old complete image, absent (rerun
# rebuilds) or the new complete image -- never a partial one.
if [[ -e $OUTDIR ]]; then
    mv -T "$OUTDIR" "$WORK/old"
fi
mv -T "$OUT" "$OUTDIR"
step "done: $OUTDIR, kernel $KVER, rootfs.raw $(du -m --apparent-size "$OUTDIR/rootfs.raw" | cut -f1) MiB virtual," \
    "$(du -m "$OUTDIR/rootfs.raw" | cut -f1) MiB allocated"
