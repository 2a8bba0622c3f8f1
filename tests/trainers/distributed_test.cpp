// trainers/distributed: the collectives on loopback (two ranks as two threads of this process), the sharded
// optimizer (ZeRO-1) against the unsharded one, and with the real binary: 2 processes x batch b train
// exactly like 1 process x batch 2b (losses and weights to 1e-5, dual_channel on), checkpoints move between
// 1 and 2 processes, and a sharded run equals an unsharded one bitwise and resumes from and into it.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <random>
#include <thread>

#include "lib/io/safetensors.h"
#include "test_util.h"
#include "tiny_fixture.h"
#include "trainers/distributed.h"
#include "trainers/optimizer.h"

namespace modalign {
namespace {
namespace fs = std::filesystem;

// A port unlikely to collide with a parallel test, below the ephemeral range (32768+) that Gloo pairs and
// other connections take their local ports from.
int64_t free_port() {
  std::random_device rd;
  return 20000 + static_cast<int64_t>(rd() % 12000);
}

TEST(DataParallel, SumsBroadcastsAndKeepsMissingGradientsMissing) {
  DistributedConfig config;
  config.timeout_s = 30;
  const int64_t port = free_port();
  std::vector<std::vector<torch::Tensor>> seen(2);
  auto rank = [&](int64_t r) {
    WorldInfo w;
    w.rank = r, w.world_size = 2, w.master_port = port;
    DataParallel dp(config, w);
    // Mixed dtypes and shapes in one call (two buckets), values that differ per rank.
    torch::Tensor a = torch::full({2, 3}, 1.0 + static_cast<double>(r), torch::kFloat32);
    torch::Tensor b = torch::arange(4, torch::kFloat64) * static_cast<double>(r + 1);
    dp.all_reduce_sum({a, b});
    // Gradients: p0 has one on rank 0 only, p1 on both, p2 on none.
    torch::Tensor p0 = torch::zeros({3}, torch::requires_grad()), p1 = torch::zeros({2}, torch::requires_grad()),
                  p2 = torch::zeros({2}, torch::requires_grad());
    if (r == 0) p0.mutable_grad() = torch::ones({3});
    p1.mutable_grad() = torch::full({2}, 10.0 * static_cast<double>(r + 1));
    dp.all_reduce_grads({p0, p1, p2});
    torch::Tensor c = torch::full({5}, static_cast<double>(r) + 7.0);
    dp.broadcast({c});
    // bfloat16, which Gloo lacks (it travels as float32).
    torch::Tensor h = torch::full({3}, 1.5 + static_cast<double>(r), torch::kBFloat16);
    torch::Tensor hb = torch::full({2}, 0.25 + static_cast<double>(r), torch::kBFloat16);
    dp.all_reduce_sum({h});
    dp.broadcast({hb});
    dp.barrier();
    seen[static_cast<size_t>(r)] = {a, b, p0.grad(), p1.grad(), c, torch::tensor(p2.grad().defined()), h, hb};
  };
  std::thread t1(rank, 1);
  rank(0);
  t1.join();
  for (const auto& s : seen) {
    EXPECT_TRUE(torch::allclose(s[0], torch::full({2, 3}, 3.0)));                      // 1 + 2
    EXPECT_TRUE(torch::allclose(s[1], torch::arange(4, torch::kFloat64) * 3.0));       // x1 + x2
    EXPECT_TRUE(torch::allclose(s[2], torch::ones({3})));                              // rank 0's, plus zeros
    EXPECT_TRUE(torch::allclose(s[3], torch::full({2}, 30.0)));
    EXPECT_TRUE(torch::allclose(s[4], torch::full({5}, 7.0)));                         // rank 0's values
    EXPECT_FALSE(s[5].item<bool>()) << "a parameter without a gradient anywhere must keep none";
    EXPECT_TRUE(torch::equal(s[6], torch::full({3}, 4.0, torch::kBFloat16)));   // 1.5 + 2.5
    EXPECT_TRUE(torch::equal(s[7], torch::full({2}, 0.25, torch::kBFloat16)));  // rank 0's
  }
}

// Parameters of awkward sizes: in group order w (5x3), v (4x4) (weight decay), then b (7) (none): 38
// values, so the two ranks' ranges (19 each) split v.
struct ThreeParams : torch::nn::Module {
  explicit ThreeParams(torch::ScalarType dtype) {
    w = register_parameter("w", torch::zeros({5, 3}, dtype));
    b = register_parameter("b", torch::zeros({7}, dtype));
    v = register_parameter("v", torch::zeros({4, 4}, dtype));
  }
  void set(const std::vector<torch::Tensor>& values) {
    torch::NoGradGuard no_grad;
    w.copy_(values[0]), b.copy_(values[1]), v.copy_(values[2]);
  }
  std::vector<torch::Tensor> values() const { return {w.clone(), b.clone(), v.clone()}; }
  torch::Tensor w, b, v;
};

// Two ranks (threads) run a sharded GroupedAdamW over ThreeParams of `dtype`; the unsharded one runs alone.
void expect_sharded_equals_unsharded(torch::ScalarType dtype) {
  TrainConfig c;
  c.learning_rate = 1e-2, c.weight_decay = 0.1;
  torch::manual_seed(12);
  const std::vector<torch::Tensor> init = {torch::randn({5, 3}), torch::randn({7}), torch::randn({4, 4})};
  std::vector<std::vector<torch::Tensor>> grads;  // per step; b has none at step 2
  for (int step = 0; step < 4; ++step)
    grads.push_back({torch::randn({5, 3}), step == 1 ? torch::Tensor() : torch::randn({7}), torch::randn({4, 4})});
  auto run_steps = [&](ThreeParams& net, GroupedAdamW& opt, int from, int to) {
    for (int step = from; step < to; ++step) {
      net.w.mutable_grad() = grads[step][0].to(dtype).clone(), net.v.mutable_grad() = grads[step][2].to(dtype).clone();
      net.b.mutable_grad() = grads[step][1].defined() ? grads[step][1].to(dtype).clone() : torch::Tensor();
      opt.step(0.5 + step, /*grad_scale=*/0.7);
      opt.zero_grad();
    }
  };
  // Unsharded: steps 1-2, then 3-4.
  ThreeParams ref(dtype);
  ref.set(init);
  GroupedAdamW plain(ref, c);
  run_steps(ref, plain, 0, 2);
  const std::vector<torch::Tensor> params2 = ref.values();
  NamedTensors state2 = plain.state();
  for (auto& entry : state2) entry.second = entry.second.clone();  // state() returns the live moments
  run_steps(ref, plain, 2, 4);
  const std::vector<torch::Tensor> params4 = ref.values();
  const NamedTensors state4 = plain.state();

  auto expect_equal = [](const NamedTensors& a, const NamedTensors& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    }
  };
  DistributedConfig config;
  config.timeout_s = 30;
  const int64_t port = free_port();
  std::vector<std::vector<torch::Tensor>> seen(2);
  std::vector<NamedTensors> states(4);
  auto rank = [&](int64_t r) {
    WorldInfo world;
    world.rank = r, world.world_size = 2, world.master_port = port;
    DataParallel dp(config, world);
    ThreeParams net(dtype);
    net.set(init);
    GroupedAdamW sharded(net, c);
    sharded.shard(dp);
    run_steps(net, sharded, 0, 2);
    states[static_cast<size_t>(r)] = sharded.state();  // gathered: the unsharded layout
    // A sharded optimizer resumed from the unsharded state of step 2.
    ThreeParams resumed(dtype);
    resumed.set(params2);
    GroupedAdamW again(resumed, c);
    again.shard(dp);
    again.load_state(state2);
    run_steps(resumed, again, 2, 4);
    states[static_cast<size_t>(2 + r)] = again.state();
    seen[static_cast<size_t>(r)] = resumed.values();
    for (const auto& t : net.values()) seen[static_cast<size_t>(r)].push_back(t);
  };
  std::thread t1(rank, 1);
  rank(0);
  t1.join();
  for (int r = 0; r < 2; ++r) {
    expect_equal(states[static_cast<size_t>(r)], state2);
    expect_equal(states[static_cast<size_t>(2 + r)], state4);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_TRUE(torch::equal(seen[static_cast<size_t>(r)][i], params4[i])) << "rank " << r << " param " << i;
      EXPECT_TRUE(torch::equal(seen[static_cast<size_t>(r)][3 + i], params2[i])) << "rank " << r << " param " << i;
    }
  }
  EXPECT_FALSE(torch::equal(params4[1], params2[1])) << "the test must move every parameter";
}

