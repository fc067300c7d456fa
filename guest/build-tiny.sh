#!/usr/bin/env bash
# Build the "tiny" vmgrid guest image from Debian packages only.
#
#   guest/build-tiny.sh [OUTDIR]        (default: <repo>/build/images/tiny)
#
# Outputs (all mode 0644): vmlinuz, initrd.img, rootfs.raw, manifest.json.
# See docs/guest-images.md for what is inside and how it boots.
#
# Inputs: the kernel package that linux-image-amd64 depends on (fetched with
# `apt-get download` into a .deb cache, never installed), plus the host's
# installed busybox-static and qemu-guest-agent (and the shared libraries that
# qemu-ga links against).  The build is skipped when OUTDIR/manifest.json
# already records the same inputs_digest (this script + exact package versions).
#
# Environment:
#   TINY_DEB_CACHE   .deb cache dir (default <repo>/build/images/.debs)
#   TINY_VERBOSE=1   print build details on stderr
#   TINY_FORCE=1     rebuild even if the digest matches
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
OUTDIR=${1:-$REPO_ROOT/build/images/tiny}
DEB_CACHE=${TINY_DEB_CACHE:-$REPO_ROOT/build/images/.debs}
VERBOSE=${TINY_VERBOSE:-0}

# What the image is booted with.  Keep in sync with docs/guest-images.md.
IMAGE_NAME=tiny
APPEND="console=ttyS0 root=/dev/vda rw quiet"
MIN_MEMORY_MB=128
DISK_SIZE_MB=128
DISK_INODES=8192
GUEST_HOSTNAME=tiny
# Kernel modules loaded by the initramfs (dependencies are resolved with depmod).
MODULES_REQUIRED="virtio_pci virtio_blk virtio_console ext4"
MODULES_OPTIONAL="virtio_rng vmgenid"
# Loaded only when the VM has a virtio-net device (PCI 1af4:1000 or 1af4:1041),
# so a VM without NICs boots exactly as before.
MODULES_NIC="virtio_net"

log() { if [[ $VERBOSE == 1 ]]; then echo "build-tiny: $*" >&2; fi; }
die() { echo "build-tiny: error: $*" >&2; exit 1; }

# depmod/modprobe/mkfs live in /sbin which may not be on a non-root PATH.
export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C
for tool in apt-get apt-cache dpkg-deb dpkg-query depmod modprobe mkfs.ext4 cpio gzip sha256sum ldd flock find sort truncate; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (apt-get install kmod e2fsprogs cpio gzip apt dpkg util-linux)"
done

# ---------------------------------------------------------------- inputs ---

installed_version() {  # PKG -> version, or empty when not installed
    local st
    st=$(dpkg-query -W -f='${db:Status-Abbrev}|${Version}' "$1" 2>/dev/null || true)
    [[ $st == ii* ]] && echo "${st#*|}"
    return 0
}

# Kernel: the linux-image-*-amd64 package that the candidate linux-image-amd64
# depends on.  (apt-cache is slow here, ~0.5 s a call, so call it only twice.)
if ! KMETA_INFO=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null) || [[ -z $KMETA_INFO ]]; then
    log "apt lists missing, running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (needs root and Debian's archive)"
    KMETA_INFO=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null) ||
        die "apt-cache does not know linux-image-amd64 even after apt-get update"
fi
KMETA_VER=$(sed -n 's/^Version: //p' <<<"$KMETA_INFO" | head -n1)
# Depends: linux-image-6.1.0-NN-amd64 (= VERSION)
read -r KPKG KPKG_VER < <(sed -n 's/^Depends: //p' <<<"$KMETA_INFO" | tr ',|' '\n\n' |
    sed -n 's/^ *\(linux-image-[0-9][^ ]*-amd64\)\( *(= *\([^)]*\))\)\{0,1\}.*$/\1 \3/p' | head -n1) || true
