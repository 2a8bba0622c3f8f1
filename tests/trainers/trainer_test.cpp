// trainers/: bitwise-exact resume (accumulation, dual_channel, attention_kl, cosine schedule, background
// loader), region and sink losses trained end to end, config errors for data a loss cannot use, weights
// from a run folder, the initial loss of the demo preset, freezing by name, the non-finite guard,
// checkpoint discovery, rotation and TrainerState, optimizer groups and learning-rate schedules.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <regex>

#include "lib/data/dataset.h"
#include "lib/data/synth.h"
#include "lib/io/safetensors.h"
#include "lib/io/weights.h"
#include "losses/text_ce.h"
#include "test_util.h"
#include "tiny_fixture.h"
#include "trainers/checkpoint.h"
#include "trainers/components.h"
#include "trainers/optimizer.h"
#include "trainers/tower_pretrain.h"
#include "trainers/trainer.h"

namespace modalign {
namespace {
namespace fs = std::filesystem;

// A tiny model (golden shapes, vocabulary 300) on a small synthetic benchmark, plain template.
class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    test::tiny_fixture(*dir_, 40, 6);
  }
  static void TearDownTestSuite() { delete dir_; }

  static RunConfig config(const std::string& out) {
    RunConfig c;
    c.model.hf_config = (dir_->path() / "config.json").string();
    std::string data = (dir_->path() / "data").string();
    c.data.train_files = {data + "/train.json"};
    c.data.eval_files = {data + "/eval_conflict.json"};
    c.data.image_folder = data;
    c.data.tokenizer = data + "/tokenizer.model";
    c.data.chat_template = ChatTemplate::Plain;
    c.data.num_workers = 2;
    c.train.output_dir = (dir_->path() / out).string();
    c.train.num_threads = 2;
    c.train.learning_rate = 3e-3;
    c.train.warmup_steps = 1;
    c.train.per_device_train_batch_size = 3;
    c.train.gradient_accumulation_steps = 2;
    c.train.max_steps = 6;
    c.train.freeze_vision_tower = false;
    c.checkpoint.save_steps = 3;
    c.logging.logging_steps = 1;
    c.logging.progress = ProgressMode::Plain;
    LossEntry dual;
    dual.name = "dual_channel";
    c.losses = {dual};
    return c;
  }
  // A Qwen2.5-VL config.json of the golden file's shapes with the benchmark's vocabulary.
  static std::string qwen_config() {
    return dir_->write("qwen_config.json", R"({"model_type": "qwen2_5_vl", "image_token_id": 3,
      "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
      "vision_config": {"depth": 4, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "patch_size": 4,
      "window_size": 16, "fullatt_block_indexes": [1, 3], "out_hidden_size": 32}})");
  }
  static test::TempDir* dir_;
};
test::TempDir* TrainerTest::dir_ = nullptr;

// Runs `c` to step 6, then again from its step-3 checkpoint in `name`_resumed: both end bitwise equal.
// The straight run's result goes to `straight` when given.
void expect_bitwise_resume(const RunConfig& c, const fs::path& root, const std::string& name,
                           TrainResult* straight_out = nullptr) {
  TrainResult straight = Trainer(c).train();
  if (straight_out) *straight_out = straight;
  ASSERT_EQ(straight.steps, 6);
  for (double l : straight.losses) EXPECT_TRUE(std::isfinite(l));
  fs::create_directories(root / (name + "_resumed"));
  fs::copy(root / name / "step-000003", root / (name + "_resumed") / "step-000003", fs::copy_options::recursive);
  RunConfig r = c;
  r.train.output_dir = (root / (name + "_resumed")).string();
  r.checkpoint.resume_from_checkpoint = "auto";
  TrainResult resumed = Trainer(r).train();
  ASSERT_EQ(resumed.losses.size(), straight.losses.size());
  for (size_t i = 0; i < straight.losses.size(); ++i) EXPECT_EQ(resumed.losses[i], straight.losses[i]) << "step " << i + 1;
  NamedTensors a = load_tensors((root / name / "step-000006/model.safetensors").string());
  NamedTensors b = load_tensors((root / (name + "_resumed") / "step-000006/model.safetensors").string());
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
}