TEST(DataParallel, ShardedAdamWEqualsUnshardedBitwiseAndKeepsTheUnshardedStateLayout) {
  // float32 takes the fused update, bfloat16 the tensor-operator one (against LibTorch's AdamW unsharded).
  for (torch::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    expect_sharded_equals_unsharded(dtype);
  }
}

TEST(DataParallel, RendezvousWithoutPeersTimesOutWithTheAddress) {
  DistributedConfig config;
  config.timeout_s = 1;
  WorldInfo w;
  w.rank = 1, w.world_size = 2, w.master_port = free_port();  // nobody serves this port
  test::expect_error<std::runtime_error>([&] { DataParallel dp(config, w); },
                                         {"rank 1 of 2: rendezvous at 127.0.0.1:", "failed within 1 s"});
}

TEST(DataParallel, WorldComesFromTorchrunVariables) {
  DistributedConfig config;
  setenv("RANK", "3", 1), setenv("WORLD_SIZE", "4", 1), setenv("MASTER_PORT", "31000", 1);
  WorldInfo w = world_from_env(config);
  EXPECT_EQ(w.rank, 3);
  EXPECT_EQ(w.world_size, 4);
  EXPECT_EQ(w.local_rank, 3);
  EXPECT_EQ(w.master_port, 31000);
  setenv("RANK", "4", 1);
  test::expect_error<ConfigError>([&] { world_from_env(config); }, {"RANK=4 and WORLD_SIZE=4"});
  unsetenv("RANK"), unsetenv("WORLD_SIZE"), unsetenv("MASTER_PORT");
  EXPECT_FALSE(world_from_env(config).distributed());
}