[[ -n ${KPKG:-} ]] || die "cannot find the linux-image-*-amd64 dependency of linux-image-amd64=$KMETA_VER"
if [[ -n ${KPKG_VER:-} ]]; then
    KPKG_INFO=$(apt-cache show --no-all-versions "$KPKG=$KPKG_VER" 2>/dev/null) || die "apt-cache has no $KPKG=$KPKG_VER"
else
    KPKG_INFO=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null) || die "apt-cache has no $KPKG"
    KPKG_VER=$(sed -n 's/^Version: //p' <<<"$KPKG_INFO" | head -n1)
fi
KPKG_SHA256=$(sed -n 's/^SHA256: //p' <<<"$KPKG_INFO" | head -n1)

BUSYBOX_BIN=/bin/busybox
QGA_BIN=/usr/sbin/qemu-ga
BUSYBOX_VER=$(installed_version busybox-static)
QGA_VER=$(installed_version qemu-guest-agent)
[[ -n $BUSYBOX_VER ]] || die "busybox-static is not installed (apt-get install busybox-static)"
[[ -n $QGA_VER ]] || die "qemu-guest-agent is not installed (apt-get install qemu-guest-agent)"
[[ -x $BUSYBOX_BIN && -x $QGA_BIN ]] || die "$BUSYBOX_BIN or $QGA_BIN missing although the packages are installed"
E2FS_VER=$(installed_version e2fsprogs)

