// Datasets attached to a VM, on its host (docs/datasets.md, "Attaching"):
// the files behind each data disk, and what the agent does in the guest
// through the guest agent (the user needs no tool of ours in the image).
//
//   attachment i of VM ID   file in the VM directory     QEMU sees
//   a dataset version        dataI.qcow2 -> NBD export    virtio disk, serial vmgdata-I
//                            (RUN/dataI.sock, the VM's own socket)
//   a new (blank) dataset    dataI.raw (empty ext4)       virtio disk, serial vmgdata-I
//
// A read-only attachment's overlay is opened read-only by QEMU, so nothing
// but the image server's version is ever seen. A read-write one keeps its
// changes in the overlay (or the blank file) until a commit pushes the whole
// disk as the dataset's next version: only chunks the image server lacks
// travel.
// Thread-safe (pure functions and calls on their arguments).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/data_attachment.h"

namespace vmgrid {

class GuestAgentClient;

// Where attachment `index` of a VM lives: its file in `vm_dir`, its NBD
// socket in `run_dir` (versions only) and its export's user key in
// HostImages ("VMID/dataI", beside the boot disk's "VMID").
std::string DataDiskPath(const std::string& vm_dir, size_t index, const DataDiskSpec& d);
std::string DataDiskSocket(const std::string& run_dir, size_t index);
std::string DataExportUser(const std::string& vm_id, size_t index);

// Makes attachment `d`'s file at `path`: a qcow2 overlay over `backing` (the
// version's export, a json:{nbd} string) or, for a blank one, an empty
// journal-less ext4 file system of blank_mb MiB (mkfs.ext4 on a sparse
// file; nothing of the user's is read). Atomic: on failure no file is left.
Status MakeDataDiskFile(const DataDiskSpec& d, const std::string& path, const std::string& backing);

// An incoming migration's copy of a blank attachment's disk: a sparse raw
// file of blank_mb MiB, all zeros, which the source's mirror fills. Atomic
// as above.
Status MakeMirrorTargetFile(const DataDiskSpec& d, const std::string& path);

// The shell script run in the guest ($1 serial, $2 mount point, $3 options)
// that finds the disk by its serial (rescanning PCI when it is not there
// yet: a guest resumed from an image's checkpoint learns of disks added
// since), creates the mount point and mounts it. Exposed for tests.
const std::string& GuestMountScript();

// Mounts every attachment at its mount point (ro or rw), in order. A disk
// that does not appear or does not mount is an error naming the dataset
// and what the guest said.
Status MountGuestData(GuestAgentClient& ga, const std::vector<DataDiskSpec>& data,
                      std::chrono::milliseconds timeout);
// Flushes and remounts attachment `d` read-only (`ro`) or read-write again,
// around a commit's copy. kFailedPrecondition when the guest refuses (for
// example a file open for writing under the mount point).
Status RemountGuestData(GuestAgentClient& ga, const DataDiskSpec& d, bool ro,
                        std::chrono::milliseconds timeout);

}  // namespace vmgrid