// The values of one metric of metrics.jsonl's train records, in step order.
std::vector<double> train_metric(const std::string& output_dir, const std::string& key) {
  std::vector<double> out;
  std::istringstream lines(test::read_text(output_dir + "/metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["kind"] == "train" && j.contains(key)) out.push_back(j[key].get<double>());
  }
  return out;
}

double mean_of(const std::vector<double>& v, size_t from, size_t to) {
  double sum = 0;
  for (size_t i = from; i < to; ++i) sum += v[i];
  return sum / static_cast<double>(to - from);
}

TEST_F(TrainerTest, ResumeIsBitwiseEqualWithAttentionKlOn) {
  RunConfig c = config("kl_resume");
  LossEntry kl;
  kl.name = "attention_kl";
  c.losses.push_back(kl);
  expect_bitwise_resume(c, dir_->path(), "kl_resume");
}

TEST_F(TrainerTest, ResumeIsBitwiseEqualWithActivationCheckpointing) {
  // Recomputed layers (decoder and the training CLIP tower) with accumulation and dual_channel: a resumed run
  // ends bitwise where the straight one did.
  RunConfig c = config("recompute_resume");
  c.train.gradient_checkpointing = true;
  expect_bitwise_resume(c, dir_->path(), "recompute_resume");
}

TEST_F(TrainerTest, Bf16MixedPrecisionResumesBitwiseAndTracksFloat32) {
  // train.bf16 with the tower training, accumulation, dual_channel and activation checkpointing: a resumed
  // run ends bitwise where the straight one did; the checkpoint's weights stay float32 (the master copy);
  // the losses differ from a float32 run's (the matmuls did run in bf16) by little.
  RunConfig c = config("bf16_resume");
  c.train.bf16 = true;
  c.train.gradient_checkpointing = true;
  TrainResult bf16;
  expect_bitwise_resume(c, dir_->path(), "bf16_resume", &bf16);
  TrainResult f32 = Trainer(config("bf16_vs_f32")).train();
  ASSERT_EQ(f32.losses.size(), bf16.losses.size());
  EXPECT_NE(f32.losses[0], bf16.losses[0]);
  for (size_t i = 0; i < f32.losses.size(); ++i)
    EXPECT_NEAR(bf16.losses[i], f32.losses[i], 0.02 * f32.losses[i]) << "step " << i + 1;
  for (const auto& [name, t] : load_tensors((dir_->path() / "bf16_resume/step-000006/model.safetensors").string()))
    EXPECT_EQ(t.scalar_type(), torch::kFloat32) << name;
  // The Qwen family trains under bf16 as well (its vision blocks, windows and merger in bf16).
  RunConfig q = config("bf16_qwen");
  q.model.hf_config = qwen_config();
  q.data.image_min_pixels = 1024;
  q.train.bf16 = true;
  q.train.max_steps = 2;
  TrainResult qwen = Trainer(q).train();
  ASSERT_EQ(qwen.losses.size(), 2u);
  for (double l : qwen.losses) EXPECT_TRUE(std::isfinite(l));
}

TEST_F(TrainerTest, QwenFamilyTrainsWithAlignmentLossesAndResumesBitwise) {
  // A Qwen2.5-VL of the golden file's shapes with the benchmark's vocabulary: the 16-pixel synth images
  // are resized to 32 x 32 (image_min_pixels 1024), 8 x 8 patches, 16 image tokens in 4 windows.
  RunConfig c = config("qwen_resume");
  c.model.hf_config = qwen_config();
  c.data.image_min_pixels = 1024;
  LossEntry kl;
  kl.name = "attention_kl";
  c.losses.push_back(kl);
  expect_bitwise_resume(c, dir_->path(), "qwen_resume");
  // The tower trained (freeze_vision_tower: false) and the checkpoint holds the Qwen names.
  NamedTensors first = load_tensors((dir_->path() / "qwen_resume/step-000003/model.safetensors").string());
  NamedTensors last = load_tensors((dir_->path() / "qwen_resume/step-000006/model.safetensors").string());
  bool found = false;
  for (size_t i = 0; i < first.size(); ++i) {
    if (first[i].first != "visual.blocks.0.attn.qkv.weight") continue;
    found = true;
    EXPECT_FALSE(torch::equal(first[i].second, last[i].second));
  }
  EXPECT_TRUE(found);
}

TEST_F(TrainerTest, SamplesWithSeveralImagesTrainInBothFamilies) {
  // Every other training sample holds two images (its own and its neighbour's, two placeholders): LLaVA
  // (fixed spans) and Qwen2.5-VL (spans of 16 tokens per 32-px image) train on them with dual_channel,
  // and the loader's batches really carry more images than samples.
  nlohmann::json j = nlohmann::json::parse(test::read_text((dir_->path() / "data/train.json").string()));
  for (size_t i = 0; i + 1 < j.size(); i += 2) {
    j[i]["image"] = {j[i]["image"], j[i + 1]["image"]};
    j[i].erase("regions");
    std::string& q = j[i]["conversations"][0]["value"].get_ref<std::string&>();
    q = "<image>\n<image>\n" + q.substr(q.find('\n') + 1);
  }
  const std::string multi = dir_->write("data/multi.json", j.dump());
  for (bool qwen : {false, true}) {
    RunConfig c = config(qwen ? "multi_qwen" : "multi_llava");
    c.data.train_files = {multi};
    if (qwen) c.model.hf_config = qwen_config(), c.data.image_min_pixels = 1024;
    c.checkpoint.save_steps = 0;
    TrainResult r = Trainer(c).train();
    ASSERT_EQ(r.steps, 6);
    for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
    ModelShapes shapes = shapes_from_hf_config(c.model.hf_config);
    auto processor = build_processor(c, shapes);
    Batch b = processor->collate({processor->process(load_dataset(multi)[0]), processor->process(load_dataset(multi)[1])});
    EXPECT_EQ(qwen ? b.image_grid_thw.size(0) : b.pixel_values.size(0), 3);
    EXPECT_EQ(b.visual_mask.sum(1)[0].item<int64_t>(), 2 * b.visual_mask.sum(1)[1].item<int64_t>());
  }
}

TEST_F(TrainerTest, RegionAndSinkLossesTrainEndToEndAndFall) {
  // Each loss alone, 40 steps on synth data: its own value falls.
  struct Case {
    std::string name;
    SinkTokens sink;
  };
  for (const Case& k : {Case{"attention_kl", SinkTokens::Bos}, Case{"sink_suppression", SinkTokens::Bos},
                        Case{"sink_suppression", SinkTokens::System}}) {
    const std::string out = k.name + (k.sink == SinkTokens::System ? "_system" : "_bos");
    RunConfig c = config(out);
    c.train.max_steps = 40;
    c.train.gradient_accumulation_steps = 1;
    c.data.eval_files.clear();
    c.train.per_device_train_batch_size = 8;
    c.checkpoint.save_steps = 0;
    c.checkpoint.save_final = false;
    c.data.chat_template = ChatTemplate::VicunaV1;  // a system prompt before the image
    LossEntry e;
    e.name = k.name;
    e.weight = 1.0;
    if (e.name == "sink_suppression") e.get<SinkSuppressionOptions>().sink = k.sink;
    c.losses = {e};
    Trainer(c).train();
    std::vector<double> v = train_metric(c.train.output_dir, k.name);
    ASSERT_EQ(v.size(), 40u) << out;
    EXPECT_LT(mean_of(v, 30, 40), mean_of(v, 0, 10) - 0.05 * std::abs(mean_of(v, 0, 10))) << out;
  }
}

TEST_F(TrainerTest, ModalityContrastTermsTrainEndToEndAndResumeBitwise) {
  // Each contrast term replaces text_ce (logged beside it with weight 0): the run computes the text-alone
  // forward each micro-batch, the term is finite and differs from text CE, and a resumed run ends bitwise.
  for (const char* name : {"contrastive_tokens", "text_prior_poe"}) {
    const std::string out = std::string("contrast_") + name;
    RunConfig c = config(out);
    LossEntry e;
    e.name = name;
    if (e.name == "contrastive_tokens")  // a random model's image moves logits by less than CAL's floor of 1
      e.get<ContrastiveTokensOptions>().min_weight = 0;
    c.losses = {e};
    TrainResult straight;
    expect_bitwise_resume(c, dir_->path(), out, &straight);
    std::vector<double> term = train_metric(c.train.output_dir, name), ce = train_metric(c.train.output_dir, "text_ce");
    ASSERT_EQ(term.size(), 6u) << name;
    ASSERT_EQ(ce.size(), 6u) << name;
    bool differs = false;
    for (size_t i = 0; i < term.size(); ++i) {
      EXPECT_TRUE(std::isfinite(term[i])) << name;
      differs |= std::abs(term[i] - ce[i]) > 1e-6;
      // The step's loss is the contrast term alone (weight 1), not text CE plus it.
      EXPECT_NEAR(straight.losses[i], term[i], 1e-4 * std::max(1.0, term[i])) << name << " step " << i + 1;
    }
    EXPECT_TRUE(differs) << name;
  }
}

TEST(TowerPretrain, PatchLabelsByHand) {
  // An 8 x 8 image, 4-pixel patches: a square over patch 0, a circle covering exactly 4 pixel centres (a
  // quarter) of patch 3, a smaller circle that covers none of patch 2's.
  std::vector<SynthObject> objects{{1, 3, 2.0, 2.0, 2.0}, {0, 5, 6.0, 6.0, 0.75}, {0, 1, 2.0, 6.0, 0.5}};
  PatchLabels l = patch_labels(objects, 8, 4);
  EXPECT_TRUE(torch::equal(l.colour, torch::tensor({4, 0, 0, 6}, torch::kInt64))) << l.colour;
  EXPECT_TRUE(torch::equal(l.shape, torch::tensor({2, 0, 0, 1}, torch::kInt64))) << l.shape;
  objects[1].radius = 0.7;  // now under 0.707: no pixel centre, no label
  EXPECT_EQ(patch_labels(objects, 8, 4).colour[3].item<int64_t>(), 0);
  EXPECT_THROW(patch_labels(objects, 8, 3), c10::Error);
}

TEST(TowerPretrain, ShortPreStageThenStageOneAnswersColoursWellAboveChance) {
  // The seeing recipe in miniature (configs/seeing_tower.yaml, configs/seeing_stage1.yaml): easy images,
  // hints at chance. The tower learns its patches' colours alone, then a short stage 1 on the frozen tower
  // answers the held-out no-hint colour questions far above chance (1/8). A decoder this small trained
  // from scratch for as long reads colours no better than chance on some seeds (0.00-0.33 measured).
  test::TempDir dir;
  SynthOptions o;
  o.out_dir = (dir.path() / "data").string();
  o.train = 1200, o.eval = 60, o.image_size = 16, o.vocab_size = 200, o.seed = 2;
  o.difficulty = SynthDifficulty::Easy, o.chance_hints = true;
  synthesize(o);
  RunConfig c;
  c.model.hf_config = dir.write("config.json", test::kTinyHfConfig);
  c.data.train_files = {o.out_dir + "/captions.json"};
  c.data.image_folder = o.out_dir;
  c.train.learning_rate = 3e-3, c.train.warmup_steps = 10, c.train.per_device_train_batch_size = 32;
  c.train.max_steps = 300, c.train.num_threads = 1;
  c.logging.logging_steps = 100;
  const std::string tower = (dir.path() / "tower.safetensors").string();
  TowerPretrainResult t = pretrain_tower(c, tower, 200);
  EXPECT_GT(t.accuracy.patch_colour, 0.8);
  EXPECT_GT(t.accuracy.object_colour, 0.8);
  EXPECT_GT(t.accuracy.objects, 150);
  EXPECT_LT(t.losses.back(), t.losses.front() / 2);

  c.model.weights = tower;
  c.data.train_files = {o.out_dir + "/train.json"};
  c.data.eval_files = {o.out_dir + "/eval_nohint.json"};
  c.data.tokenizer = o.out_dir + "/tokenizer.model";
  c.data.chat_template = ChatTemplate::Plain;
  c.train.output_dir = (dir.path() / "stage1").string();
  c.train.per_device_train_batch_size = 16, c.train.max_steps = 600, c.train.freeze_vision_tower = true;
  c.checkpoint.save_steps = 0, c.checkpoint.save_final = false;
  c.logging.progress = ProgressMode::Plain;
  TrainResult r = Trainer(c).train();
  ASSERT_EQ(r.evals.size(), 1u);
  EXPECT_GT(r.evals[0].accuracy_by_type.at("colour"), 0.5);
}

TEST_F(TrainerTest, AttentionKlOnDataWithoutRegionsIsAConfigError) {
  nlohmann::json j = nlohmann::json::parse(test::read_text((dir_->path() / "data/train.json").string()));
  for (auto& sample : j) sample.erase("regions");
  RunConfig c = config("no_regions");
  c.data.train_files = {dir_->write("data/no_regions.json", j.dump())};
  LossEntry kl;
  kl.name = "attention_kl";
  c.losses = {kl};
  test::expect_error<ConfigError>([&] { Trainer(c).train(); },
                                  {"losses.0 (attention_kl) needs region targets", "no_regions.json", "\"regions\""});
}

TEST_F(TrainerTest, ModelWeightsTakeACheckpointARunFolderOrItsLatestPointer) {
  RunConfig c = config("weights_source");
  c.train.max_steps = 2;
  c.checkpoint.save_steps = 1;
  Trainer(c).train();
  const fs::path run = dir_->path() / "weights_source";
  ASSERT_EQ(test::read_text((run / "latest").string()), "step-000002\n");
  NamedTensors saved = load_tensors((run / "step-000002/model.safetensors").string());
  for (const fs::path& source : {run / "step-000002", run, run / "latest"}) {
    RunConfig next = config("weights_target");
    next.model.weights = source.string();
    Trainer trainer(next);
    auto params = named_state(*trainer.model());
    ASSERT_EQ(params.size(), saved.size());
    for (size_t i = 0; i < saved.size(); ++i) EXPECT_TRUE(torch::equal(params[i].second, saved[i].second)) << source;
  }
  RunConfig bad = config("weights_target");
  bad.model.weights = (dir_->path() / "data").string();
  test::expect_error<SafetensorsError>([&] { Trainer t(bad); }, {"data: folder holds neither model.safetensors", "latest"});
}

TEST_F(TrainerTest, DemoPresetStartsNearAUniformPrediction) {
  // Hugging Face initialisation: normal(0, 0.02) weights give a first loss within 10% of ln V.
  test::TempDir data;
  SynthOptions o;
  o.out_dir = data.path().string();
  o.train = 8, o.eval = 1, o.image_size = 64;
  synthesize(o);
  RunConfig c;
  c.model.preset = "demo";
  c.data.tokenizer = o.out_dir + "/tokenizer.model";
  c.data.image_folder = o.out_dir;
  c.data.model_max_length = 256;
  torch::manual_seed(0);
  VisionLanguageModel model = build_model(c.model);
  Processor processor(c.data, ModelInterface{64, 64, model->shapes.image_token_index, model->shapes.text.vocab_size});
  std::vector<Sample> samples;
  for (const auto& e : load_dataset(o.out_dir + "/train.json")) samples.push_back(processor.process(e));
  Batch b = processor.collate(samples);
  torch::NoGradGuard no_grad;
  LossTerm ce = text_ce(model->forward(b.input_ids, b.attention_mask, b.pixel_values).logits, b.labels);
  const double loss = ce.sum.item<double>() / ce.count.item<double>(), uniform = std::log(512.0);
  EXPECT_NEAR(loss, uniform, 0.1 * uniform);
}

TEST_F(TrainerTest, ResumeIsBitwiseEqualToAnUninterruptedRun) {
  TrainResult straight = Trainer(config("straight")).train();
  ASSERT_EQ(straight.steps, 6);
  for (double l : straight.losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_TRUE(fs::exists(dir_->path() / "straight/step-000003"));
  // A second run starts from the step-3 checkpoint (as if the first had died there) and goes on to 6.
  fs::create_directories(dir_->path() / "resumed");
  fs::copy(dir_->path() / "straight/step-000003", dir_->path() / "resumed/step-000003", fs::copy_options::recursive);
  RunConfig c = config("resumed");
  c.checkpoint.resume_from_checkpoint = "auto";
  TrainResult resumed = Trainer(c).train();
  EXPECT_EQ(resumed.steps, 6);
  ASSERT_EQ(resumed.losses.size(), straight.losses.size());
  for (size_t i = 0; i < straight.losses.size(); ++i) EXPECT_EQ(resumed.losses[i], straight.losses[i]) << "step " << i + 1;
  NamedTensors a = load_tensors((dir_->path() / "straight/step-000006/model.safetensors").string());
  NamedTensors b = load_tensors((dir_->path() / "resumed/step-000006/model.safetensors").string());
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  NamedTensors first = load_tensors((dir_->path() / "straight/step-000003/model.safetensors").string());
  EXPECT_FALSE(torch::equal(first[0].second, a[0].second) && torch::equal(first.back().second, a.back().second));
}

TEST_F(TrainerTest, LoraTrainsAdaptersResumesExactlyAndMergesToTheSameOutputs) {
  RunConfig c = config("lora");
  c.train.lora_rank = 4;
  c.train.lora_dropout = 0.1;  // draws from the RNG every step: resume must restore its state
  c.train.lora_target = "language_model.*self_attn\\.(q_proj|v_proj)";
  c.train.freeze_vision_tower = true;
  c.train.freeze_projector = true;
  Trainer trainer(c);
  std::map<std::string, torch::Tensor> before;
  for (auto& p : trainer.model()->named_parameters()) before[p.key()] = p.value().clone();
  TrainResult straight = trainer.train();
  int adapters = 0;
  for (auto& p : trainer.model()->named_parameters()) {
    const std::string& n = p.key();
    bool is_adapter = n.find(".lora_") != std::string::npos;
    adapters += is_adapter;
    EXPECT_EQ(!torch::equal(before[n], p.value()), is_adapter) << n;
    if (is_adapter) {
      EXPECT_TRUE(std::regex_search(n, std::regex("layers\\.[01]\\.self_attn\\.(q_proj|v_proj)\\.lora_[AB]"))) << n;
    }
  }
  EXPECT_EQ(adapters, 2 * 2 * 2);  // 2 layers x (q, v) x (A, B)
  // Resume from step 3 gives the same run.
  fs::create_directories(dir_->path() / "lora_resumed");
  fs::copy(dir_->path() / "lora/step-000003", dir_->path() / "lora_resumed/step-000003", fs::copy_options::recursive);
  RunConfig r = config("lora_resumed");
  r.train.lora_rank = 4;
  r.train.lora_target = c.train.lora_target;
  r.train.lora_dropout = c.train.lora_dropout;
  r.train.freeze_vision_tower = r.train.freeze_projector = true;
  r.checkpoint.resume_from_checkpoint = "auto";
  EXPECT_EQ(Trainer(r).train().losses, straight.losses);
  // convert --merge-lora: plain llava-hf weights whose model gives the adapted model's logits.
  std::string merged = (dir_->path() / "merged.safetensors").string();
  convert_checkpoint(c, (dir_->path() / "lora/step-000006").string(), merged, true);
  SafetensorsFile merged_file(merged);
  for (const auto& e : merged_file.entries()) EXPECT_EQ(e.name.find("lora"), std::string::npos) << e.name;
  RunConfig plain = config("unused");
  Trainer reloaded(plain);
  load_weights(*reloaded.model(), merged, true);
  torch::manual_seed(1);
  torch::Tensor ids = torch::randint(5, 200, {2, 20});
  ids[0].slice(0, 1, 17).fill_(3);
  torch::Tensor mask = torch::ones({2, 20}, torch::kInt64), pixels = torch::randn({1, 3, 16, 16});
  torch::NoGradGuard no_grad;
  trainer.model()->eval();
  reloaded.model()->eval();
  torch::Tensor a = trainer.model()->forward(ids, mask, pixels).logits, b = reloaded.model()->forward(ids, mask, pixels).logits;
  EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-5)) << (a - b).abs().max().item<double>();
  test::expect_error<std::invalid_argument>(
      [&] { convert_checkpoint(c, (dir_->path() / "lora/step-000006").string(), merged, false); }, {"--merge-lora"});
}

