#!/usr/bin/env bash
# What `cmake --install` ships for operators (docs/operations.md, "Running
# vmgrid on several machines"), checked as an operator would meet it:
#   - every file is installed where the units and docs say;
#   - systemd-analyze accepts each unit without a warning;
#   - every flag a unit passes is a flag of that role;
#   - the agent's unit never kills VMs when it stops (KillMode=process);
#   - the Grafana dashboard is valid JSON, and every metric it uses is
#     documented (tests/metrics_grid_test.cc checks them against real scrapes).
# Usage: packaging_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

DESTDIR="$dest" cmake --install "$build" --prefix /usr/local >"$dest/install.log" ||
  { cat "$dest/install.log"; fail "cmake --install"; }
root="$dest/usr/local"
for f in bin/vmgrid lib/systemd/system/vmgrid-controller.service \
         lib/systemd/system/vmgrid-agent.service lib/systemd/system/vmgrid-image-server.service \
         lib/sysusers.d/vmgrid.conf share/vmgrid/prometheus.yml share/vmgrid/vmgrid-dashboard.json \
         share/doc/vmgrid/operations.md; do
  [ -f "$root/$f" ] || fail "not installed: $f"
done
"$root/bin/vmgrid" --version >/dev/null || fail "the installed binary does not run"

command -v systemd-analyze >/dev/null || fail "systemd-analyze is missing (scripts/setup.sh installs systemd)"
for unit in "$root"/lib/systemd/system/*.service; do
  name=$(basename "$unit")
  # The unit as installed, with its binary at the staged path (verify checks
  # that ExecStart's program exists) and its site settings file present.
  mkdir -p "$dest/verify" "$dest/etc"
  sed -e "s#/usr/local/bin/vmgrid#$root/bin/vmgrid#" \
      -e "s#EnvironmentFile=/etc/vmgrid/#EnvironmentFile=$dest/etc/#" "$unit" >"$dest/verify/$name"
  touch "$dest/etc/$(sed -n 's#^EnvironmentFile=/etc/vmgrid/##p' "$unit")"
  out=$(systemd-analyze verify "$dest/verify/$name" 2>&1) || fail "$name: $out"
  # verify returns 0 on unknown keys; any message is a defect here.
  out=$(grep -v -e "Failed to .*bus" -e "^$" <<<"$out" || true)
  [ -z "$out" ] || fail "$name: systemd-analyze verify said: $out"

  exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
  role=$(awk '{print $2}' <<<"$exec_line")
  help=$("$root/bin/vmgrid" "$role" --help)
  for flag in $(grep -o -- '--[a-z][a-z-]*' <<<"$exec_line"); do
    grep -q -- "$flag" <<<"$help" || fail "$name passes $flag, which 'vmgrid $role' does not have"
  done
done
grep -qx 'KillMode=process' "$root/lib/systemd/system/vmgrid-agent.service" ||
  fail "vmgrid-agent.service must stop the agent only (KillMode=process): VMs outlive their agent"

python3 - "$root/share/vmgrid/vmgrid-dashboard.json" "$src/docs/operations.md" <<'PY' || fail "dashboard"
import json, re, sys
dash = json.load(open(sys.argv[1]))
docs = open(sys.argv[2]).read()
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs, "no queries in the dashboard"
for e in exprs:
    for m in re.findall(r"vmgrid_[a-z0-9_]+", e):
        family = re.sub(r"_(bucket|sum|count)$", "", m) if m.endswith(("_bucket", "_sum", "_count")) else m
        if "`%s`" % family not in docs:
            sys.exit("dashboard uses %s, which docs/operations.md does not list" % family)
print("dashboard: %d panels, %d queries" % (len(dash["panels"]), len(exprs)))
PY
echo "packaging: OK"
