#include "vmm/boot_stub.h"

#include <cstdint>

#include "common/util.h"

namespace vmgrid {
namespace {

// Little-endian appends, the ELF's byte order.
void Put(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

constexpr uint64_t kLoadAddress = 0x100000;  // 1 MiB, where Linux loads too
constexpr uint32_t kXenElfNotePhys32Entry = 18;
constexpr int kElfHeaderSize = 64;
constexpr int kProgramHeaderSize = 56;
constexpr int kProgramHeaders = 2;

}  // namespace

std::string BootStubKernel() {
  // cli; hlt; jmp back to the hlt.
  const std::string code = "\xfa\xf4\xeb\xfd";
  // The PVH entry note QEMU looks for: name "Xen", type 18, a 64-bit address
  // (QEMU reads 8 bytes, as Linux's vmlinux provides).
  std::string note;
  Put(note, 4, 4);  // namesz
  Put(note, 8, 4);  // descsz
  Put(note, kXenElfNotePhys32Entry, 4);
  note += std::string("Xen\0", 4);
  Put(note, kLoadAddress, 8);

  const uint64_t note_offset = kElfHeaderSize + kProgramHeaderSize * kProgramHeaders;
  const uint64_t code_offset = note_offset + note.size();

  std::string elf =
      "\x7f"
      "ELF";
  elf += std::string("\x02\x01\x01\x00", 4);  // 64-bit, little-endian, version 1, System V
  elf += std::string(8, '\0');                // padding of e_ident
  Put(elf, 2, 2);                             // e_type: ET_EXEC
  Put(elf, 62, 2);                            // e_machine: EM_X86_64
  Put(elf, 1, 4);                             // e_version
  Put(elf, kLoadAddress, 8);                  // e_entry
  Put(elf, kElfHeaderSize, 8);                // e_phoff
  Put(elf, 0, 8);                             // e_shoff: no sections
  Put(elf, 0, 4);                             // e_flags
  Put(elf, kElfHeaderSize, 2);                // e_ehsize
  Put(elf, kProgramHeaderSize, 2);            // e_phentsize
  Put(elf, kProgramHeaders, 2);               // e_phnum
  Put(elf, 64, 2);                            // e_shentsize
  Put(elf, 0, 2);                             // e_shnum
  Put(elf, 0, 2);                             // e_shstrndx

  auto program_header = [&](uint32_t type, uint32_t flags, uint64_t offset, uint64_t addr,
                            uint64_t size) {
    Put(elf, type, 4);
    Put(elf, flags, 4);
    Put(elf, offset, 8);
    Put(elf, addr, 8);  // p_vaddr
    Put(elf, addr, 8);  // p_paddr
    Put(elf, size, 8);  // p_filesz
    Put(elf, size, 8);  // p_memsz
    Put(elf, 4, 8);     // p_align
  };
  program_header(1 /* PT_LOAD */, 5 /* R+X */, code_offset, kLoadAddress, code.size());
  program_header(4 /* PT_NOTE */, 4 /* R */, note_offset, 0, note.size());
  elf += note;
  elf += code;
  return elf;
}

Status WriteBootStub(const std::string& path) {
  const std::string stub = BootStubKernel();
  if (auto have = ReadFile(path, 4096); have.ok() && *have == stub) return Status::Ok();
  return WriteFileAtomic(path, stub, 0644);
}

}  // namespace vmgrid
