#!/usr/bin/env bash
# Boot a guest image with plain QEMU (TCG, the project's exact device set) on a
# throwaway qcow2 overlay and check the guest agent end to end:
#   guest-sync-delimited / guest-ping, guest-exec with captured output,
#   guest-file-open/read/close, the NIC (DHCP from QEMU's user-mode network:
#   address, default route, resolv.conf, host name), then QMP quit.
#
#   guest/smoke-test.sh [OUTDIR]            (default: <repo>/build/images/tiny)
#
# Environment:
#   SMOKE_SANDBOX=1     also pass "-sandbox on -runas nobody"
#   SMOKE_TIMEOUT=60    seconds to wait for the first guest-ping
#   SMOKE_KEEP=1        keep the temp dir (console.log, overlay) for inspection
#   SMOKE_KERNEL=FILE   kernel file inside OUTDIR (default: manifest "kernel")
#   SMOKE_APPEND=...    kernel command line (default: manifest "append")
#   SMOKE_MEMORY=MB     guest RAM (default: manifest "min_memory_mb", at least 256)
#   SMOKE_NET=1         one virtio-net NIC on QEMU's user-mode network (libslirp,
#                       restrict=on: its DHCP/DNS only, no way out); 0 = no NIC
#   SMOKE_NET_TIMEOUT=60  seconds to wait for the NIC's DHCP address after the agent answers
#   PYTHON=python3      interpreter for the socket client
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
OUT=$(realpath "${1:-$REPO_ROOT/build/images/tiny}")
TIMEOUT=${SMOKE_TIMEOUT:-60}
PYTHON=${PYTHON:-python3}

die() { echo "smoke-test: error: $*" >&2; exit 1; }
for f in vmlinuz initrd.img rootfs.raw manifest.json; do
    [[ -f $OUT/$f ]] || die "$OUT/$f missing (run guest/build-tiny.sh first)"
done
manifest_field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$OUT/manifest.json" | head -n1; }
APPEND=${SMOKE_APPEND:-$(manifest_field append)}
KERNEL=$OUT/${SMOKE_KERNEL:-$(manifest_field kernel)}
INITRD=$OUT/$(manifest_field initrd)
DISK=$OUT/$(manifest_field disk)
MIN_MEMORY=$(sed -n 's/.*"min_memory_mb": *\([0-9][0-9]*\).*/\1/p' "$OUT/manifest.json" | head -n1)
MEMORY=${SMOKE_MEMORY:-$((${MIN_MEMORY:-0} > 256 ? MIN_MEMORY : 256))}
[[ -n $APPEND ]] || die "no append line in $OUT/manifest.json"
[[ -f $KERNEL ]] || die "kernel $KERNEL missing"

