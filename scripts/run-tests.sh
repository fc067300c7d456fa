#!/usr/bin/env bash
# `make test`: runs the ctest tests of the build directory $1 (with $2 jobs;
# further arguments go to ctest, e.g. `-L unit`) against SQLite and against a
# throwaway PostgreSQL server of its own, which is stopped and deleted
# afterwards, whether the tests pass or not.
set -euo pipefail
BUILD=${1:-build}
JOBS=${2:-$(nproc)}
cd "$(dirname "$0")/.."
SERVER=$PWD/scripts/pg-test-server.sh

# Static checks first (seconds): formatting and include direction.
bash scripts/check-format.sh
bash scripts/check-includes.sh

export VMGRID_PG_DIR=${VMGRID_PG_DIR:-/tmp/vmgrid-pg/run-$$}
trap 'bash "$SERVER" stop' EXIT
VMGRID_TEST_PG_URL=$(bash "$SERVER" start)
export VMGRID_TEST_PG_URL
echo "run-tests: PostgreSQL at $VMGRID_TEST_PG_URL"
# Every parser of untrusted input has a fuzz target; run each briefly
# (skipped with a message when clang/libFuzzer is unavailable).
bash scripts/fuzz-smoke.sh "${VMGRID_FUZZ_SECONDS:-10}"
cd "$BUILD"
ctest --output-on-failure -j "$JOBS" --timeout 900 "${@:3}"