#ifdef MODALIGN_CLI
// The real binary on a tiny model: 20 steps with dual_channel, one loss record per step.
class DataParallelRun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    test::tiny_fixture(*dir_, 64, 4);
    dir_->write("run.yaml", R"(model: {hf_config: config.json, dtype: float64}
data: {train_files: [data/train.json], image_folder: data, tokenizer: data/tokenizer.model, chat_template: plain}
train: {max_steps: 20, learning_rate: 3.0e-3, warmup_steps: 2, num_threads: 1, freeze_vision_tower: false}
losses: [{name: dual_channel, weight: 0.5, target: 0.8}]
checkpoint: {save_steps: 10, save_total_limit: 3}
logging: {logging_steps: 1, progress: plain}
)");
  }
  static void TearDownTestSuite() { delete dir_; }

  // Runs `modalign train` with nproc processes of batch b; returns the exit code.
  static int train(const std::string& out, int64_t nproc, int64_t batch, const std::string& extra = "") {
    std::string cmd = fmt::format("{} train -c {}/run.yaml --nproc {} --set train.output_dir={} "
                                  "--set train.per_device_train_batch_size={} --set distributed.master_port={} {} > {}.log 2>&1",
                                  MODALIGN_CLI, dir_->path().string(), nproc, out, batch, free_port(), extra, out);
    return std::system(cmd.c_str());
  }
  static std::vector<double> losses(const std::string& out) {
    std::vector<double> l;
    std::ifstream in(out + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j["kind"] == "train") l.push_back(j["loss"].get<double>());
    }
    return l;
  }
  static void expect_same_weights(const std::string& a, const std::string& b, double tol) {
    SafetensorsFile fa(a + "/model.safetensors"), fb(b + "/model.safetensors");
    ASSERT_EQ(fa.entries().size(), fb.entries().size());
    for (const auto& e : fa.entries()) {
      torch::Tensor x = fa.tensor(e.name), y = fb.tensor(e.name);
      EXPECT_LE((x - y).abs().max().item<double>(), tol) << e.name;
    }
  }
  static test::TempDir* dir_;
};
test::TempDir* DataParallelRun::dir_ = nullptr;