T=$(mktemp -d /tmp/vmgrid-smoke.XXXXXX)
QEMU_PID=
cleanup() {
    if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if [[ ${SMOKE_KEEP:-0} == 1 ]]; then echo "smoke-test: kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT

qemu-img create -q -f qcow2 -b "$DISK" -F raw "$T/overlay.qcow2"

extra=()
NET=${SMOKE_NET:-1}
wrap=()
NET_ISOLATED=0
if [[ $NET == 1 ]]; then
    # libslirp sends a router and DNS server only when not restricted.  In a
    # network namespace of its own (no interface but a down loopback) QEMU
    # cannot reach anything anyway, so there it runs unrestricted and the
    # guest's DHCP client sees the full answer; elsewhere restrict=on.
    restrict=on
    if [[ $EUID == 0 ]] && unshare --net true 2>/dev/null; then
        wrap=(unshare --net --)
        restrict=off
        NET_ISOLATED=1
    fi
    # Slot 0x10 and the ids are what src/vmm's BuildQemuArgv uses for NIC 0.
    extra+=(-netdev user,id=net0,restrict=$restrict,hostname=smokevm,dnssearch=vmgrid.test
        -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,addr=0x10,id=nic0)
fi
if [[ ${SMOKE_SANDBOX:-0} == 1 ]]; then
    extra+=(-sandbox on -runas nobody)
    chmod 0755 "$T"
    chown nobody "$T/overlay.qcow2"
fi

START=$(date +%s.%N)
"${wrap[@]}" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp 1 -m "$MEMORY" -nodefaults -no-user-config -display none \
    -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND" \
    -drive file="$T/overlay.qcow2",if=none,id=disk0,format=qcow2,cache=writeback -device virtio-blk-pci,drive=disk0,id=vda \
    -device virtio-serial-pci,id=vser0 -chardev socket,path="$T/qga.sock",server=on,wait=off,id=qga0 \
    -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
    -device virtio-rng-pci,id=rng0 -device vmgenid,id=vmgen0,guid=auto \
    -serial file:"$T/console.log" -qmp unix:"$T/qmp.sock",server=on,wait=off \
    "${extra[@]}" 2>"$T/qemu.stderr" &
QEMU_PID=$!

rc=0
"$PYTHON" - "$T" "$START" "$TIMEOUT" "$QEMU_PID" "$NET" "${SMOKE_NET_TIMEOUT:-60}" "$(manifest_field name)" "$NET_ISOLATED" <<'PY' || rc=$?
import base64, json, os, socket, sys, time

tdir, start, timeout, qemu_pid = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
net, net_timeout, image_name = sys.argv[5] == "1", float(sys.argv[6]), sys.argv[7]
full_dhcp = sys.argv[8] == "1"  # unrestricted slirp: its DHCP also names a router and DNS server

def qemu_alive():
    try:
        os.kill(qemu_pid, 0)
        return True
    except OSError:
        return False

def connect(path, deadline):
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.time() > deadline or not qemu_alive():
                raise SystemExit(f"cannot connect to {path}")
            time.sleep(0.02)

class QGA:
    def __init__(self, sock):
        self.s, self.buf, self.next_id = sock, b"", 1000

    def _read_line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError
            self.s.settimeout(left)
            try:
                data = self.s.recv(65536)
            except socket.timeout:
                raise TimeoutError
            if not data:
                raise ConnectionError("guest agent socket closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def sync(self, deadline):
        """guest-sync-delimited until the agent echoes our id (reply follows a 0xFF byte)."""
        while time.time() < deadline:
            self.next_id += 1
            sid = self.next_id
            self.s.sendall(json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sid}}).encode() + b"\n")
            attempt_end = min(deadline, time.time() + 1.0)
            try:
                while True:
                    # discard everything up to the 0xFF delimiter
                    while b"\xff" not in self.buf:
                        self.buf = b""
                        self._read_more(attempt_end)
                    self.buf = self.buf[self.buf.rindex(b"\xff") + 1:]
                    line = self._read_line(attempt_end)
                    try:
                        if json.loads(line).get("return") == sid:
                            return
                    except ValueError:
                        pass
            except TimeoutError:
                continue
        raise TimeoutError("guest-sync-delimited timed out")

    def _read_more(self, deadline):
        left = deadline - time.time()
        if left <= 0:
            raise TimeoutError
        self.s.settimeout(left)
        try:
            data = self.s.recv(65536)
        except socket.timeout:
            raise TimeoutError
        if not data:
            raise ConnectionError("guest agent socket closed")
        self.buf += data

    def cmd(self, name, args=None, timeout=30):
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.time() + timeout
        while True:
            line = self._read_line(deadline).strip(b"\xff \r")
            if not line:
                continue
            r = json.loads(line)
            if "error" in r:
                raise RuntimeError(f"{name}: {r['error']}")
            if "return" in r:
                return r["return"]

deadline = start + timeout
qga = QGA(connect(os.path.join(tdir, "qga.sock"), deadline))
while True:
    if not qemu_alive():
        raise SystemExit("QEMU exited before the guest agent answered")
    try:
        qga.sync(min(deadline, time.time() + 2))
        qga.cmd("guest-ping", timeout=5)
        break
    except (TimeoutError, ConnectionError, RuntimeError):
        if time.time() > deadline:
            raise SystemExit(f"no guest-ping answer within {timeout:.0f}s")
