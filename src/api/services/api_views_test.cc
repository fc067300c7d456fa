// ApiViews: a VM list answered from cached views is the same text as one
// built afresh, after every kind of change a view shows.
#include "api/services/api_views.h"

#include <set>

#include "api/services/service_test_fixture.h"

namespace vmgrid {
namespace {

using nlohmann::json;

class ApiViewsTest : public ServiceTest {
 protected:
  std::vector<Vm> All() { return *store_->ListVms(alice_.id); }
  // The cached text must equal the view built without the cache.
  void ExpectFresh(ApiViews& views, const std::string& why) {
    std::vector<Vm> vms = All();
    std::string fresh = views.VmListJson(vms).dump(-1, ' ', false, json::error_handler_t::replace);
    EXPECT_EQ(views.VmListText(vms), fresh) << why;
  }
};

TEST_P(ApiViewsTest, ListTextIsTheFreshViewAfterEveryChange) {
  ApiViews views(*store_);
  EXPECT_EQ(views.VmListText({}), "[]");
  Vm a = AddVm("a", "running");
  Vm b = AddVm("b\"quoted\\name\n", "stopped");
  ExpectFresh(views, "first answer");
  ExpectFresh(views, "second answer, from the cache");

  ASSERT_TRUE(store_->ModifyVm(a.id, [](Vm& v) { v.state = "stopped"; }).ok());
  ExpectFresh(views, "a state change");
  EXPECT_NE(views.VmListText(All()).find("\"state\":\"stopped\""), std::string::npos);

  ASSERT_TRUE(
      store_->ModifyVm(b.id, [](Vm& v) { v.error = "disque plein: \u00e9crit <\\x00>"; }).ok());
  ExpectFresh(views, "an error text with characters to escape");

  Vm c = AddVm("c", "running");
  ExpectFresh(views, "one VM added");
  ASSERT_TRUE(*store_->MarkHostDown(host_.id));
  ExpectFresh(views, "its host down");
  EXPECT_EQ(json::parse(views.VmListText(All()))[0]["host_state"], "down");

  Image img = *store_->GetImage("img-1", "");
  img.name = "tiny-renamed";
  ASSERT_TRUE(store_->UpdateImage(img).ok());
  ExpectFresh(views, "its image renamed");
  EXPECT_EQ(json::parse(views.VmListText(All()))[0]["image"], "tiny-renamed");

  ASSERT_TRUE(store_->DeleteVm(a.id).ok());
  ExpectFresh(views, "one VM deleted");
  auto list = json::parse(views.VmListText(All()));
  ASSERT_EQ(list.size(), 2u);
  std::set<std::string> ids{list[0]["id"], list[1]["id"]};
  EXPECT_EQ(ids, (std::set<std::string>{b.id, c.id}));
}

INSTANTIATE_TEST_SUITE_P(Backends, ApiViewsTest, testing_db::Backends(), testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
