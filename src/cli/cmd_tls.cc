// `vmgrid tls init|issue`: the grid's CA and certificates.
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
#include "common/tls.h"
#include "common/util.h"
#include "common/vm_state.h"

namespace vmgrid::cli {
namespace {

// `vmgrid tls init`: a CA for the grid's roles.
int CmdTlsInit(const Ctx& ctx, const std::string& dir) {
  const bool existed = IsRegularFile(dir + "/ca.pem");
  if (Status st = CreateCa(dir); !st.ok()) return Fail(ctx, st.error());
  ctx.io.out << (existed ? "kept the existing CA in " : "created a CA: ") << dir
             << "/ca.pem (certificate, give it to every role and user as --ca) and " << dir
             << "/ca.key (private key, 0600: keep it off the hosts)" << std::endl;
  return 0;
}

// `vmgrid tls issue NAME`: a certificate of DIR's CA for one role.
int CmdTlsIssue(const Ctx& ctx, const std::string& dir, CertificateRequest req, std::string out) {
  if (out.empty()) out = dir + "/" + req.common_name;
  if (req.dns_names.empty() && req.ip_addresses.empty())
    return UsageError(ctx, "give the names clients reach it by: --dns NAME and/or --ip ADDRESS",
                      "tls issue");
  if (Status st = IssueCertificate(dir, req, out + ".pem", out + ".key"); !st.ok())
    return Fail(ctx, st.error());
  ctx.io.out << "issued " << out << ".pem and " << out << ".key (0600) for " << req.common_name
             << "; serve with --tls-cert " << out << ".pem --tls-key " << out << ".key --ca " << dir
             << "/ca.pem" << std::endl;
  return 0;
}

}  // namespace

// The flags of these commands, kept for the parse.
struct AddTlsCommandsFlags {
  std::string tls_dir;
  CertificateRequest tls_request;
  std::string tls_out;
};

void AddTlsCommands(CommandTree& t) {
  auto& s = t.Keep<AddTlsCommandsFlags>();
  auto* g = t.Group(&t.app, "tls", "Certificates for TLS between the grid's roles and users");
  g->group("Server roles");
  t.Leaf(g, "init", "Create the grid's CA (DIR/ca.pem, DIR/ca.key); keeps an existing one",
         [&] { return CmdTlsInit(t.ctx, s.tls_dir); })
      ->add_option("--dir", s.tls_dir, "Directory of the CA")
      ->required();
  auto* issue = t.Leaf(g, "issue", "Issue a certificate (NAME.pem, NAME.key) signed by DIR's CA",
                       [&] { return CmdTlsIssue(t.ctx, s.tls_dir, s.tls_request, s.tls_out); });
  issue->add_option("NAME", s.tls_request.common_name, "Name of the role or host (certificate CN)")
      ->required();
  issue->add_option("--dir", s.tls_dir, "Directory of the CA")->required();
  issue->add_option("--dns", s.tls_request.dns_names, "DNS name clients use (repeatable)");
  issue->add_option("--ip", s.tls_request.ip_addresses, "IP address clients use (repeatable)");
  issue->add_option("--days", s.tls_request.days, "Validity in days")
      ->check(CLI::Range(1, 3650))
      ->capture_default_str();
  issue->add_option("--out", s.tls_out, "Path prefix of the files (default: DIR/NAME)");
}

}  // namespace vmgrid::cli
