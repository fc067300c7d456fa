// The web portal in a real browser (docs/portal.md, "Browser test"): a
// local grid (controller + one agent, real QEMU guests), an image and two
// users; tests/ui/portal_test.mjs then drives headless Debian Chromium
// through playwright-core (installed by scripts/setup.sh into
// tests/ui/node_modules): it signs in as alice, creates a VM from the tiny
// image, sees it become running, runs a command and reads its output,
// checks that bob's VM never appears, and saves a screenshot of each page
// in build/ui-screenshots/.
//
// Without Chromium or the driver the test fails when CI=true and is skipped
// with a message otherwise.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/grid_fixture.h"

namespace vmgrid {
namespace {

using namespace testing_support;

std::string Env(const char* name, const std::string& fallback) {
  const char* v = getenv(name);
  return v && *v ? v : fallback;
}

bool InCi() {
  std::string ci = Env("CI", "");
  return !ci.empty() && ci != "0" && ci != "false";
}

// Runs argv with `env` added; returns its exit code (-1 if it could not run).
int RunCommand(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  pid_t pid = fork();
  if (pid == 0) {
    for (const auto& e : env) putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    execvp(cargv[0], cargv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(PortalBrowserTest, UserDrivesThePortalInChromium) {
  const std::string chromium = Env("VMGRID_CHROMIUM", "/usr/bin/chromium");
  const std::string ui_dir = std::string(VMGRID_SOURCE_DIR) + "/tests/ui";
  std::string missing;
  if (access(chromium.c_str(), X_OK) != 0)
    missing = chromium + " (Debian package chromium; scripts/setup.sh installs it)";
  else if (!std::filesystem::exists(ui_dir + "/node_modules/playwright-core"))
    missing = "tests/ui/node_modules/playwright-core (scripts/setup.sh runs npm ci there)";
  else if (RunCommand({"node", "--version"}, {}) != 0)
    missing = "node (Debian package nodejs)";
  if (!missing.empty()) {
    if (InCi()) FAIL() << "the portal's browser test needs " << missing;
    GTEST_SKIP() << "skipped outside CI: the portal's browser test needs " << missing;
  }

  auto grid = StartGrid("portal", 1, {}, /*tls=*/false);
  ASSERT_TRUE(grid);
  ApiClient admin = grid->Admin();
  json image = ImportTiny(admin, "tiny", /*checkpoint=*/false);
  std::string alice = NewUserToken(*grid, "alice");
  std::string bob = NewUserToken(*grid, "bob");
  // Bob's VM exists (and boots) the whole time alice looks at the portal.
  ApiClient b(grid->url(), bob);
  auto bobs = b.Post("/v1/vms", {{"image", image["id"]}, {"name", "bob-secret-vm"}});
  ASSERT_TRUE(bobs.ok()) << bobs.error().message;

  const std::string shots =
      Env("VMGRID_UI_SCREENSHOTS", std::string(VMGRID_BINARY_DIR) + "/ui-screenshots");
  std::filesystem::create_directories(shots);
  int rc = RunCommand({"node", ui_dir + "/portal_test.mjs"},
                      {"VMGRID_URL=" + grid->url(), "VMGRID_ALICE_TOKEN=" + alice,
                       "VMGRID_ADMIN_TOKEN=" + grid->admin_token(), "VMGRID_OTHER_VM=bob-secret-vm",
                       "VMGRID_CHROMIUM=" + chromium, "VMGRID_UI_SCREENSHOTS=" + shots});
  EXPECT_EQ(rc, 0) << "tests/ui/portal_test.mjs failed (its output is above; screenshots in "
                   << shots << ")";
  StopGrid(grid);
}

}  // namespace
}  // namespace vmgrid