TEST_F(DataParallelRun, TwoProcessesTrainLikeOneWithTheirCombinedBatch) {
  const std::string one = (dir_->path() / "one").string(), two = (dir_->path() / "two").string();
  ASSERT_EQ(train(one, 1, 4), 0) << test::read_text(one + ".log");
  ASSERT_EQ(train(two, 2, 2), 0) << test::read_text(two + ".log");
  std::vector<double> l1 = losses(one), l2 = losses(two);
  ASSERT_EQ(l1.size(), 20u);
  ASSERT_EQ(l2.size(), 20u);
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l1[i], l2[i], 1e-5 * std::max(1.0, std::abs(l1[i]))) << "step " << i + 1;
  expect_same_weights(one + "/step-000020", two + "/step-000020", 1e-5);

  // A 2-process checkpoint resumes in 1 process, and a 1-process one in 2, ending where the straight run did.
  for (const auto& [from, nproc, batch] : {std::tuple{two, 1, 4}, std::tuple{one, 2, 2}}) {
    const std::string resumed = (dir_->path() / fmt::format("resumed{}", nproc)).string();
    fs::create_directories(resumed);
    fs::copy(from + "/step-000010", resumed + "/step-000010", fs::copy_options::recursive);
    ASSERT_EQ(train(resumed, nproc, batch, "--set checkpoint.resume_from_checkpoint=auto"), 0) << test::read_text(resumed + ".log");
    expect_same_weights(one + "/step-000020", resumed + "/step-000020", 1e-5);
  }
  // Another global batch cannot resume (the data cursor counts global batches).
  const std::string other = (dir_->path() / "other").string();
  fs::create_directories(other);
  fs::copy(two + "/step-000010", other + "/step-000010", fs::copy_options::recursive);
  EXPECT_NE(train(other, 1, 2, "--set checkpoint.resume_from_checkpoint=auto"), 0);
  EXPECT_NE(test::read_text(other + ".log").find("global batch of 4 samples, this run's is 2"), std::string::npos)
      << test::read_text(other + ".log");
}

TEST_F(DataParallelRun, QwenWithLoraAndCheckpointingTrainsLikeOneProcess) {
  // A tiny Qwen2.5-VL (the golden file's shapes, the fixture's vocabulary; 32-px images = 16 tokens in 4
  // windows) with LoRA on every linear layer: 2 processes of batch 2 follow 1 process of batch 4, with and
  // without activation checkpointing.
  dir_->write("qwen_config.json", R"({"model_type": "qwen2_5_vl", "image_token_id": 3,
    "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
    "vision_config": {"depth": 4, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "patch_size": 4,
    "window_size": 16, "fullatt_block_indexes": [1, 3], "out_hidden_size": 32}})");
  const std::string qwen = fmt::format("--set model.hf_config={}/qwen_config.json --set data.image_min_pixels=1024 "
                                       "--set train.lora_rank=4 --set train.max_steps=6",
                                       dir_->path().string());
  const std::string one = (dir_->path() / "qwen_one").string(), two = (dir_->path() / "qwen_two").string();
  ASSERT_EQ(train(one, 1, 4, qwen), 0) << test::read_text(one + ".log");
  ASSERT_EQ(train(two, 2, 2, qwen), 0) << test::read_text(two + ".log");
  std::vector<double> l1 = losses(one), l2 = losses(two);
  ASSERT_EQ(l1.size(), 6u);
  ASSERT_EQ(l2.size(), 6u);
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l1[i], l2[i], 1e-5 * std::max(1.0, std::abs(l1[i]))) << "step " << i + 1;
  EXPECT_NE(l1.front(), l1.back());  // LoRA trained something
  expect_same_weights(one + "/step-000006", two + "/step-000006", 1e-5);
  // The same with activation checkpointing on both processes (the tower trains too: its blocks recompute).
  const std::string recomputed = (dir_->path() / "qwen_two_recomputed").string();
  ASSERT_EQ(train(recomputed, 2, 2, qwen + " --set train.gradient_checkpointing=true"), 0) << test::read_text(recomputed + ".log");
  std::vector<double> l3 = losses(recomputed);
  ASSERT_EQ(l3.size(), 6u);
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l1[i], l3[i], 1e-5 * std::max(1.0, std::abs(l1[i]))) << "step " << i + 1;
  expect_same_weights(one + "/step-000006", recomputed + "/step-000006", 1e-5);
}

