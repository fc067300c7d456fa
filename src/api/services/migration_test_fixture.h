// The fixture of the services that move VMs between hosts (migration and
// drain): ServiceTest's h1 plus a second host h2 (8 vCPUs, 8 GiB), and a
// MigrationService over the fake agent on an operation queue of its own.
#pragma once

#include <chrono>
#include <memory>

#include "api/admission.h"
#include "api/op_queue.h"
#include "api/services/migration_service.h"
#include "api/services/network_service.h"
#include "api/services/service_test_fixture.h"

namespace vmgrid {

class MigrationTestBase : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto h2 =
        store_->HeartbeatHost("h2", "https://10.9.8.7:7001", HostCapacity{8, 8192, 10000, false});
    ASSERT_TRUE(h2.ok()) << h2.error().message;
    h2_ = *h2;
    networks_ = std::make_unique<NetworkService>(*store_);
    migrations_ = std::make_unique<MigrationService>(*store_, index_, agent_, *networks_, ops_,
                                                     clock_, long_ops_);
  }
  void Settle() { ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10))); }
  Host HostNow(const std::string& id) { return *store_->GetHost(id); }

  Host h2_;
  std::unique_ptr<NetworkService> networks_;
  OpQueue ops_;
  Admission long_ops_{"long operations", 2, 0, 5};
  std::unique_ptr<MigrationService> migrations_;
};

}  // namespace vmgrid
