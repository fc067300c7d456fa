#include "nbd/export_table.h"

#include "nbd/nbd_protocol.h"

namespace vmgrid::nbd {

Status ExportTable::Add(const std::string& name, BlockSourcePtr source) {
  if (!source) return MakeError(ErrorCode::kInvalidArgument, "export " + name + ": null source");
  if (!IsValidExportName(name)) {
    return MakeError(ErrorCode::kInvalidArgument, "export name too long or contains NUL");
  }
  std::lock_guard lock(mu_);
  if (!exports_.emplace(name, std::move(source)).second) {
    return MakeError(ErrorCode::kAlreadyExists, "export " + name + " already exists");
  }
  return Status::Ok();
}

Status ExportTable::Remove(const std::string& name) {
  std::lock_guard lock(mu_);
  if (exports_.erase(name) == 0) {
    return MakeError(ErrorCode::kNotFound, "no export " + name);
  }
  return Status::Ok();
}

BlockSourcePtr ExportTable::Find(std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = exports_.find(name);
  return it == exports_.end() ? nullptr : it->second;
}

std::vector<std::string> ExportTable::Names() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> names;
  names.reserve(exports_.size());
  for (const auto& [name, source] : exports_) names.push_back(name);
  return names;
}

}  // namespace vmgrid::nbd
