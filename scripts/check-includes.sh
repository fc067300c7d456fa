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
    ["vmm", "store", "images"],
    ["nbd", "infosvc", "linkem"],  # nbd, linkem: vmm/unique_fd.h; infosvc: store
    ["chunks"],                    # chunks: nbd/block_source.h
    ["agent", "api"],
    ["sim", "dev"],
    ["cli"],                       # the command line registers every role
]

# Known violations as of 2026-12-05: src/cli is still used as a base layer
# for the HTTP client (cli/api_client.h, library vmgrid_client) and for the
# roles' options (cli/options.h). Issue 10 moves ApiClient into a client
# module and each role's options beside the role; delete the lines here as
# that happens. A new file that includes cli/ is a new violation and fails.
ALLOWED = {
    ("src/agent/agent.h", "cli/options.h"),
    ("src/agent/agent.cc", "cli/api_client.h"),
    ("src/api/controller.h", "cli/options.h"),
    ("src/api/controller.cc", "cli/api_client.h"),
    ("src/chunks/chunk_client.cc", "cli/api_client.h"),
    ("src/chunks/run_image_server.cc", "cli/options.h"),
    ("src/dev/local_grid.h", "cli/api_client.h"),
    ("src/dev/dev.cc", "cli/options.h"),
    ("src/sim/controller_process.cc", "cli/api_client.h"),
    ("src/sim/sim_hosts.cc", "cli/api_client.h"),
}

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
