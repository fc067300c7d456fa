// The boot stub: a 204-byte x86-64 ELF with a PVH entry note, handed to QEMU
// as -kernel (with no -initrd) when a guest is restored rather than booted.
//
// QEMU reads the -kernel and -initrd files whole when it starts, -incoming or
// not, yet a restored guest never runs them: its kernel is already in the
// memory state. Fetching a 35 MiB vmlinux over a WAN to start a resume costs
// about a second for nothing. The kernel and initrd are loaded through fw_cfg
// and ROM blobs that are not RAM blocks, and fw_cfg's contents are not part of
// the migration stream, so a restore with the stub in their place loads the
// same state (docs/chunk-store.md, "A resume does not fetch the kernel").
//
// The stub runs only if the guest resets, which must then not happen inside
// that QEMU: QemuConfig::reboot_exits (-action reboot=shutdown) turns a guest
// reboot into QEMU's exit with a SHUTDOWN event whose reason is
// "guest-reset", and the agent starts the VM again with the real kernel. If
// it ever runs, the stub halts the CPU with interrupts off.
#pragma once

#include <string>

#include "common/result.h"

namespace vmgrid {

// The stub's bytes (the same on every call).
std::string BootStubKernel();

// Writes the stub to `path` (mode 0644: QEMU's uid reads it) unless a file
// with exactly these bytes is there already. Atomic (rename).
Status WriteBootStub(const std::string& path);

}  // namespace vmgrid
