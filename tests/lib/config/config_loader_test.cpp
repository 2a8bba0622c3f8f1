// lib/config: merge order, overrides, environment interpolation, path resolution, dump round trip, and
// bad configs whose errors must name the file:line, the key path and the problem.
#include "lib/config/config_loader.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "test_util.h"

namespace modalign {
namespace {

using test::expect_error;
using test::TempDir;

class ConfigTest : public ::testing::Test {
 protected:
  RunConfig load(std::initializer_list<std::string> files, std::vector<std::string> sets = {}) {
    return load_run_config(std::vector<std::string>(files), sets);
  }
  // Expects loading `yaml` (as file bad.yaml) to fail with every piece in the message.
  void expect_bad(const std::string& yaml, std::initializer_list<std::string> pieces) {
    std::string f = dir_.write("bad.yaml", yaml);
    expect_error<ConfigError>([&] { load({f}); }, pieces);
  }
  TempDir dir_;
};

TEST_F(ConfigTest, DefaultsAreValidAndDocumented) {
  RunConfig c = load({});
  EXPECT_EQ(c.model.preset, "tiny");
  EXPECT_DOUBLE_EQ(c.train.learning_rate, 2e-5);
  EXPECT_EQ(c.train.lr_scheduler_type, LrSchedule::Cosine);
  EXPECT_TRUE(c.losses.empty());
  std::string text = describe_defaults();
  EXPECT_NE(text.find("learning_rate: 2e-05  # peak learning rate"), std::string::npos) << text;
  EXPECT_NE(text.find("one of: cosine, linear, constant"), std::string::npos);
  EXPECT_NE(text.find("model_max_length: 512  # longest tokenised sample, image span included (>= 8; alias: max_length)"), std::string::npos);
  for (const char* name : kAlignmentLossNames) EXPECT_NE(text.find(std::string("name: ") + name), std::string::npos);
  EXPECT_NE(text.find("target: balanced"), std::string::npos);
}

TEST_F(ConfigTest, LaterFilesWinAndKeepUntouchedKeys) {
  std::string a = dir_.write("a.yaml", "train:\n  learning_rate: 1e-4\n  seed: 7\nmodel:\n  preset: demo\n");
  std::string b = dir_.write("b.yaml", "train:\n  learning_rate: 3e-4\n");
  RunConfig c = load({a, b});
  EXPECT_DOUBLE_EQ(c.train.learning_rate, 3e-4);
  EXPECT_EQ(c.train.seed, 7);
  EXPECT_EQ(c.model.preset, "demo");
  RunConfig reversed = load({b, a});
  EXPECT_DOUBLE_EQ(reversed.train.learning_rate, 1e-4);
}

TEST_F(ConfigTest, ListsAreReplacedWhole) {
  std::string a = dir_.write("a.yaml", "losses:\n  - {name: dual_channel, weight: 0.3}\n  - {name: layer_decay}\n");
  std::string b = dir_.write("b.yaml", "losses:\n  - name: sink_suppression\n    sink: system\n");
  RunConfig c = load({a, b});
  ASSERT_EQ(c.losses.size(), 1u);
  EXPECT_EQ(c.losses[0].name, "sink_suppression");
  EXPECT_EQ(c.losses[0].get<SinkSuppressionOptions>().sink, SinkTokens::System);
  EXPECT_TRUE(load({a, b}, {"losses=[]"}).losses.empty());
}

TEST_F(ConfigTest, OverridesApplyAfterFilesWithTypes) {
  std::string a = dir_.write("a.yaml",
                             "train: {learning_rate: 1e-4}\nlosses:\n  - {name: dual_channel, form: log, target: 0.8}\n");
  RunConfig c = load({a}, {"train.learning_rate=5e-5", "data.image_mean=[0.5, 0.25, 0.125]",
                           "losses.0.form=hinge", "losses.0.layers=[1, 3]", "train.vision_lr=1e-6",
                           "losses.0.target=balanced"});
  EXPECT_DOUBLE_EQ(c.train.learning_rate, 5e-5);
  EXPECT_EQ(c.data.image_mean, (std::vector<double>{0.5, 0.25, 0.125}));
  EXPECT_EQ(c.losses[0].get<DualChannelOptions>().form, MassForm::Hinge);
  EXPECT_EQ(c.losses[0].get<DualChannelOptions>().layers.spec, "1,3");
  EXPECT_FALSE(c.losses[0].get<DualChannelOptions>().target.has_value());
  ASSERT_TRUE(c.train.vision_lr.has_value());
  EXPECT_DOUBLE_EQ(*c.train.vision_lr, 1e-6);
  EXPECT_FALSE(load({a}, {"train.vision_lr=1e-6", "train.vision_lr=null"}).train.vision_lr.has_value());
}

TEST_F(ConfigTest, EnvironmentInterpolation) {
  ::setenv("MODALIGN_TEST_LR", "0.001", 1);
  ::setenv("MODALIGN_TEST_RUN", "exp7", 1);
  ::unsetenv("MODALIGN_TEST_UNSET");
  std::string a = dir_.write("a.yaml",
                             "train:\n  learning_rate: ${MODALIGN_TEST_LR}\n"
                             "  output_dir: /runs/${MODALIGN_TEST_RUN}/${MODALIGN_TEST_UNSET:-default}\n");
  RunConfig c = load({a});
  EXPECT_DOUBLE_EQ(c.train.learning_rate, 0.001);
  EXPECT_EQ(c.train.output_dir, "/runs/exp7/default");
  expect_bad("train:\n  seed: ${MODALIGN_TEST_UNSET}\n",
             {"bad.yaml:2", "train.seed", "environment variable MODALIGN_TEST_UNSET is not set"});
  // Found by tests/fuzz/config_fuzz: a nested default left '${' in the value, which the checkpoint's
  // config.yaml could not load again.
  expect_bad("train:\n  output_dir: ${MODALIGN_TEST_UNSET:-${HOME}}\n", {"bad.yaml:2", "train.output_dir", "nested '${'"});
}

TEST_F(ConfigTest, RelativePathsFollowTheirFile) {
  std::string a = dir_.write("cfg/sub/a.yaml",
                             "data:\n  image_folder: ../images\n  train_files: [train.json, /abs/x.jsonl]\n"
                             "  tokenizer: ''\n");
  RunConfig c = load({a}, {"model.weights=w/model.safetensors"});
  EXPECT_EQ(c.data.image_folder, (dir_.path() / "cfg/images").string());
  EXPECT_EQ(c.data.train_files, (std::vector<std::string>{(dir_.path() / "cfg/sub/train.json").string(), "/abs/x.jsonl"}));
  EXPECT_EQ(c.data.tokenizer, "");
  EXPECT_EQ(c.model.weights, "w/model.safetensors");  // --set: relative to the working directory
}

TEST_F(ConfigTest, AliasAndConflict) {
  std::string a = dir_.write("a.yaml", "data:\n  max_length: 300\n");
  EXPECT_EQ(load({a}).data.model_max_length, 300);
  expect_bad("data:\n  max_length: 300\n  model_max_length: 200\n",
             {"bad.yaml:2", "both 'data.max_length' and its alias target 'data.model_max_length'"});
}

TEST_F(ConfigTest, DumpReadsBackToTheSameConfig) {
  std::string a = dir_.write("a.yaml",
                             "model: {preset: demo, moda_aligner: true}\n"
                             "data: {train_files: [t.json], mixing_weights: [1], image_aspect_ratio: crop}\n"
                             "train: {learning_rate: 3.3e-5, projector_lr: 1e-3, max_steps: 30, warmup_steps: 3}\n"
                             "losses:\n  - {name: dual_channel, target: 0.8, layers: 0-1, form: hinge}\n"
                             "  - {name: layer_decay, ref: 1}\n");
  RunConfig c = load({a});
  std::string text = dump_config(c);
  RunConfig back;
  apply_yaml(back, text, "dump", "");
  EXPECT_EQ(dump_config(back), text);
  EXPECT_DOUBLE_EQ(back.train.learning_rate, 3.3e-5);
  EXPECT_EQ(*back.losses[1].get<LayerDecayOptions>().ref, 1);
  EXPECT_DOUBLE_EQ(*back.losses[0].get<DualChannelOptions>().target, 0.8);
  EXPECT_EQ(back.data.image_aspect_ratio, AspectMode::Crop);
  // What a resume reports: exactly the lines that differ.
  EXPECT_TRUE(config_changes(text, "saved", c).empty());
  c.train.learning_rate = 1e-4;
  c.generation.max_new_tokens = 4;
  std::vector<std::string> changes = config_changes(text, "saved", c);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_NE(changes[0].find("learning_rate: 3.3e-05' -> '  learning_rate: 0.0001'"), std::string::npos) << changes[0];
  EXPECT_NE(changes[1].find("max_new_tokens: 8' -> '  max_new_tokens: 4'"), std::string::npos) << changes[1];
}

// ---- bad configs: every message names where, which key, and what is wrong ----

TEST_F(ConfigTest, UnknownKeySuggestsNearest) {
  expect_bad("train:\n  seed: 1\n  learnig_rate: 1e-4\n",
             {"bad.yaml:3", "unknown key 'train.learnig_rate'", "did you mean 'train.learning_rate'?"});
}

TEST_F(ConfigTest, KeyInWrongSectionNamesTheRightOne) {
  expect_bad("model:\n  learning_rate: 1e-4\n",
             {"bad.yaml:2", "unknown key 'model.learning_rate'", "did you mean 'train.learning_rate'?"});
}

TEST_F(ConfigTest, UnknownSection) {
  expect_bad("trian:\n  seed: 1\n", {"bad.yaml:1", "unknown key 'trian'", "did you mean 'train'?"});
}

TEST_F(ConfigTest, NotANumber) {
  expect_bad("train:\n  learning_rate: fast\n", {"bad.yaml:2", "train.learning_rate: expected a number, got 'fast'"});
}

TEST_F(ConfigTest, NotAnInteger) {
  expect_bad("train:\n  per_device_train_batch_size: 2.5\n",
             {"bad.yaml:2", "train.per_device_train_batch_size: expected an integer, got '2.5'"});
}

TEST_F(ConfigTest, NotABool) {
  expect_bad("train:\n  freeze_projector: maybe\n", {"train.freeze_projector: expected true or false, got 'maybe'"});
}

TEST_F(ConfigTest, OutOfRange) {
  expect_bad("train:\n  learning_rate: -1\n", {"bad.yaml:2", "train.learning_rate: must be > 0, got -1"});
  expect_bad("losses:\n  - {name: dual_channel, target: 1.5}\n", {"losses[0].target: must be in (0, 1], got 1.5"});
  expect_bad("distributed: {master_port: 70000}\n", {"distributed.master_port: must be in [1, 65535], got 70000"});
}

TEST_F(ConfigTest, BadChoiceListsOptions) {
  expect_bad("train:\n  lr_scheduler_type: cosin\n",
             {"bad.yaml:2", "train.lr_scheduler_type: 'cosin' is not one of: cosine, linear, constant",
              "did you mean 'cosine'?"});
}

TEST_F(ConfigTest, UnknownLossNameListsRegistered) {
  expect_bad("losses:\n  - name: dual_chanel\n",
             {"bad.yaml:2", "losses[0].name: 'dual_chanel' is not one of: dual_channel, layer_decay",
              "did you mean 'dual_channel'?"});
}

TEST_F(ConfigTest, OptionOfAnotherLoss) {
  expect_bad("losses:\n  - name: layer_decay\n    form: log\n", {"bad.yaml:3", "unknown key 'losses[0].form'"});
}

TEST_F(ConfigTest, LossWithoutName) {
  expect_bad("losses:\n  - weight: 0.5\n", {"bad.yaml:2", "missing required key 'losses[0].name'"});
}

TEST_F(ConfigTest, BadLayerSelection) {
  expect_bad("losses:\n  - {name: dual_channel, layers: 5-2}\n", {"losses[0].layers: '5-2' is not a range"});
  expect_bad("losses:\n  - {name: dual_channel, layers: [1, x]}\n", {"losses[0].layers: 'x' is not a layer index"});
}

TEST_F(ConfigTest, SectionMustBeAMap) {
  expect_bad("train: 5\n", {"bad.yaml:1", "expected a map of keys, got '5'"});
  expect_bad("- a\n- b\n", {"bad.yaml:1", "expected a map of sections"});
  expect_bad("train:\n  learning_rate: [1, 2]\n", {"train.learning_rate: expected a single value, got a list"});
}

TEST_F(ConfigTest, YamlSyntaxError) { expect_bad("train:\n  seed: [1, 2\n", {"bad.yaml:", "YAML syntax error"}); }

TEST_F(ConfigTest, MissingFile) {
  expect_error<ConfigError>([&] { load({(dir_.path() / "nope.yaml").string()}); },
                            {"nope.yaml: cannot read config file"});
}

TEST_F(ConfigTest, BadOverrides) {
  expect_error<ConfigError>([&] { load({}, {"train.learning_rate"}); }, {"--set train.learning_rate", "section.key=value"});
  expect_error<ConfigError>([&] { load({}, {"train.lerning_rate=1"}); },
                            {"--set train.lerning_rate=1", "did you mean 'train.learning_rate'?"});
  expect_error<ConfigError>([&] { load({}, {"losses.0.weight=1"}); },
                            {"losses.0: no such entry (the list has 0 entries"});
}

TEST_F(ConfigTest, CrossFieldRulesAreReportedTogether) {
  expect_bad("train:\n  max_steps: 100\n  warmup_steps: 500\n  eval_steps: 10\n",
             {"train.warmup_steps (500) exceeds train.max_steps (100)", "train.eval_steps is 10 but data.eval_files is empty"});
  expect_bad("train: {warmup_ratio: 0.1, warmup_steps: 5}\n", {"train.warmup_ratio and train.warmup_steps are both set"});
  expect_bad("data: {train_files: [a.json, b.json], mixing_weights: [1]}\n",
             {"data.mixing_weights has 1 values but data.train_files has 2 files"});
  expect_bad("train: {freeze_vision_tower: true, freeze_projector: true, freeze_language_model: true}\n",
             {"nothing would be trained"});
  expect_bad("distributed: {nproc: 0}\n", {"distributed.nproc: must be >= 1, got 0"});
  expect_bad("train: {freeze_regex: 'layers.(3'}\n", {"train.freeze_regex: 'layers.(3' is not a valid regular expression"});
  expect_bad("distributed: {backend: nccl}\n", {"distributed.backend nccl needs model.device cuda"});
  expect_bad("model: {dtype: bfloat16}\ntrain: {bf16: true}\n", {"train.bf16 keeps float32 master weights", "needs model.dtype float32"});
  expect_bad("losses: [{name: dual_channel}, {name: dual_channel}]\n", {"losses[1]: 'dual_channel' is listed twice"});
  expect_bad("data: {image_std: [0.2, 0, 0.2, 0.1]}\n", {"data.image_std needs 3 values (RGB), got 4",
                                                          "data.image_std: 0 is not positive"});
}

}  // namespace
}  // namespace modalign