TEST_F(TrainerTest, ResumingWithOtherShapesOrTrainableSetIsAClearError) {
  RunConfig c = config("shape_source");
  c.train.max_steps = 1;
  c.checkpoint.save_steps = 1;
  Trainer(c).train();
  std::string checkpoint = (dir_->path() / "shape_source/step-000001").string();
  std::string wider = dir_->write("wider.json", R"({"vision_config": {"hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 16, "patch_size": 4}, "text_config":
    {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2}, "image_token_index": 3})");
  RunConfig other = config("shape_target");
  other.model.hf_config = wider;
  other.checkpoint.resume_from_checkpoint = checkpoint;
  test::expect_error<std::runtime_error>([&] { Trainer(other).train(); },
                                         {"step-000001: the checkpoint's model does not match this config's model"});
  RunConfig frozen = config("trainable_target");
  frozen.train.freeze_language_model = true;
  frozen.checkpoint.resume_from_checkpoint = checkpoint;
  test::expect_error<std::runtime_error>([&] { Trainer(frozen).train(); },
                                         {"optimizer state does not match the trainable parameters", "another trainable set"});
}

TEST_F(TrainerTest, FreezingTrainsExactlyTheNamedParameters) {
  RunConfig c = config("frozen");
  c.train.max_steps = 2;
  c.train.freeze_vision_tower = true;
  c.train.freeze_language_model = true;
  c.train.trainable_regex = "layers\\.1\\.mlp\\.up_proj";
  Trainer trainer(c);
  std::map<std::string, torch::Tensor> before;
  for (auto& p : trainer.model()->named_parameters()) before[p.key()] = p.value().clone();
  trainer.train();
  for (auto& p : trainer.model()->named_parameters()) {
    const std::string& n = p.key();
    bool should_change = n.rfind("multi_modal_projector.", 0) == 0 || n == "language_model.model.layers.1.mlp.up_proj.weight";
    EXPECT_EQ(!torch::equal(before[n], p.value()), should_change) << n;
  }
}