# Shared libraries of qemu-ga (absolute paths as ldd prints them).
mapfile -t QGA_LIBS < <(ldd "$QGA_BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
((${#QGA_LIBS[@]} > 0)) || die "ldd $QGA_BIN listed no libraries"
# Owning package and version of each library (one dpkg-query call; on
# merged-/usr hosts dpkg may have registered either the /lib or /usr/lib path).
declare -A LIB_OWNER=()
lib_candidates() { echo "$1"; readlink -f "$1"; echo "/usr$1"; echo "${1#/usr}"; }
while IFS= read -r line; do
    owner=${line%%: /*}
    path=${line#*: }
    LIB_OWNER[$path]=${owner%%[:,]*}
done < <(for l in "${QGA_LIBS[@]}"; do lib_candidates "$l"; done | sort -u | xargs dpkg-query -S 2>/dev/null || true)
lib_package() {  # path -> "pkg=version"
    local cand p
    for cand in $(lib_candidates "$1"); do
        p=${LIB_OWNER[$cand]:-}
        if [[ -n $p ]]; then
            echo "$p=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null | head -n1)"
            return
        fi
    done
    echo "unowned:$(sha256sum <"$(readlink -f "$1")" | cut -d' ' -f1)"
}

DIGEST_TEXT=$(
    echo "script-sha256 $(sha256sum <"$SCRIPT_PATH" | cut -d' ' -f1)"
    echo "arch $(dpkg --print-architecture)"
    echo "kernel $KPKG=$KPKG_VER sha256=$KPKG_SHA256"
    echo "busybox-static=$BUSYBOX_VER"
    echo "qemu-guest-agent=$QGA_VER"
    echo "e2fsprogs=$E2FS_VER"
    for l in "${QGA_LIBS[@]}"; do echo "lib $(basename "$l") $(lib_package "$l")"; done
)
INPUTS_DIGEST="sha256:$(printf '%s\n' "$DIGEST_TEXT" | sha256sum | cut -d' ' -f1)"
log "inputs:"$'\n'"$DIGEST_TEXT"

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
if [[ ${TINY_FORCE:-0} != 1 && "$(manifest_digest "$OUTDIR")" == "$INPUTS_DIGEST" ]] &&
    [[ -s $OUTDIR/vmlinuz && -s $OUTDIR/initrd.img && -s $OUTDIR/rootfs.raw ]]; then
    echo "tiny: cached ($OUTDIR, $KPKG $KPKG_VER, $INPUTS_DIGEST)"
    exit 0
fi
echo "tiny: building $OUTDIR ($KPKG $KPKG_VER, busybox-static $BUSYBOX_VER, qemu-guest-agent $QGA_VER)"

# ------------------------------------------------------------------ build ---

# We hold the lock, so any leftover build dir is from a killed build.
rm -rf "$OUTPARENT/.$(basename "$OUTDIR").build."*
WORK=$(mktemp -d "$OUTPARENT/.$(basename "$OUTDIR").build.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- kernel package -------------------------------------------------------
mkdir -p "$DEB_CACHE"
find_cached_deb() {
    local f
    for f in "$DEB_CACHE/${KPKG}"_*.deb; do
        [[ -f $f ]] || continue
        [[ "$(dpkg-deb -f "$f" Package 2>/dev/null)" == "$KPKG" ]] || continue
        [[ "$(dpkg-deb -f "$f" Version 2>/dev/null)" == "$KPKG_VER" ]] || continue
        if [[ -n $KPKG_SHA256 && "$(sha256sum <"$f" | cut -d' ' -f1)" != "$KPKG_SHA256" ]]; then
            log "removing corrupt cached $f"
            rm -f "$f"
            continue
        fi
        echo "$f"
        return 0
    done
    return 1
}
if ! KDEB=$(find_cached_deb); then
    log "downloading $KPKG=$KPKG_VER into $DEB_CACHE"
    dl=$WORK/download
    mkdir -p "$dl"
    apt_opts=(-q)
    # apt's _apt sandbox user cannot write into root-owned build dirs.
    [[ $EUID == 0 ]] && apt_opts+=(-o APT::Sandbox::User=root)
    if ! (cd "$dl" && apt-get "${apt_opts[@]}" download "$KPKG=$KPKG_VER") >"$WORK/apt.log" 2>&1; then
        cat "$WORK/apt.log" >&2
        die "apt-get download $KPKG=$KPKG_VER failed"
    fi
    mv -f "$dl"/*.deb "$DEB_CACHE"/
    KDEB=$(find_cached_deb) || die "downloaded kernel package does not match $KPKG=$KPKG_VER"
fi
log "kernel package $KDEB"

KROOT=$WORK/kernel
dpkg-deb -x "$KDEB" "$KROOT"
mapfile -t kvers < <(ls "$KROOT/lib/modules")
((${#kvers[@]} == 1)) || die "expected one module tree in $KDEB, found: ${kvers[*]}"
KVER=${kvers[0]}
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
[[ -f $VMLINUZ ]] || die "$KDEB has no boot/vmlinuz-$KVER"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$VMLINUZ")}

# --- module list (dependency order) ---------------------------------------
depmod -b "$KROOT" "$KVER"
mkdir -p "$WORK/no-modprobe.d"
INITRD=$WORK/initrd
mkdir -p "$INITRD"/{bin,dev,proc,sys,newroot,run,tmp,lib/modules}
declare -A seen=()
: >"$INITRD/lib/modules/load.list"
add_module_chain() {  # MODULE required|optional
    local m=$1 kind=$2 out line path name opt
    if ! out=$(modprobe -C "$WORK/no-modprobe.d" -d "$KROOT" -S "$KVER" --show-depends "$m" 2>&1); then
        [[ $kind != required ]] || die "kernel $KVER has no module $m: $out"
        log "module $m: not available in $KVER, skipped"
        return 0
    fi
    while read -r line; do
        case $line in
        builtin\ *) log "module ${line#builtin }: built into the kernel" ;;
        insmod\ *)
            path=$(awk '{print $2}' <<<"$line")
            name=$(basename "$path")
            name=${name%.xz}; name=${name%.zst}; name=${name%.gz}; name=${name%.ko}
            [[ -z ${seen[$name]:-} ]] || continue
            seen[$name]=1
            case $path in
            *.ko) cp "$path" "$INITRD/lib/modules/$name.ko" ;;
            *.ko.xz) xz -dc "$path" >"$INITRD/lib/modules/$name.ko" ;;
            *.ko.zst) zstd -qdc "$path" >"$INITRD/lib/modules/$name.ko" ;;
            *.ko.gz) gzip -dc "$path" >"$INITRD/lib/modules/$name.ko" ;;
            *) die "unexpected module file $path" ;;
            esac
            # CPU-specific accelerations (arch/x86/crypto) may not load on every -cpu model.
            opt=$kind
            [[ $path == */kernel/arch/* && $kind == required ]] && opt=optional
            echo "$name $opt" >>"$INITRD/lib/modules/load.list"
            log "module $name ($opt)"
            ;;
        *) [[ -z $line ]] || die "unexpected modprobe output for $m: $line" ;;
        esac
    done <<<"$out"
}
for m in $MODULES_REQUIRED; do add_module_chain "$m" required; done
for m in $MODULES_OPTIONAL; do add_module_chain "$m" optional; done
for m in $MODULES_NIC; do add_module_chain "$m" nic; done

# --- initramfs --------------------------------------------------------------
install_busybox() {  # ROOT: busybox + applet symlinks (never overwriting existing files)
    local root=$1 a
    install -D -m 0755 "$BUSYBOX_BIN" "$root/bin/busybox"
    while read -r a; do
        [[ -z $a || $a == bin/busybox || $a == linuxrc ]] && continue
        [[ -e $root/$a || -L $root/$a ]] && continue
        mkdir -p "$root/$(dirname "$a")"
        ln -s /bin/busybox "$root/$a"
    done < <("$BUSYBOX_BIN" --list-full)
}
install_busybox "$INITRD"
rm -f "$INITRD/sbin/init"

cat >"$INITRD/init" <<'EOF'
#!/bin/busybox sh
# vmgrid tiny initramfs: load virtio/ext4 modules, mount root= and switch_root.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
/bin/busybox mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys

fail() {
    echo "tiny-initramfs: ERROR: $*"
    echo "tiny-initramfs: cannot boot; starting a rescue shell on the console"
    while :; do setsid cttyhack sh; sleep 1; done
}

root='' rootfstype=ext4 rootflags='' mode=rw init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case $arg in
    root=*) root=${arg#root=} ;;
    rootfstype=*) rootfstype=${arg#rootfstype=} ;;
    rootflags=*) rootflags=${arg#rootflags=} ;;
    init=*) init=${arg#init=} ;;
    ro) mode=ro ;;
    rw) mode=rw ;;
    esac
done

# The NIC driver loads whether or not a card is present: a guest resumed
# from a checkpoint taken without cards (an image's post-boot checkpoint)
# gets its cards afterwards, through a PCI rescan by vmgrid's agent, and
# nothing would load the driver then (the modules live only here, in the
# initramfs, and the guest has no hot-plug helper).
while read -r mod kind; do
    [ -n "$mod" ] || continue
    if ! insmod "/lib/modules/$mod.ko" 2>/tmp/insmod.err; then
        [ "$kind" = optional ] || echo "tiny-initramfs: warning: insmod $mod failed: $(cat /tmp/insmod.err)"
    fi
done </lib/modules/load.list

[ -n "$root" ] || fail "no root= on the kernel command line (expected e.g. root=/dev/vda)"
case $root in
/dev/*) ;;
*) fail "unsupported root=$root (only /dev/... device paths are supported)" ;;
esac
# virtio-blk probes synchronously, so the disk is normally there already.
i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ $i -le 150 ] || fail "root device $root not found after 3s; block devices: $(ls /sys/class/block 2>/dev/null | tr '\n' ' ')(is a virtio-blk disk attached?)"
    sleep 0.02
done
mount -t "$rootfstype" -o "$mode${rootflags:+,$rootflags}" "$root" /newroot ||
    fail "cannot mount $root ($rootfstype, $mode) on /newroot"
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || fail "$init not found on $root"
for fs in dev proc sys; do
    if [ -d "/newroot/$fs" ]; then mount --move "/$fs" "/newroot/$fs"; else umount "/$fs"; fi
done
exec switch_root /newroot "$init"
EOF
chmod 0755 "$INITRD/init"

# --- root filesystem ----------------------------------------------------------
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{dev,proc,sys,run,tmp,root,mnt,etc,var/log,var/tmp,usr/sbin,lib/x86_64-linux-gnu,lib64}
chmod 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"
chmod 0700 "$ROOTFS/root"
ln -s ../run "$ROOTFS/var/run"
install_busybox "$ROOTFS"
rm -f "$ROOTFS/sbin/init"

install -m 0755 "$QGA_BIN" "$ROOTFS/usr/sbin/qemu-ga"
for l in "${QGA_LIBS[@]}"; do
    case $l in
    /lib64/*) dest=$ROOTFS$l ;;
    *) dest=$ROOTFS/lib/x86_64-linux-gnu/$(basename "$l") ;;
    esac
    install -D -m 0755 "$(readlink -f "$l")" "$dest"
done
[[ -f $ROOTFS/lib64/ld-linux-x86-64.so.2 ]] || install -D -m 0755 "$(readlink -f /lib64/ld-linux-x86-64.so.2)" "$ROOTFS/lib64/ld-linux-x86-64.so.2"

echo "$GUEST_HOSTNAME" >"$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$GUEST_HOSTNAME" >"$ROOTFS/etc/hosts"
cat >"$ROOTFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOTFS/etc/group" <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
cat >"$ROOTFS/etc/shadow" <<'EOF'
root:*:1::::::
nobody:*:1::::::
EOF
chmod 0640 "$ROOTFS/etc/shadow"
cat >"$ROOTFS/etc/os-release" <<EOF
PRETTY_NAME="vmgrid tiny (Debian kernel $KVER, busybox)"
NAME="vmgrid tiny"
ID=vmgrid-tiny
ID_LIKE=debian
VERSION_ID="1"
EOF
cat >"$ROOTFS/etc/profile" <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
PS1='\h:\w\$ '
EOF
cat >"$ROOTFS/etc/fstab" <<'EOF'
/dev/vda  /     ext4   defaults             0 1
proc      /proc proc   nosuid,nodev,noexec  0 0
sysfs     /sys  sysfs  nosuid,nodev,noexec  0 0
tmpfs     /tmp  tmpfs  nosuid,nodev,mode=1777 0 0
EOF

cat >"$ROOTFS/sbin/init" <<'EOF'
#!/bin/sh
# vmgrid tiny: PID 1.  Mount the basics, then hand over to busybox init
# (/etc/inittab), which reaps orphans and respawns qemu-ga and the console shell.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mounted() { grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null; }
mounted /proc || mount -t proc -o nosuid,nodev,noexec proc /proc
mounted /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mounted /dev || mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mounted /dev/shm || mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mounted /tmp || mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mounted /run || mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mkdir -p /run/lock /root
hostname -F /etc/hostname
ip link set lo up 2>/dev/null
# Networking before the guest agent starts, so "the agent answers" means
# "the NICs are configured" in the usual case.  Bounded: no NIC costs a
# directory listing, a NIC without a DHCP server at most ~3 s (udhcpc then
# keeps trying in the background).
/sbin/net-up
[ -x /etc/rc.local ] && /etc/rc.local
exec /bin/busybox init
EOF

cat >"$ROOTFS/sbin/net-up" <<'EOF'
#!/bin/sh
# vmgrid tiny: configure every Ethernet NIC (ethN, in PCI order: vmgrid puts
# NIC N at slot 0x10+N).  Per NIC, from the kernel command line:
#   vmgrid.netN=ADDR/PREFIX[,GATEWAY]   static address (and default route)
#   vmgrid.netN=off                     leave the NIC down
#   (nothing, or vmgrid.netN=dhcp)      DHCP with udhcpc (/etc/udhcpc/vmgrid.script)
# All DHCP clients start at once; this returns when each has a lease or has
# sent 3 discovers 1 s apart, whichever comes first (udhcpc -b then goes on
# in the background).  No host name is sent (every tiny VM is "tiny"): the
# name comes from the server.  State and log: /run/net.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
set -- /sys/class/net/eth*
[ -e "$1" ] || exit 0
mkdir -p /run/net
read -r cmdline </proc/cmdline
log() { echo "net-up: $*"; echo "$*" >>/run/net/log; }
setting() {  # N -> the value of vmgrid.netN= (the last one wins), or ""
    v=
    for arg in $cmdline; do
        case $arg in vmgrid.net$1=*) v=${arg#vmgrid.net"$1"=} ;; esac
    done
    echo "$v"
}
for path in "$@"; do
    ifc=${path##*/}
    n=${ifc#eth}
    conf=$(setting "$n")
    case $conf in
    off) log "$ifc: off (vmgrid.net$n=off)" ;;
    '' | dhcp)
        ip link set "$ifc" up
        udhcpc -i "$ifc" -s /etc/udhcpc/vmgrid.script -p "/run/net/udhcpc.$ifc.pid" \
            -b -t 3 -T 1 -A 5 -O search >>/run/net/log 2>&1 &
        ;;
    */*)
        addr=${conf%%,*}
        gw=
        case $conf in *,*) gw=${conf#*,} ;; esac
        ip link set "$ifc" up
        if ip addr add "$addr" dev "$ifc"; then
            log "$ifc: static $addr"
        else
            log "$ifc: cannot set the static address $addr"
        fi
        if [ -n "$gw" ]; then
            ip route add default via "$gw" dev "$ifc" metric $((100 + n)) ||
                log "$ifc: cannot add a default route via $gw"
        fi
        ;;
    *) log "$ifc: ignoring malformed vmgrid.net$n=$conf (want ADDR/PREFIX[,GATEWAY], dhcp or off)" ;;
    esac
done
wait
exit 0
EOF

mkdir -p "$ROOTFS/etc/udhcpc"
cat >"$ROOTFS/etc/udhcpc/vmgrid.script" <<'EOF'
#!/bin/sh
# vmgrid tiny: udhcpc event script (started by /sbin/net-up).  Sets the
# address, the default route (metric 100+N for ethN, so several NICs can each
# have one), the host name if the server sent one, and /run/resolv.conf
# (/etc/resolv.conf links there) from the DNS servers and search domains of
# every NIC that holds a lease.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
state=/run/net
mkdir -p $state
ifc=$interface
n=${ifc#eth}
case $n in '' | *[!0-9]*) n=0 ;; esac
metric=$((100 + n))

write_resolv() {
    all_ns='' all_search=''
    for f in "$state"/*.dns; do
        [ -f "$f" ] || continue
        dns_servers='' dns_search=''
        . "$f"
        all_ns="$all_ns $dns_servers"
        all_search="$all_search $dns_search"
    done
    {
        echo "# written by /etc/udhcpc/vmgrid.script"
        set -- $all_search
        [ $# -eq 0 ] || echo "search $*"
        for s in $all_ns; do echo "nameserver $s"; done
    } >/run/resolv.conf.new && mv -f /run/resolv.conf.new /run/resolv.conf
}

case $1 in
deconfig)
    if [ -f "$state/$ifc.addr" ]; then
        ip addr del "$(cat "$state/$ifc.addr")" dev "$ifc" 2>/dev/null
        rm -f "$state/$ifc.addr"
    fi
    ip link set "$ifc" up
    rm -f "$state/$ifc.dns"
    write_resolv
    ;;
bound | renew)
    new="$ip/${mask:-24}"
    old=$(cat "$state/$ifc.addr" 2>/dev/null)
    if [ "$old" != "$new" ]; then
        [ -z "$old" ] || ip addr del "$old" dev "$ifc" 2>/dev/null
        ip addr add "$new" ${broadcast:+broadcast "$broadcast"} dev "$ifc"
        echo "$new" >"$state/$ifc.addr"
    fi
    [ -z "$mtu" ] || ip link set "$ifc" mtu "$mtu"
    while ip route del default dev "$ifc" 2>/dev/null; do :; done
    for r in $router; do
        ip route add default via "$r" dev "$ifc" metric $metric && break
    done
    # Values from the server are quoted for a shell only after dropping
    # anything but host-name characters.
    safe() { echo "$1" | tr -cd 'A-Za-z0-9.: -'; }
    {
        echo "dns_servers='$(safe "$dns")'"
        echo "dns_search='$(safe "${search:-$domain}")'"
    } >"$state/$ifc.dns"
    write_resolv
    h=$(safe "$hostname" | tr -d ' :')
    [ -z "$h" ] || hostname "$h"
    echo "$ifc: $1 $new router ${router:-none} dns ${dns:-none} lease ${lease:-?}s${h:+ hostname $h}" >>"$state/log"
    echo "$ifc: $new (dhcp)" >/dev/console 2>/dev/null
    ;;
leasefail | nak)
    echo "$ifc: $1" >>"$state/log"
    ;;
esac
exit 0
EOF
ln -sfn ../run/resolv.conf "$ROOTFS/etc/resolv.conf"

cat >"$ROOTFS/etc/inittab" <<'EOF'
# busybox init (started by /sbin/init)
::respawn:/sbin/qga-run
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
EOF

cat >"$ROOTFS/sbin/qga-run" <<'EOF'
#!/bin/sh
# Create /dev/virtio-ports/<name> links (there is no udev), then run the real
# qemu-ga in the foreground.  busybox init respawns this script when it exits.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
port=/dev/virtio-ports/org.qemu.guest_agent.0
link_ports() {
    for d in /sys/class/virtio-ports/vport*; do
        [ -r "$d/name" ] || continue
        n=$(cat "$d/name")
        [ -n "$n" ] || continue
        mkdir -p /dev/virtio-ports
        ln -sfn "../${d##*/}" "/dev/virtio-ports/$n"
    done
}
i=0
while link_ports; [ ! -e "$port" ]; do
    i=$((i + 1))
    if [ $i -lt 250 ]; then
        sleep 0.02
    else
        [ $i -eq 250 ] && echo "qga-run: waiting for virtio-serial port org.qemu.guest_agent.0"
        sleep 1
    fi
done
exec /usr/sbin/qemu-ga --method=virtio-serial --path="$port" --pidfile=/run/qemu-ga.pid --statedir=/run
EOF

cat >"$ROOTFS/sbin/shutdown" <<'EOF'
#!/bin/sh
# Minimal shutdown(8) for qemu-ga's guest-shutdown (`shutdown -h -P +0 msg`).
action=poweroff
for a in "$@"; do
    case $a in
    -r) action=reboot ;;
    -H) action=halt ;;
    esac
