#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang and runs each one briefly
# over its seed corpus (docs/fuzzing.md).
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]     (default 20)
#
# Exits non-zero if a target crashes, leaks, hangs or breaks an invariant;
# the input is saved under build-fuzz/artifacts/TARGET/. Exits 0 with a SKIP
# message when clang++ or libFuzzer is not installed.
#
# Environment:
#   FUZZ_TARGETS    targets to run (default: all of them)
#   FUZZ_BUILD_DIR  build directory (default: build-fuzz)
#   FUZZ_JOBS       build parallelism (default: 2)
#   FUZZ_ARGS       extra libFuzzer flags for every run (e.g. -max_len=16384)
set -euo pipefail

SECONDS_PER_TARGET="${1:-20}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FUZZ_BUILD_DIR:-build-fuzz}"
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
JOBS="${FUZZ_JOBS:-2}"
TARGETS="${FUZZ_TARGETS:-fuzz_qmp fuzz_qga fuzz_http_json fuzz_vm_spec fuzz_image_magic fuzz_chunks fuzz_query fuzz_host_token fuzz_qcow2_header fuzz_http_request fuzz_vnet_frame fuzz_vnet_switch fuzz_vnet_tunnel fuzz_vnet_dhcp fuzz_vnet_dns fuzz_metrics_text fuzz_ext4_listing}"
# Be gentle with whatever else runs on the machine (VMs, benchmarks).
NICE=(nice -n 10)

skip() {
  echo "fuzz-smoke: SKIP: $*"
  exit 0
}

command -v clang++ >/dev/null 2>&1 || skip "clang++ not found (Debian: apt-get install clang)"
probe_dir="$(mktemp -d)"
trap 'rm -rf "$probe_dir"' EXIT
cat >"$probe_dir/probe.cc" <<'EOF'
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }
EOF
if ! clang++ -fsanitize=fuzzer,address,undefined "$probe_dir/probe.cc" -o "$probe_dir/probe" \
    >"$probe_dir/log" 2>&1; then
  sed 's/^/  /' "$probe_dir/log" | tail -n 5
  clang_major="$(clang++ -dumpversion 2>/dev/null | cut -d. -f1 || true)"
  skip "clang++ cannot link libFuzzer with ASan/UBSan (Debian: apt-get install libclang-rt-${clang_major:-14}-dev)"
fi

echo "fuzz-smoke: building fuzz/ with $(clang++ --version | head -n 1) into $BUILD"
# ccache when installed (as the Makefile's build): a fresh clone reuses objects.
launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=true
fi
CC=clang CXX=clang++ cmake -S "$ROOT/fuzz" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" \
  >"$probe_dir/cmake.log" 2>&1 ||
  { cat "$probe_dir/cmake.log"; echo "fuzz-smoke: FAIL: cmake configure"; exit 1; }
# (fuzz/CMakeLists.txt refuses any compiler but clang, e.g. a stale cache.)
# shellcheck disable=SC2086
if ! "${NICE[@]}" cmake --build "$BUILD" -j "$JOBS" --target $TARGETS >"$probe_dir/build.log" 2>&1; then
  grep -aE 'error|Error' "$probe_dir/build.log" | head -n 30
  echo "fuzz-smoke: FAIL: build (full log: rerun cmake --build $BUILD)"
  exit 1
fi

dict_for() {
  local name="${1#fuzz_}"
  [ -f "$ROOT/fuzz/dict/$name.dict" ] && echo "-dict=$ROOT/fuzz/dict/$name.dict"
  return 0
}

stat_of() {  # stat_of LOG NAME -> value of "stat::NAME:" from -print_final_stats
  sed -n "s/^stat::$2:[[:space:]]*//p" "$1" | tail -n 1
}

failed=0
summary=()
echo "fuzz-smoke: running each target for ${SECONDS_PER_TARGET}s"
for t in $TARGETS; do
  bin="$BUILD/$t"
  seeds="$ROOT/fuzz/corpus/$t"
  work="$BUILD/corpus/$t"
  artifacts="$BUILD/artifacts/$t"
  log="$BUILD/logs/$t.log"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  [ -x "$bin" ] || { echo "fuzz-smoke: FAIL: $bin was not built"; exit 1; }
  [ -d "$seeds" ] || { echo "fuzz-smoke: FAIL: no seed corpus $seeds"; exit 1; }

  set +e
  # shellcheck disable=SC2046,SC2086
  "${NICE[@]}" "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" $(dict_for "$t") ${FUZZ_ARGS:-} \
    "$work" "$seeds" >"$log" 2>&1
  rc=$?
  set -e

  runs="$(stat_of "$log" number_of_executed_units)"
  speed="$(stat_of "$log" average_exec_per_sec)"
  # The last status line, e.g. "#123 DONE cov: 812 ft: 2301 corp: 120/9Kb ...".
  status_line="$(grep -aE '^#[0-9]+.*cov: ' "$log" | tail -n 1 || true)"
  cov="$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$status_line")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")"
  corp="$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$status_line")"
  if [ "$rc" -eq 0 ]; then
    verdict="ok"
  else
    verdict="FAIL"
    failed=1
  fi
  line="$(printf '%-17s %-4s runs=%s exec/s=%s cov=%s ft=%s corpus=%s' "$t" "$verdict" \
    "${runs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")"
  summary+=("$line")
  echo "$line"
  if [ "$rc" -ne 0 ]; then
    echo "  exit $rc; log: $log"
    grep -aE 'ERROR: |SUMMARY: |runtime error|==fuzz==|Test unit written to' "$log" | head -n 8 | sed 's/^/  /'
  fi
done

echo "fuzz-smoke: summary"
printf '  %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzz-smoke: FAIL: crashing inputs are in $BUILD/artifacts/ (reproduce: $BUILD/TARGET FILE)"
  exit 1
fi
echo "fuzz-smoke: OK"