ping_time = time.time() - start
print(f"guest-ping answered {ping_time:.2f}s after QEMU start")

def guest_sh(script, timeout=30):
    r = qga.cmd("guest-exec", {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True})
    pid = r["pid"]
    exec_deadline = time.time() + timeout
    while True:
        st = qga.cmd("guest-exec-status", {"pid": pid})
        if st.get("exited"):
            break
        if time.time() > exec_deadline:
            raise SystemExit(f"guest-exec did not finish within {timeout:.0f}s")
        time.sleep(0.05)
    out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
    err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
    return st, out, err

st, out, err = guest_sh("echo hello > /root/hello; sync; cat /proc/version")
print(f"guest-exec exit code {st.get('exitcode')}, stdout: {out.strip()}")
if err:
    print(f"guest-exec stderr: {err.strip()}")
if st.get("exitcode") != 0:
    raise SystemExit("guest-exec failed")

h = qga.cmd("guest-file-open", {"path": "/root/hello", "mode": "r"})
data = qga.cmd("guest-file-read", {"handle": h, "count": 4096})
qga.cmd("guest-file-close", {"handle": h})
content = base64.b64decode(data["buf-b64"]).decode(errors="replace")
print(f"guest-file-read /root/hello: {content.strip()!r}")
if content != "hello\n":
    raise SystemExit("unexpected /root/hello content")

if net:
    # libslirp's DHCP: 10.0.2.15/24, router 10.0.2.2, DNS 10.0.2.3, plus the
    # host name and search domain given on -netdev.
    show = ("ip -4 -o addr show scope global; ip -4 route show default; "
            "echo @; cat /etc/resolv.conf; echo @; hostname")
    net_deadline = time.time() + net_timeout
    while True:
        st, out, err = guest_sh(show)
        if "inet 10.0.2.15/24" in out and (not full_dhcp or "default via 10.0.2.2" in out):
            break
        if time.time() > net_deadline:
            raise SystemExit(f"the NIC has no DHCP address {net_timeout:.0f}s after the agent answered:\n{out}{err}")
        time.sleep(0.5)
    print(f"NIC configured by DHCP {time.time() - start:.2f}s after QEMU start")
    addrs, resolv, host = (part.strip() for part in out.split("@", 2))
    print("guest network:\n  " + "\n  ".join((addrs + "\n" + resolv).splitlines()) + f"\n  hostname {host}")
    if "vmgrid.test" not in resolv:
        raise SystemExit("resolv.conf lacks the DHCP search domain vmgrid.test")
    if not full_dhcp:
        print("note: restricted user-mode network (no netns): no router or DNS server to check")
    elif "nameserver 10.0.2.3" not in resolv and "nameserver 127.0.0.53" not in resolv:
        raise SystemExit("resolv.conf names neither the DHCP DNS server nor a local stub resolver")
    if image_name == "tiny" and host != "smokevm":
        raise SystemExit(f"host name {host!r}, not the DHCP-given smokevm")

# QMP quit
q = connect(os.path.join(tdir, "qmp.sock"), time.time() + 5)
qf = q.makefile("rwb")
json.loads(qf.readline())  # greeting
for c in ("qmp_capabilities", "quit"):
    qf.write(json.dumps({"execute": c}).encode() + b"\n")
    qf.flush()
    while True:
        line = qf.readline()
        if not line:
            break
        r = json.loads(line)
        if "return" in r or "error" in r:
            break
print("QEMU quit via QMP")
PY

if ((rc == 0)); then
    for _ in $(seq 100); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.05; done
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
    echo "smoke-test: PASS"
else
    echo "smoke-test: FAIL; console log tail:" >&2
    tail -n 40 "$T/console.log" >&2 || true
    [[ -s $T/qemu.stderr ]] && { echo "--- qemu stderr:" >&2; cat "$T/qemu.stderr" >&2; }
    exit 1
fi
