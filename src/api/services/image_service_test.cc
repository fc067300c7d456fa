// ImageService on a fresh store with a fake agent and no image server:
// creation checks its input, another user neither sees nor changes an
// image, refusals come before an upload's body is read, finalize and the
// post-boot checkpoint run as operations and honour quota and state.
#include "api/services/image_service.h"

#include <fstream>

#include "api/admission.h"
#include "api/services/service_test_fixture.h"

namespace vmgrid {
namespace {

class ImageServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    dir_ = ::testing::TempDir() + "/" + NewId("images");
    images_ = std::make_unique<ImageService>(*store_, index_, agent_, ops_, clock_, long_ops_,
                                             ImageStorage{dir_, nullptr, ""}, stopping_);
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  void Settle() { ASSERT_TRUE(ops_.WaitIdle(std::chrono::seconds(10))); }
  // A new image of alice's, `uploading`; its record.
  Image NewUploading(const std::string& name) {
    NewImage n;
    n.name = name;
    auto made = images_->Create(Caller{alice_}, n);
    EXPECT_TRUE(made.ok()) << made.error().message;
    return *store_->GetImage((*made)["id"].get<std::string>(), "");
  }
  static BodyReader Body(const std::string& bytes, bool* read = nullptr) {
    return [bytes, read](const std::function<bool(const char*, size_t)>& receive) {
      if (read) *read = true;
      return receive(bytes.data(), bytes.size());
    };
  }

  std::string dir_;
  OpQueue ops_;
  Admission long_ops_{"long operations", 2, 0, 5};
  std::atomic<bool> stopping_{false};
  std::unique_ptr<ImageService> images_;
};

TEST_P(ImageServiceTest, CreateChecksItsInputAndLeavesNothingOnRefusal) {
  NewImage n;
  n.name = "bad name";
  auto bad = images_->Create(Caller{alice_}, n);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("image name"), std::string::npos) << bad.error().message;
  n.name = "initrd-only";
  n.has_initrd = true;
  EXPECT_EQ(images_->Create(Caller{alice_}, n).error().code, ErrorCode::kInvalidArgument);
  n.has_initrd = false;
  n.append = std::string(5000, 'x');
  auto append = images_->Create(Caller{alice_}, n);
  ASSERT_FALSE(append.ok());
  EXPECT_NE(append.error().message.find("append"), std::string::npos) << append.error().message;
  EXPECT_FALSE(FileExists(dir_) && !std::filesystem::is_empty(dir_)) << "no directory left";
  auto list = images_->List(Caller{alice_}, {});
  ASSERT_TRUE(list.ok()) << list.error().message;
  EXPECT_EQ((*list)["images"].size(), 1u) << "only the fixture's image";

  n.append.clear();
  n.name = "fresh";
  auto made = images_->Create(Caller{alice_}, n);
  ASSERT_TRUE(made.ok()) << made.error().message;
  EXPECT_EQ((*made)["state"], "uploading");
  EXPECT_TRUE(FileExists(dir_ + "/" + (*made)["id"].get<std::string>()));
}

