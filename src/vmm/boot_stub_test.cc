#include "vmm/boot_stub.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstring>

#include "common/util.h"
#include "vmm/test_util.h"

namespace vmgrid {
namespace {

uint64_t Le(const std::string& s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(s.at(at + i));
  return v;
}

// What QEMU's load_elfboot needs: a little-endian x86-64 ELF executable with
// no LOAD_ELF_HEADER_HAS_ADDR flags, a PT_LOAD inside the file and a PT_NOTE
// holding the Xen PHYS32_ENTRY note that names the entry point.
TEST(BootStubTest, IsAnX86_64ElfWithAPvhEntryNote) {
  const std::string elf = BootStubKernel();
  EXPECT_EQ(elf, BootStubKernel());
  ASSERT_GE(elf.size(), 64u);
  EXPECT_EQ(elf.substr(0, 4),
            "\x7f"
            "ELF");
  EXPECT_EQ(elf[4], 2) << "64-bit";
  EXPECT_EQ(elf[5], 1) << "little-endian";
  EXPECT_EQ(Le(elf, 16, 2), 2u) << "ET_EXEC";
  EXPECT_EQ(Le(elf, 18, 2), 62u) << "EM_X86_64";
  EXPECT_EQ(Le(elf, 48, 4), 0u) << "e_flags";
  const uint64_t phoff = Le(elf, 32, 8), phentsize = Le(elf, 54, 2), phnum = Le(elf, 56, 2);
  ASSERT_EQ(phentsize, 56u);
  bool load = false, entry_note = false;
  for (uint64_t i = 0; i < phnum; ++i) {
    const size_t ph = phoff + i * phentsize;
    ASSERT_LE(ph + phentsize, elf.size());
    const uint64_t type = Le(elf, ph, 4), offset = Le(elf, ph + 8, 8), size = Le(elf, ph + 32, 8);
    ASSERT_LE(offset + size, elf.size()) << "segment " << i << " lies outside the file";
    if (type == 1) {
      load = true;
      EXPECT_EQ(Le(elf, ph + 24, 8), Le(elf, 24, 8)) << "the entry is where the code loads";
    }
    if (type == 4) {
      ASSERT_GE(size, 24u);
      EXPECT_EQ(Le(elf, offset, 4), 4u);
      EXPECT_EQ(Le(elf, offset + 4, 4), 8u) << "QEMU reads an 8-byte address";
      EXPECT_EQ(Le(elf, offset + 8, 4), 18u) << "XEN_ELFNOTE_PHYS32_ENTRY";
      EXPECT_EQ(std::memcmp(elf.data() + offset + 12, "Xen", 4), 0);
      EXPECT_EQ(Le(elf, offset + 16, 8), Le(elf, 24, 8));
      entry_note = true;
    }
  }
  EXPECT_TRUE(load);
  EXPECT_TRUE(entry_note);
}

TEST(BootStubTest, WriteIsIdempotentAndRepairsAChangedFile) {
  vmm::testing::TempDir dir;
  const std::string path = dir.path() + "/stub.elf";
  ASSERT_TRUE(WriteBootStub(path).ok());
  EXPECT_EQ(*ReadFile(path), BootStubKernel());
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  ASSERT_TRUE(WriteFileAtomic(path, "not a kernel").ok());
  ASSERT_TRUE(WriteBootStub(path).ok());
  EXPECT_EQ(*ReadFile(path), BootStubKernel());
}

}  // namespace
}  // namespace vmgrid