TEST_F(TrainerTest, NonFiniteStepsAreSkippedCountedAndAbortWithACheckpoint) {
  RunConfig c = config("nan");
  c.train.max_steps = 3;
  c.checkpoint.save_steps = 0;
  Trainer trainer(c);
  trainer.inject_nonfinite({1});
  TrainResult r = trainer.train();
  EXPECT_EQ(r.nonfinite_steps, 1);
  EXPECT_TRUE(std::isnan(r.losses[1]));
  EXPECT_TRUE(std::isfinite(r.losses[2]));

  RunConfig d = config("abort");
  d.train.max_nonfinite_steps = 2;
  Trainer aborting(d);
  aborting.inject_nonfinite({1, 2});
  test::expect_error<std::runtime_error>([&] { aborting.train(); }, {"2 non-finite steps in a row", "step-000003"});
  EXPECT_TRUE(checkpoint_complete((dir_->path() / "abort/step-000003").string()));
}

TEST_F(TrainerTest, EvaluateReportsEverySplit) {
  RunConfig c = config("eval");
  c.data.eval_files.push_back((dir_->path() / "data/eval_aligned.json").string());
  Trainer trainer(c);
  auto results = trainer.evaluate();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].split, "eval_conflict");
  EXPECT_EQ(results[0].samples, 6);
  EXPECT_TRUE(std::isfinite(results[0].loss));
  EXPECT_GE(results[0].accuracy, 0.0);
  EXPECT_LE(results[0].accuracy, 1.0);
  EXPECT_GE(results[0].hint_rate, 0.0);  // every conflict hint names a wrong answer
  EXPECT_LE(results[0].accuracy + results[0].hint_rate, 1.0 + 1e-12);
  EXPECT_EQ(results[1].hint_rate, -1.0);  // aligned hints name the answer: no misleading hint to follow
  // Accuracy per question type: the types of the split, and their weighted mean is the accuracy.
  std::map<std::string, double> count;
  for (const auto& e : load_dataset((dir_->path() / "data/eval_conflict.json").string())) count[e.type] += 1;
  ASSERT_EQ(results[0].accuracy_by_type.size(), count.size());
  double weighted = 0;
  for (const auto& [type, accuracy] : results[0].accuracy_by_type) weighted += accuracy * count.at(type);
  EXPECT_NEAR(weighted / 6.0, results[0].accuracy, 1e-12);
}