TEST_P(ImageServiceTest, AnotherUserNeitherSeesNorChangesAnImage) {
  Image mine = NewUploading("mine");
  User bob = store_->CreateUser("bob", "user")->first;
  const Caller b{bob};
  EXPECT_EQ(images_->Get(b, mine.id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(images_->Delete(b, mine.id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(images_->Finalize(b, mine.id).error().code, ErrorCode::kNotFound);
  bool read = false;
  EXPECT_EQ(images_->Upload(b, mine.id, "disk", Body("x", &read)).error().code,
            ErrorCode::kNotFound);
  EXPECT_FALSE(read);
  EXPECT_EQ(images_->Checkpoint(b, "img-1", std::nullopt, 1).error().code, ErrorCode::kNotFound);
  auto list = images_->List(b, {});
  ASSERT_TRUE(list.ok()) << list.error().message;
  EXPECT_TRUE((*list)["images"].empty());

  // The admin's images are public: seen by every user, changed by the admin only.
  User admin = store_->CreateUser("root", "admin")->first;
  NewImage n;
  n.name = "base";
  auto pub = images_->Create(Caller{admin}, n);
  ASSERT_TRUE(pub.ok()) << pub.error().message;
  EXPECT_TRUE(images_->Get(b, "base").ok());
  EXPECT_EQ(images_->Delete(b, "base").error().code, ErrorCode::kPermissionDenied);
  Settle();
  EXPECT_TRUE(agent_.calls.empty());
}

TEST_P(ImageServiceTest, UploadRefusalsComeBeforeTheBodyIsRead) {
  bool read = false;
  auto ready = images_->Upload(Caller{alice_}, "img-1", "kernel", Body("x", &read));
  ASSERT_FALSE(ready.ok());
  EXPECT_EQ(ready.error().code, ErrorCode::kFailedPrecondition) << "published images are immutable";
  EXPECT_FALSE(read);

  // While one upload of a kind runs, a second one and a finalize are refused.
  Image img = NewUploading("busy");
  Result<nlohmann::json> second = nlohmann::json(), finalize = nlohmann::json();
  bool second_read = false;
  BodyReader first = [&](const std::function<bool(const char*, size_t)>& receive) {
    second = images_->Upload(Caller{alice_}, img.id, "kernel", Body("y", &second_read));
    finalize = images_->Finalize(Caller{alice_}, img.id);
    return receive("not a kernel", 12);
  };
  auto r = images_->Upload(Caller{alice_}, img.id, "kernel", first);
  ASSERT_FALSE(r.ok()) << "not a kernel";
  EXPECT_NE(r.error().message.find("kernel rejected"), std::string::npos) << r.error().message;
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(second_read);
  ASSERT_FALSE(finalize.ok());
  EXPECT_EQ(finalize.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(FileExists(img.dir + "/vmlinuz")) << "a rejected file is not stored";
}

TEST_P(ImageServiceTest, FinalizeNeedsEveryFileAndMakesTheImageReady) {
  Image img = NewUploading("disk-image");
  auto missing = images_->Finalize(Caller{alice_}, img.id);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(missing.error().message.find("missing: disk"), std::string::npos)
      << missing.error().message;
  std::ofstream(img.dir + "/disk.raw") << std::string(4096, '\0');
  auto op = images_->Finalize(Caller{alice_}, img.id);
  ASSERT_TRUE(op.ok()) << op.error().message;
  EXPECT_EQ((*op)["kind"], "image_finalize");
  Settle();
  EXPECT_EQ(store_->GetImage(img.id, "")->state, "ready");
  auto polled = ops_.Get((*op)["id"].get<std::string>(), alice_.id, false);
  ASSERT_TRUE(polled.ok()) << polled.error().message;
  EXPECT_EQ((*polled)["state"], "succeeded");
  EXPECT_EQ(long_ops_.held(alice_.id), 0) << "the slot is given back";
}

TEST_P(ImageServiceTest, AFinalizeOverTheQuotaFailsAndIsShownWithTheImage) {
  UserQuota q;
  q.image_bytes = 1000;
  ASSERT_TRUE(store_->SetUserQuota("alice", q).ok());
  Image img = NewUploading("big");
  img.size_bytes = 4096;
  ASSERT_TRUE(store_->UpdateImage(img).ok());
  std::ofstream(img.dir + "/disk.raw") << std::string(4096, '\0');
  auto op = images_->Finalize(Caller{alice_}, img.id);
  ASSERT_TRUE(op.ok()) << op.error().message;
  Settle();
  auto shown = images_->Get(Caller{alice_}, img.id);
  ASSERT_TRUE(shown.ok()) << shown.error().message;
  EXPECT_EQ((*shown)["state"], "uploading");
  EXPECT_EQ((*shown)["finalize"]["state"], "failed");
  EXPECT_EQ((*shown)["finalize"]["operation"], (*op)["id"]);
  // Deleting it forgets the failure with the image.
  EXPECT_TRUE(images_->Delete(Caller{alice_}, img.id).ok());
  EXPECT_FALSE(FileExists(img.dir));
}

TEST_P(ImageServiceTest, ACheckpointBootIsReservedLikeAVmAndReleasedAfter) {
  auto small = images_->Checkpoint(Caller{alice_}, "img-1", 8, 1);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(small.error().message.find("'memory_mb'"), std::string::npos) << small.error().message;
  auto huge = images_->Checkpoint(Caller{alice_}, "img-1", 512, 16);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.error().code, ErrorCode::kResourceExhausted) << "h1 has 8 vCPUs";

  auto started = images_->Checkpoint(Caller{alice_}, "img-1", std::nullopt, 2);
  ASSERT_TRUE(started.ok()) << started.error().message;
  EXPECT_EQ((*started)["checkpoint"]["state"], "creating");
  EXPECT_EQ((*started)["checkpoint"]["memory_mb"], 256);
  Settle();
  EXPECT_EQ(agent_.calls, (std::vector<std::string>{"image-checkpoint"}));
  EXPECT_EQ(store_->GetImage("img-1", "")->ckpt_state, "ready");
  auto vms = store_->ListVms("");
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty()) << "the reservation is released";
  EXPECT_EQ(images_->failed_writes(), 0);

  Image uploading = NewUploading("not-yet");
  EXPECT_EQ(images_->Checkpoint(Caller{alice_}, uploading.id, std::nullopt, 1).error().code,
            ErrorCode::kFailedPrecondition);
}

TEST_P(ImageServiceTest, AnImageIsNotDeletedWhileItsCheckpointIsMade) {
  Image img = *store_->GetImage("img-1", "");
  img.ckpt_state = "creating";
  ASSERT_TRUE(store_->UpdateImage(img).ok());
  auto r = images_->Delete(Caller{alice_}, "img-1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(store_->GetImage("img-1", "").ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, ImageServiceTest, testing_db::Backends(),
                         testing_db::BackendName);

}  // namespace
}  // namespace vmgrid
