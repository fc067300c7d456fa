// `vmgrid query`: read-only SQL over the information service, or --set.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "cli/command.h"
#include "cli/exit_codes.h"
#include "cli/format.h"
#include "client/api_client.h"
#include "common/result.h"
#include "common/util.h"
#include "common/vm_state.h"

namespace vmgrid::cli {
namespace {

struct QueryArgs {
  std::string sql;
  bool set = false;
  std::string from = "vms";
  int size = 2;
  std::string same;
  std::string sum = "memory_mb";
  std::string min, max;
  std::string where;
  int max_rows = 0;
};

std::string CellText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "NULL";
  return v.dump();
}

int CmdQuery(Ctx& ctx, const QueryArgs& a) {
  json body = json::object();
  if (a.set) {
    if (!a.sql.empty()) return UsageError(ctx, "give SQL or --set, not both", "query");
    json set = {{"from", a.from}, {"size", a.size}, {"sum", a.sum}};
    if (!a.same.empty()) set["same"] = a.same;
    if (!a.where.empty()) set["where"] = a.where;
    // Bounds accept sizes (512M, 1G) for memory columns, else plain integers.
    for (auto [flag, text, key] : {std::tuple{"--min", &a.min, "min"}, {"--max", &a.max, "max"}}) {
      if (text->empty()) continue;
      auto v = ParseMemoryMb(*text);
      if (!v.ok()) return UsageError(ctx, std::string(flag) + ": " + v.error().message, "query");
      set[key] = *v;
    }
    body["set"] = set;
  } else {
    if (a.sql.empty()) return UsageError(ctx, "give a SQL query or --set", "query");
    body["sql"] = a.sql;
  }
  if (a.max_rows > 0) body["max_rows"] = a.max_rows;
  auto client = MakeClient(ctx);
  if (!client.ok()) return Fail(ctx, client.error());
  auto res = client->Post("/v1/query", body);
  if (!res.ok()) return Fail(ctx, res.error().Wrap("query failed"));
  if (ctx.g.json) {
    PrintJson(ctx, *res);
    return kExitOk;
  }
  if (a.set) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& st : res->value("sets", json::array())) {
      std::string ids;
      for (const auto& id : st["ids"]) ids += (ids.empty() ? "" : ",") + CellText(id);
      rows.push_back({CellText(st["group"]), ids, CellText(st["total"])});
    }
    PrintTable(ctx, {a.same.empty() ? "GROUP" : a.same, "IDS", "TOTAL " + a.sum}, rows);
    ctx.io.err << res->value("sets", json::array()).size() << " set(s) from "
               << res->value("candidates", 0) << " candidates in " << res->value("groups", 0)
               << " group(s), " << res->value("elapsed_ms", 0.0) << " ms" << std::endl;
    return kExitOk;
  }
  std::vector<std::string> headers;
  for (const auto& c : res->value("columns", json::array())) headers.push_back(CellText(c));
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : res->value("rows", json::array())) {
    std::vector<std::string> row;
    for (const auto& v : r) row.push_back(CellText(v));
    rows.push_back(row);
  }
  PrintTable(ctx, headers, rows);
  ctx.io.err << rows.size() << " row(s), " << res->value("elapsed_ms", 0.0) << " ms" << std::endl;
  return kExitOk;
}

}  // namespace

// The flags of these commands, kept for the parse.
struct AddQueryCommandsFlags {
  QueryArgs query;
};

void AddQueryCommands(CommandTree& t) {
  auto& s = t.Keep<AddQueryCommandsFlags>();
  auto* q = t.Leaf(&t.app, "query", "Query the grid information service (read-only SQL or --set)",
                   [&] { return CmdQuery(t.ctx, s.query); });
  q->group("Client commands");
  q->add_option("SQL", s.query.sql,
                "SELECT over the views hosts, vms, images, image_cache, datasets, "
                "dataset_versions, dataset_cache, vdisks, virtualization, futures, networks, "
                "nics, machines, machines_ext");
  q->add_flag("--set", s.query.set,
              "Find sets of --size rows with the same --same value "
              "whose --sum totals between --min and --max");
  q->add_option("--from", s.query.from, "View to draw set members from")->capture_default_str();
  q->add_option("--size", s.query.size, "Members per set")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  q->add_option("--same", s.query.same, "Column all members share (e.g. network)");
  q->add_option("--sum", s.query.sum, "Integer column to total")->capture_default_str();
  q->add_option("--min", s.query.min, "Lowest total (number, or size like 512M)");
  q->add_option("--max", s.query.max, "Highest total (number, or size like 1G)");
  q->add_option("--where", s.query.where, "SQL condition on the members");
  q->add_option("--max-rows", s.query.max_rows, "Refuse results longer than this")
      ->check(CLI::Range(1, 10000));
}

}  // namespace vmgrid::cli