done
sync
exec /sbin/$action
EOF
chmod 0755 "$ROOTFS/sbin/init" "$ROOTFS/sbin/qga-run" "$ROOTFS/sbin/shutdown" "$ROOTFS/sbin/net-up" \
    "$ROOTFS/etc/udhcpc/vmgrid.script"

# ---------------------------------------------------------------- outputs ---
OUT=$WORK/out
mkdir -p "$OUT"
find "$INITRD" "$ROOTFS" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

install -m 0644 "$VMLINUZ" "$OUT/vmlinuz"

# Optional fast-boot kernel: the same Debian kernel, decompressed out of the
# bzImage into its ELF vmlinux.  With CONFIG_PVH=y, QEMU boots it directly
# (-kernel vmlinux, PVH entry) and skips the in-guest xz decompression, which
# costs ~2.5 s under TCG.  Recorded as "kernel_pvh" in the manifest.
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
    # The payload ends with the 4-byte uncompressed size (kbuild size_append).
    dd if="$bz" bs=64K iflag=skip_bytes,count_bytes skip="$start" count=$((payload_len - 4)) status=none |
        "${decomp[@]}" >"$dest" || return 1
    [[ "$(od -An -c -N4 "$dest" | tr -d ' ')" == '177ELF' ]] || return 1
    [[ "$(stat -c %s "$dest")" == "$(od -An -tu4 -j $((start + payload_len - 4)) -N4 "$bz" | tr -d ' ')" ]]
}
KERNEL_PVH=
if grep -qx 'CONFIG_PVH=y' "$KROOT/boot/config-$KVER" && extract_vmlinux "$VMLINUZ" "$OUT/vmlinux"; then
    KERNEL_PVH=vmlinux
