#!/bin/sh
# Records which disk blocks a guest reads while it boots, for chunk_size_bench.
# Boots the image under QEMU (TCG) from a writable sparse copy of its raw disk,
# traces the block layer's reads (bdrv_co_preadv_part on the format node), and
# stops QEMU after SECONDS. Output: one "offset length" line per read; the
# booted copy of the disk (the "post-boot version") is kept as OUT.disk.raw.
#
# usage: record_boot_trace.sh IMAGE_DIR OUT [SECONDS]
#   IMAGE_DIR holds vmlinux, initrd.img, rootfs.raw (e.g. build/images/tiny)
set -eu
dir=$1
out=$2
secs=${3:-12}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp --sparse=always "$dir/rootfs.raw" "$out.disk.raw"
timeout -s INT "$secs" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 256 \
  -nodefaults -display none -kernel "$dir/vmlinux" -initrd "$dir/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw quiet" \
  -drive file="$out.disk.raw",if=none,id=disk0,format=raw,cache=unsafe \
  -device virtio-blk-pci,drive=disk0 -serial file:"$work/console.log" \
  -trace enable=bdrv_co_preadv_part,file="$work/trace.log" || true
# Each guest read shows once per block node (format, then file); keep the
# node that appears first, which is the format node the device talks to.
awk '$1 == "bdrv_co_preadv_part" {
       if (node == "") node = $3
       if ($3 == node) print $5, $7
     }' "$work/trace.log" > "$out"
echo "$(wc -l < "$out") reads, $(awk '{s += $2} END {print s}' "$out") bytes -> $out" >&2
