#!/bin/sh
# netns-tbf.sh: a kernel-level rate cap for benchmarks, as an alternative to
# vmgrid-linkem's user-space token bucket (docs/linkem.md). Creates two network
# namespaces NAME-a and NAME-b joined by a veth pair (lk0 in each), addressed
# 10.X.0.1/24 (a) and 10.X.0.2/24 (b), and puts a tbf qdisc on both veth ends
# so each direction is capped at RATE. Nothing in the host's own namespace is
# touched (no addresses, routes or interfaces). Needs root.
#
# The kernel here has no netem, so this adds no delay: for delay, run
# vmgrid-linkem inside NAME-a with --target 10.X.0.2:PORT (rate 0), or use
# vmgrid-linkem alone on loopback.
#
#   netns-tbf.sh up NAME RATE [BURST [LATENCY [X]]]   e.g. up lk 100mbit 64kb 50ms 77
#   netns-tbf.sh down NAME
#   ip netns exec NAME-b <server listening on 10.X.0.2>
#   ip netns exec NAME-a <client connecting to 10.X.0.2>
#
# Two namespaces rather than one: two addresses inside one namespace talk over
# lo (local routing), bypassing the veth and its qdisc.
set -eu

usage() {
  echo "usage: $0 up NAME RATE [BURST [LATENCY [SUBNET_OCTET]]] | down NAME" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
name=$2

case "$cmd" in
  up)
    [ $# -ge 3 ] || usage
    rate=$3
    burst=${4:-64kb}
    latency=${5:-50ms}
    octet=${6:-77}
    # On any failure, leave nothing behind (but never delete a namespace
    # that existed before: "ip netns add" fails on those).
    ip netns add "$name-a"
    trap 'ip netns del "$name-a" 2>/dev/null' EXIT
    ip netns add "$name-b"
    trap 'ip netns del "$name-a" 2>/dev/null; ip netns del "$name-b" 2>/dev/null' EXIT
    ip -n "$name-a" link add lk0 type veth peer name lk0 netns "$name-b"
    ip -n "$name-a" addr add "10.$octet.0.1/24" dev lk0
    ip -n "$name-b" addr add "10.$octet.0.2/24" dev lk0
    for ns in "$name-a" "$name-b"; do
      ip -n "$ns" link set lo up
      ip -n "$ns" link set lk0 up
      ip netns exec "$ns" tc qdisc replace dev lk0 root tbf rate "$rate" burst "$burst" latency "$latency"
    done
    trap - EXIT
    echo "namespaces $name-a (10.$octet.0.1) <-> $name-b (10.$octet.0.2), tbf rate $rate burst $burst latency $latency each way"
    ;;
  down)
    ip netns del "$name-a" 2>/dev/null || true
    ip netns del "$name-b" 2>/dev/null || true
    ;;
  *)
    usage
    ;;
esac
