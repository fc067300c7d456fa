// ExportTable: the name -> BlockSource map an NBD server serves. Sessions look
// exports up during the handshake and keep the source they got, so removing
// an export affects new connections only.
// Thread-safe: every method may be called from any thread.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "nbd/block_source.h"

namespace vmgrid::nbd {

class ExportTable {
 public:
  // kInvalidArgument for a null source or a name NBD cannot carry (over 4096
  // bytes or containing NUL); kAlreadyExists if the name is taken. The empty
  // name is allowed: it is the export a client gets when it names none.
  Status Add(const std::string& name, BlockSourcePtr source);
  // kNotFound if there is no such export.
  Status Remove(const std::string& name);
  // nullptr if there is no such export.
  BlockSourcePtr Find(std::string_view name) const;
  std::vector<std::string> Names() const;  // sorted

 private:
  mutable std::mutex mu_;
  std::map<std::string, BlockSourcePtr, std::less<>> exports_;  // guarded by mu_
};

}  // namespace vmgrid::nbd