TEST_F(TrainerTest, HintRateCountsAnswersThatRepeatAMisleadingHint) {
  // The conflict split with answer and hint swapped: answering with the hint there is answering right
  // here, so each split's accuracy is the other's hint rate.
  std::string conflict = (dir_->path() / "data/eval_conflict.json").string();
  nlohmann::json j = nlohmann::json::parse(test::read_text(conflict));
  for (auto& s : j) {
    std::string answer = s["answer"], hint = s["hint"];
    s["conversations"][1]["value"] = hint;
    s["answer"] = hint;
    s["hint"] = answer;
  }
  RunConfig c = config("hint");
  c.data.eval_files = {conflict, dir_->write("swapped.json", j.dump())};
  Trainer trainer(c);
  trainer.train();  // a few steps, so answers are words of the benchmark
  auto r = trainer.evaluate();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_DOUBLE_EQ(r[0].accuracy, r[1].hint_rate);
  EXPECT_DOUBLE_EQ(r[0].hint_rate, r[1].accuracy);
}

TEST(Checkpoint, HalfWrittenCheckpointsAreNeverPickedUp) {
  test::TempDir dir;
  std::string out = dir.path().string();
  TrainerState state;
  state.step = 1;
  state.cursor = {2, 5};
  state.losses = {0.5, 0.25};
  state.cpu_rng_state = {1, 2, 255};
  CheckpointContents c{{{"w", torch::ones(2)}}, {{"w.exp_avg", torch::zeros(2)}}, state, "train: {}\n"};
  save_checkpoint(out, 1, c, 0);
  save_checkpoint(out, 2, c, 0);
  EXPECT_EQ(find_latest_checkpoint(out), (dir.path() / "step-000002").string());
  fs::create_directories(dir.path() / "step-000009.tmp");  // a crash mid-write
  dir.write("step-000007/model.safetensors", "garbage");   // a folder missing files
  EXPECT_EQ(find_latest_checkpoint(out), (dir.path() / "step-000002").string());
  // `latest` naming a broken checkpoint falls back to the newest complete one.
  save_checkpoint(out, 3, c, 0);
  fs::remove(dir.path() / "step-000003/optimizer.safetensors");
  EXPECT_EQ(find_latest_checkpoint(out), (dir.path() / "step-000002").string());
  // Rotation keeps the newest N.
  save_checkpoint(out, 4, c, 2);
  EXPECT_FALSE(fs::exists(dir.path() / "step-000001"));
  EXPECT_FALSE(fs::exists(dir.path() / "step-000002"));
  EXPECT_TRUE(fs::exists(dir.path() / "step-000004"));
  TrainerState back = load_checkpoint((dir.path() / "step-000004").string()).trainer_state;
  EXPECT_EQ(back.to_json(), state.to_json());  // every field round-trips
  EXPECT_EQ(back.cursor, (DataCursor{2, 5}));
  test::expect_error<std::runtime_error>([&] { load_checkpoint((dir.path() / "step-000007").string()); },
                                         {"step-000007: checkpoint lacks optimizer.safetensors"});
  // A trainer_state.json without a key names the file and the key.
  nlohmann::json partial = state.to_json();
  partial["data_cursor"].erase("batch");
  dir.write("step-000004/trainer_state.json", partial.dump());
  test::expect_error<std::runtime_error>([&] { load_checkpoint((dir.path() / "step-000004").string()); },
                                         {"step-000004/trainer_state.json: 'data_cursor/batch' is missing or malformed"});
}