else
    rm -f "$OUT/vmlinux"
    log "no PVH vmlinux (CONFIG_PVH off or unknown bzImage payload)"
fi
(cd "$INITRD" && find . -print0 | sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
    gzip -9 -n >"$OUT/initrd.img"

# Stable filesystem UUID per inputs digest.
fs_uuid=$(echo "$INPUTS_DIGEST" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
truncate -s "${DISK_SIZE_MB}M" "$OUT/rootfs.raw"
# Regular-file target: mke2fs punches holes (discard) and marks the inode
# tables zeroed, so the image stays sparse and the guest's ext4lazyinit has
# nothing to do.  A 4 MiB journal bounds how much journal an overlay can dirty.
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH \
    mkfs.ext4 -q -F -t ext4 -b 4096 -N "$DISK_INODES" -m 0 -J size=4 -L vmgrid-tiny -U "$fs_uuid" \
    -E "discard,hash_seed=$fs_uuid,root_owner=0:0" \
    -d "$ROOTFS" "$OUT/rootfs.raw" >"$WORK/mkfs.log" 2>&1 || { cat "$WORK/mkfs.log" >&2; die "mkfs.ext4 failed"; }
# mkfs -d copies each file's ctime (the build time) and, when not run as
# root, the builder's uid/gid: pin them so the image is reproducible and
# root-owned.
{
    echo "sif / ctime @$SOURCE_DATE_EPOCH"
    echo "sif /lost+found ctime @$SOURCE_DATE_EPOCH"
    (cd "$ROOTFS" && find . -mindepth 1) | sed 's|^\.||' | sort |
        while IFS= read -r f; do
            echo "sif \"$f\" ctime @$SOURCE_DATE_EPOCH"
            [[ $EUID == 0 ]] || printf 'sif "%s" uid 0\nsif "%s" gid 0\n' "$f" "$f"
        done
} >"$WORK/fixup.debugfs"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$WORK/fixup.debugfs" "$OUT/rootfs.raw" >/dev/null 2>"$WORK/debugfs.log" ||
    { cat "$WORK/debugfs.log" >&2; die "debugfs fix-up of rootfs.raw failed"; }
if grep -qiE 'error|invalid|not found|usage' "$WORK/debugfs.log"; then
    cat "$WORK/debugfs.log" >&2
    die "debugfs fix-up of rootfs.raw reported errors"
fi

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
log "outputs: $(cd "$OUT" && du -h --apparent-size ./* | tr '\n\t' '  ')"

# Swap into place: OUTDIR is either the old complete image, absent (rerun
# rebuilds) or the new complete image -- never a partial one.
if [[ -e $OUTDIR ]]; then
    mv -T "$OUTDIR" "$WORK/old"
fi
mv -T "$OUT" "$OUTDIR"