TEST_F(DataParallelRun, ShardedOptimizerEqualsUnshardedBitwiseAndResumesEitherWay) {
  // ZeRO-1 on 2 processes: the same losses and weights as the unsharded 2-process run, bitwise; its
  // checkpoint (optimizer state gathered into the unsharded layout) resumes unsharded and an unsharded one
  // resumes sharded, both ending bitwise where the straight runs did.
  const std::string shard = "--set distributed.shard_optimizer=true";
  const std::string plain = (dir_->path() / "plain").string(), sharded = (dir_->path() / "sharded").string();
  ASSERT_EQ(train(plain, 2, 2), 0) << test::read_text(plain + ".log");
  ASSERT_EQ(train(sharded, 2, 2, shard), 0) << test::read_text(sharded + ".log");
  EXPECT_NE(test::read_text(sharded + ".log").find("AdamW moments sharded over 2 ranks"), std::string::npos);
  EXPECT_EQ(test::read_text(plain + ".log").find("sharded"), std::string::npos);
  EXPECT_EQ(losses(plain), losses(sharded));
  expect_same_weights(plain + "/step-000020", sharded + "/step-000020", 0);
  SafetensorsFile a(plain + "/step-000010/optimizer.safetensors"), b(sharded + "/step-000010/optimizer.safetensors");
  ASSERT_EQ(a.entries().size(), b.entries().size());
  for (const auto& e : a.entries()) EXPECT_TRUE(torch::equal(a.tensor(e.name), b.tensor(e.name))) << e.name;
  for (const auto& [from, extra] : {std::pair{sharded, std::string()}, std::pair{plain, shard}}) {
    const std::string resumed = from + "_resumed";
    fs::create_directories(resumed);
    fs::copy(from + "/step-000010", resumed + "/step-000010", fs::copy_options::recursive);
    ASSERT_EQ(train(resumed, 2, 2, extra + " --set checkpoint.resume_from_checkpoint=auto"), 0)
        << test::read_text(resumed + ".log");
    expect_same_weights(plain + "/step-000020", resumed + "/step-000020", 0);
  }
  // Under bf16 mixed precision (float32 master weights) as well.
  const std::string bf16 = "--set model.dtype=float32 --set train.bf16=true --set train.max_steps=6";
  const std::string plain16 = plain + "_bf16", sharded16 = sharded + "_bf16";
  ASSERT_EQ(train(plain16, 2, 2, bf16), 0) << test::read_text(plain16 + ".log");
  ASSERT_EQ(train(sharded16, 2, 2, bf16 + " " + shard), 0) << test::read_text(sharded16 + ".log");
  EXPECT_EQ(losses(plain16), losses(sharded16));
  expect_same_weights(plain16 + "/step-000006", sharded16 + "/step-000006", 0);
}

#endif  // MODALIGN_CLI

}  // namespace
}  // namespace modalign
