#!/usr/bin/env bash
# Include direction: a module under src/ may include only modules of lower
# layers (docs/architecture.md, "Dependency direction"). Fails naming each
# `#include "module/..."` that points upwards or sideways within a layer,
# unless it is in the allow-list below (today's known violations, to be
# removed as the code moves; never add to it). Tests (*_test.cc, test_*.h,
# *_test_*.h and tests/, bench/, fuzz/) sit above every module and are not
# checked. Fast: reads the sources only.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'EOF'
import os, re, sys

# Lowest first. A module may include itself and modules of lower layers.
LAYERS = [
    ["common"],
    ["vmm", "store", "images", "client", "proto"],  # client: ApiClient; proto: controller<->agent wire types
    ["nbd", "infosvc", "linkem", "vnet"],  # nbd, linkem, vnet: vmm/unique_fd.h; infosvc: store
    ["chunks"],                    # chunks: nbd/block_source.h
    ["agent", "api"],
    ["sim", "dev"],
    ["cli"],                       # the command line registers every role
]

# Known violations: none. (Until 2026-12-05 src/cli was a base layer for
# the HTTP client and the roles' options; ApiClient is now src/client and
# each role's options sit beside the role.) Never add to this set.
ALLOWED = set()

layer = {m: i for i, ms in enumerate(LAYERS) for m in ms}
include = re.compile(r'^\s*#\s*include\s+"([A-Za-z0-9_]+)/([^"]+)"')
test_file = re.compile(r'(_test\.(cc|h)$|^test_.*\.h$|_test_.*\.h$|_fuzz\.cc$)')
errors, used = [], set()
for module in sorted(os.listdir("src")):
    root = os.path.join("src", module)
    if not os.path.isdir(root):
        continue
    if module not in layer:
        errors.append(f"{root}: module not in a layer of scripts/check-includes.sh; add it there "
                      "and to docs/architecture.md")
        continue
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith((".cc", ".h", ".cc.in")) or test_file.search(name):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    m = include.match(line)
                    if not m or m.group(1) == module:
                        continue
                    target = m.group(1)
                    header = f"{target}/{m.group(2)}"
                    if target not in layer:
                        continue  # not one of ours (a system or third-party header)
                    if layer[target] < layer[module]:
                        continue
                    if (path, header) in ALLOWED:
                        used.add((path, header))
                        continue
                    how = "a higher" if layer[target] > layer[module] else "a same-layer"
                    errors.append(f"{path}:{lineno}: {module} (layer {layer[module]}) includes "
                                  f"{header}, {how} module (layer {layer[target]})")
for path, header in sorted(ALLOWED - used):
    errors.append(f"scripts/check-includes.sh: allow-list entry {path} -> {header} no longer "
                  "needed; remove it")
if errors:
    print("check-includes: include direction violated (docs/architecture.md):", file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)
    sys.exit(1)
print(f"check-includes: ok ({len(ALLOWED)} known violations allowed)")
EOF