TEST(Checkpoint, LossHistoryStaysBounded) {
  // trainer_state.json keeps the last kLossHistory steps' losses, oldest dropped first.
  TrainerState state;
  const size_t n = TrainerState::kLossHistory + 5;
  for (size_t i = 0; i < n; ++i) state.record_loss(static_cast<double>(i));
  ASSERT_EQ(state.losses.size(), TrainerState::kLossHistory);
  EXPECT_EQ(state.losses.front(), 5.0);
  EXPECT_EQ(state.losses.back(), static_cast<double>(n - 1));
  TrainerState few;
  few.record_loss(2.5);
  few.record_loss(1.5);
  EXPECT_EQ(few.losses, (std::vector<double>{2.5, 1.5}));
}

TEST(Optimizer, ScheduleValues) {
  TrainConfig c;
  c.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(lr_multiplier(c, 0, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(c, 5, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(c, 10, 110), 1.0);
  EXPECT_NEAR(lr_multiplier(c, 60, 110), 0.5, 1e-12);  // cosine half way
  c.lr_scheduler_type = LrSchedule::Linear;
  EXPECT_NEAR(lr_multiplier(c, 85, 110), 0.25, 1e-12);
  c.lr_scheduler_type = LrSchedule::Constant;
  c.warmup_steps = 0;
  c.warmup_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_multiplier(c, 5, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(c, 50, 100), 1.0);
}

TEST(Optimizer, NoDecayOnNormsBiasesEmbeddingsAndStateRoundTrip) {
  torch::manual_seed(0);
  VisionLanguageModel model(preset_shapes("tiny"));
  TrainConfig c;
  c.weight_decay = 0.5;
  c.learning_rate = 0.1;
  c.freeze_vision_tower = true;
  apply_freezing(*model, c);
  GroupedAdamW opt(*model, c);
  // Zero gradients: AdamW then changes parameters only through weight decay.
  for (auto& p : model->parameters())
    if (p.requires_grad()) p.mutable_grad() = torch::zeros_like(p);
  std::map<std::string, torch::Tensor> before;
  for (auto& p : model->named_parameters()) before[p.key()] = p.value().clone();
  opt.step(1.0);
  for (auto& p : model->named_parameters()) {
    const std::string& n = p.key();
    bool decays = p.value().requires_grad() && p.value().dim() >= 2 && n.find("norm") == std::string::npos &&
                  n.find("embed") == std::string::npos;
    EXPECT_EQ(!torch::equal(before[n], p.value()), decays) << n;
  }
  NamedTensors state = opt.state();
  GroupedAdamW again(*model, c);
  again.load_state(state);
  EXPECT_EQ(again.state().size(), state.size());
  state.emplace_back("vision_tower.vision_model.post_layernorm.weight.exp_avg", torch::zeros(32));
  test::expect_error<std::runtime_error>([&] { again.load_state(state); }, {"not a trainable parameter now"});
}

TEST(Optimizer, FusedUpdateEqualsLibTorchAdamWWithScaledGradients) {
  // Three steps of GroupedAdamW (fused loop, gradient scaled by 0.3 inside the update) against LibTorch's
  // AdamW stepping on gradients scaled beforehand; float32 and float64, with and without weight decay.
  // bfloat16 takes GroupedAdamW's other path (LibTorch's AdamW after scaling), so it must match exactly.
  for (auto dtype : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
    torch::manual_seed(3);
    VisionLanguageModel model(preset_shapes("tiny"));
    model->to(dtype);
    TrainConfig c;
    c.weight_decay = 0.1;
    c.learning_rate = 0.01;
    c.freeze_vision_tower = false;
    apply_freezing(*model, c);
    GroupedAdamW fused(*model, c);
    std::vector<torch::Tensor> copies;
    std::vector<torch::optim::OptimizerParamGroup> groups;
    for (const auto& [name, p] : fused.parameters()) {
      copies.push_back(p.detach().clone().requires_grad_(true));
      const bool decay = p.dim() >= 2 && name.find("norm") == std::string::npos && name.find("embed") == std::string::npos;
      auto o = std::make_unique<torch::optim::AdamWOptions>(0.01 * 0.5);
      o->weight_decay(decay ? 0.1 : 0.0);
      groups.emplace_back(std::vector<torch::Tensor>{copies.back()}, std::move(o));
    }
    torch::optim::AdamW reference(groups, torch::optim::AdamWOptions(0.01));
    for (int step = 0; step < 3; ++step) {
      size_t i = 0;
      for (const auto& [name, p] : fused.parameters()) {
        torch::Tensor g = torch::randn_like(p);
        p.mutable_grad() = g;
        copies[i++].mutable_grad() = g * 0.3;
      }
      fused.step(0.5, 0.3);
      reference.step();
    }
    size_t i = 0;
    const double tol = dtype == torch::kFloat64 ? 1e-12 : dtype == torch::kFloat32 ? 1e-5 : 0.0;
    for (const auto& [name, p] : fused.parameters()) {
      EXPECT_TRUE(torch::allclose(p, copies[i], tol, tol)) << name << " " << (p - copies[i]).abs().max().item<double>();
      ++i;
    }
    fused.zero_grad();
    for (const auto& [name, p] : fused.parameters()) EXPECT_FALSE(p.grad().defined()) << name;
  }
}

}  // namespace
}  // namespace modalign
