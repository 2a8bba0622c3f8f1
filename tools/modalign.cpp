// The `modalign` command: parses the command line; each subcommand is one run_<name> function that reads its
// inputs, calls the library and prints (the work itself is in lib/ and trainers/).
#include <CLI/CLI.hpp>
#include <algorithm>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "lib/config/config_loader.h"
#include "lib/data/dataset.h"
#include "lib/data/synth.h"
#include "lib/data/tokenizer.h"
#include "lib/io/files.h"
#include "lib/io/safetensors.h"
#include "lib/util/logging.h"
#include "trainers/components.h"
#include "trainers/launcher.h"
#include "trainers/lora.h"
#include "trainers/memory_plan.h"
#include "trainers/probe.h"
#include "trainers/tower_pretrain.h"
#include "trainers/trainer.h"

namespace {

// Options every config-driven subcommand takes: -c FILE (repeatable, later wins) and --set key=value.
struct ConfigArgs {
  std::vector<std::string> files;
  std::vector<std::string> overrides;
  void add_to(CLI::App* app) {
    app->add_option("-c,--config", files, "YAML config file; repeat to merge (later files win)");
    app->add_option("--set", overrides, "override one key: section.key=value (after all files)");
  }
};

// One line on stderr; exit 2 for bad input (config, data, tokenizer, safetensors), 1 otherwise.
int report(const std::exception& e) {
  const char* kind = "error";
  int code = 1;
  if (dynamic_cast<const modalign::ConfigError*>(&e)) kind = "config error", code = 2;
  else if (dynamic_cast<const modalign::SafetensorsError*>(&e)) kind = "bad safetensors", code = 2;
  else if (dynamic_cast<const modalign::DataError*>(&e)) kind = "data error", code = 2;
  else if (dynamic_cast<const modalign::TokenizerError*>(&e)) kind = "tokenizer error", code = 2;
  std::fprintf(stderr, "modalign: %s: %s\n", kind, e.what());
  return code;
}

void print_evals(const std::vector<modalign::EvalResult>& evals) {
  std::printf("%-20s %10s %10s %10s %8s\n", "split", "loss", "accuracy", "hint_rate", "samples");
  for (const auto& e : evals) {
    std::string hint = e.hint_rate >= 0 ? std::to_string(e.hint_rate).substr(0, 5) : "-";
    std::printf("%-20s %10.4f %10.3f %10s %8lld\n", e.split.c_str(), e.loss, e.accuracy, hint.c_str(),
                static_cast<long long>(e.samples));
  }
  for (const auto& e : evals) {
    if (e.accuracy_by_type.empty()) continue;
    std::string line = "  " + e.split + " accuracy by type:";
    for (const auto& [type, accuracy] : e.accuracy_by_type) line += " " + type + " " + std::to_string(accuracy).substr(0, 5);
    std::printf("%s\n", line.c_str());
  }
}

int run_config(const ConfigArgs& args, bool defaults) {
  if (defaults) {
    std::cout << modalign::describe_defaults();
    return 0;
  }
  std::cout << modalign::dump_config(modalign::load_run_config(args.files, args.overrides));
  return 0;
}

struct PlanArgs {
  int64_t nproc = 0, seq_len = 0, image_tokens = 0;
  double memory_gib = 0;
};

// The memory a run needs per rank, from the config alone (no weights are read).
int run_plan(const ConfigArgs& args, const PlanArgs& p) {
  modalign::RunConfig config = modalign::load_run_config(args.files, args.overrides);
  // A preset named on the command line is enough to plan: it wins over a model.hf_config of the files (which
  // may not be downloaded yet). The plan says which shapes it used.
  const bool preset_named = std::any_of(args.overrides.begin(), args.overrides.end(),
                                        [](const std::string& o) { return o.rfind("model.preset=", 0) == 0; });
  if (preset_named && !config.model.hf_config.empty()) {
    std::printf("shapes: preset %s (named on the command line; model.hf_config %s not read)\n",
                config.model.preset.c_str(), config.model.hf_config.c_str());
    config.model.hf_config.clear();
  } else {
    std::printf("shapes: %s\n", config.model.hf_config.empty() ? ("preset " + config.model.preset).c_str()
                                                               : ("model.hf_config " + config.model.hf_config).c_str());
  }
  const modalign::ModelShapes shapes = modalign::shapes_from_config(config.model);
  const int64_t nproc = p.nproc > 0 ? p.nproc : config.distributed.nproc;
  const modalign::MemoryPlan plan = modalign::plan_memory(config, shapes, p.seq_len, p.image_tokens, nproc);
  std::printf("%s", modalign::format_plan(plan, config, nproc, p.memory_gib).c_str());
  return 0;
}

// Single process, one data-parallel worker (RANK/WORLD_SIZE set), or the launcher of N local workers.
int run_train(const ConfigArgs& args, int64_t nproc, const std::vector<std::string>& argv) {
  modalign::RunConfig config = modalign::load_run_config(args.files, args.overrides);
  if (nproc > 0) config.distributed.nproc = nproc;
  const modalign::WorldInfo world = modalign::world_from_env(config.distributed);
  const bool worker = std::getenv("WORLD_SIZE") != nullptr;
  if (!worker && config.distributed.nproc > 1)
    return modalign::launch_workers(argv, {config.distributed.nproc, world.master_addr, world.master_port, 10.0});
  const bool leader = world.rank == 0;
  modalign::setup_logging(leader ? config.logging.level : modalign::LogLevel::Warn,
                          leader ? config.train.output_dir + "/train.log" : "");
  modalign::Trainer trainer(config, world);
  modalign::TrainResult r = trainer.train();
  if (!leader) return 0;
  std::printf("%s after %lld steps; checkpoint: %s\n", r.interrupted ? "stopped by signal" : "finished",
              static_cast<long long>(r.steps), r.checkpoint.c_str());
  if (!r.evals.empty()) print_evals(r.evals);
  std::printf("metrics: %s/metrics.jsonl, log: %s/train.log\n", config.train.output_dir.c_str(), config.train.output_dir.c_str());
  return 0;
}

// The model of a config with a checkpoint's weights (none: as the config builds it), and its processor: what eval, probe
// and generate use.
struct LoadedModel {
  modalign::VisionLanguageModel model{nullptr};
  std::shared_ptr<modalign::Processor> processor;
};
LoadedModel load_model(const modalign::RunConfig& config, const std::string& checkpoint) {
  modalign::setup_runtime(config.train);
  LoadedModel m{modalign::build_model(config), nullptr};
  if (!checkpoint.empty()) modalign::load_checkpoint_weights(m.model, checkpoint);
  m.processor = modalign::build_processor(config, m.model->shapes);
  return m;
}

int run_eval(const ConfigArgs& args, const std::string& checkpoint, const std::string& out) {
  modalign::RunConfig config = modalign::load_run_config(args.files, args.overrides);
  modalign::setup_logging(config.logging.level);
  if (config.data.eval_files.empty()) throw modalign::ConfigError("data.eval_files is empty: nothing to evaluate");
  LoadedModel m = load_model(config, checkpoint);
  const std::vector<modalign::EvalResult> evals =
      modalign::build_evaluator(config, m.model, m.processor)->evaluate(modalign::load_eval_splits(config.data.eval_files));
  print_evals(evals);
  if (!out.empty()) {
    modalign::write_file_atomic(out, modalign::eval_json(evals).dump(1) + "\n");
    std::printf("results: %s\n", out.c_str());
  }
  return 0;
}

int run_pretrain_tower(const ConfigArgs& args, const std::string& out, int64_t holdout, const std::string& report_path) {
  modalign::RunConfig config = modalign::load_run_config(args.files, args.overrides);
  modalign::setup_logging(config.logging.level);
  const modalign::TowerPretrainResult r = modalign::pretrain_tower(config, out, holdout);
  const modalign::TowerAccuracy& a = r.accuracy;
  std::printf("pretrain-tower: %lld steps in %.0f s; held out: patches colour %.3f shape %.3f, %lld objects colour %.3f "
              "shape %.3f; weights: %s\n",
              static_cast<long long>(r.steps), r.seconds, a.patch_colour, a.patch_shape, static_cast<long long>(a.objects),
              a.object_colour, a.object_shape, out.c_str());
  if (!report_path.empty()) {
    nlohmann::json j = {{"steps", r.steps}, {"seconds", r.seconds}, {"losses", r.losses},
                        {"patch_colour", a.patch_colour}, {"patch_shape", a.patch_shape}, {"objects", a.objects},
                        {"object_colour", a.object_colour}, {"object_shape", a.object_shape}};
    modalign::write_file_atomic(report_path, j.dump(1) + "\n");
  }
  return 0;
}

struct ProbeArgs {
  std::string checkpoint, compare, data, out;
  int64_t batch_size = 16;
};

// Draws probe.png with tools/plot_probe.py when Debian's python3 and the script are there; a missing
// plotter is a note, not a failure (probe.json and probe.csv are the results).
void plot_probe(const std::string& out_dir) {
  for (const char* script : {MODALIGN_INSTALLED_SCRIPTS "/plot_probe.py", MODALIGN_SOURCE_SCRIPTS "/plot_probe.py"}) {
    if (!std::filesystem::exists(script)) continue;
    std::string cmd = "/usr/bin/python3 '" + std::string(script) + "' '" + out_dir + "/probe.json' > /dev/null";
    if (std::system(cmd.c_str()) == 0) {
      std::printf("plot: %s/probe.png\n", out_dir.c_str());
      return;
    }
    break;
  }
  std::fprintf(stderr, "modalign probe: no plot (needs /usr/bin/python3 with matplotlib and plot_probe.py)\n");
}

int run_probe(const ConfigArgs& args, ProbeArgs p) {
  modalign::RunConfig config = modalign::load_run_config(args.files, args.overrides);
  modalign::setup_logging(config.logging.level);
  if (p.out.empty()) p.out = config.train.output_dir + "/probe";
  LoadedModel m = load_model(config, p.checkpoint);
  const std::vector<modalign::Example> examples = modalign::load_dataset(p.data);
  std::vector<modalign::ProbeReport> reports;
  for (const std::string& dir : {p.checkpoint, p.compare}) {
    if (dir.empty()) continue;
    modalign::load_checkpoint_weights(m.model, dir);
    reports.push_back(modalign::probe(m.model, *m.processor, examples, p.batch_size));
    reports.back().checkpoint = dir;
    reports.back().split = std::filesystem::path(p.data).stem().string();
    std::cout << modalign::format_probe(reports.back()) << "\n";
  }
  modalign::write_probe(reports, p.out);
  std::printf("results: %s/probe.json, %s/probe.csv\n", p.out.c_str(), p.out.c_str());
  plot_probe(p.out);
  return 0;
}

struct GenerateArgs {
  std::string checkpoint, image, prompt, data, out;
};

// One answer to --prompt (with --image), or every sample of --data written to --out as JSON lines.
int run_generate(const ConfigArgs& args, const GenerateArgs& g) {
  modalign::RunConfig config = modalign::load_run_config(args.files, args.overrides);
  modalign::setup_logging(config.logging.level);
  if (g.data.empty() == g.prompt.empty()) throw modalign::ConfigError("generate: give either --prompt or --data");
  if (!g.data.empty() && g.out.empty()) throw modalign::ConfigError("generate: --data needs --out answers.jsonl");
  if (!g.image.empty()) {  // the image named on the command line: its folder is the image folder
    config.data.image_folder = std::filesystem::absolute(g.image).parent_path().string();
  }
  LoadedModel m = load_model(config, g.checkpoint);
  auto evaluator = modalign::build_evaluator(config, m.model, m.processor);
  if (!g.prompt.empty()) {
    modalign::Example e;
    e.id = "prompt";
    e.where = "--prompt";
    if (!g.image.empty()) e.images = {std::filesystem::path(g.image).filename().string()};
    e.turns = {{true, (e.images.empty() ? "" : std::string(modalign::kImagePlaceholder) + "\n") + g.prompt}};
    std::printf("%s\n", evaluator->answer({e}).front().answer.c_str());
    return 0;
  }
  std::string lines;
  for (const auto& a : evaluator->answer(modalign::load_dataset(g.data)))
    lines += nlohmann::json{{"id", a.id}, {"prompt", a.prompt}, {"answer", a.answer}, {"reference", a.reference}}.dump() + "\n";
  modalign::write_file_atomic(g.out, lines);
  std::printf("answers: %s\n", g.out.c_str());
  return 0;
}

struct TokenizeArgs {
  std::string tokenizer, text, json;
  bool pieces = false, decode = false, add_special = false;
};

// Ids of a text, or of each string of a JSON array (one JSON array of id arrays); --pieces prints the
// vocabulary strings instead; --decode reads ids ("1 2 3", or a JSON array of id arrays) and decodes them.
int run_tokenize(const TokenizeArgs& t) {
  if (t.text.empty() == t.json.empty()) throw modalign::ConfigError("tokenize: give either --text or --json");
  const modalign::Tokenizer tok(t.tokenizer);
  nlohmann::json inputs = nlohmann::json::array();
  if (!t.json.empty()) {
    const std::string text = modalign::read_regular_file<modalign::DataError>(t.json, 1024 * modalign::kMiB);
    try {
      inputs = nlohmann::json::parse(text);
      if (!inputs.is_array()) throw modalign::DataError(t.json + ": not a JSON array");
      for (const auto& item : inputs) t.decode ? (void)item.get<std::vector<int64_t>>() : (void)item.get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      throw modalign::DataError(t.json + (t.decode ? ": not a JSON array of id arrays: " : ": not a JSON array of strings: ") + e.what());
    }
  } else if (t.decode) {
    std::vector<int64_t> ids;
    std::string word;
    for (char c : t.text + " ") {
      if (c == ' ' || c == ',' || c == '\n') {
        if (word.empty()) continue;
        try {
          ids.push_back(std::stoll(word));
        } catch (const std::exception&) {
          throw modalign::ConfigError("tokenize --decode: '" + word + "' is not an id");
        }
        word.clear();
      } else {
        word += c;
      }
    }
    inputs.push_back(ids);
  } else {
    inputs.push_back(t.text);
  }
  nlohmann::json out = nlohmann::json::array();
  for (const auto& item : inputs) {
    if (t.decode) {
      out.push_back(tok.decode(item.get<std::vector<int64_t>>()));
      continue;
    }
    const std::vector<int64_t> ids = tok.encode(item.get<std::string>(), t.add_special);
    if (!t.pieces) {
      out.push_back(ids);
      continue;
    }
    nlohmann::json pieces = nlohmann::json::array();
    for (int64_t id : ids) pieces.push_back(tok.id_to_piece(id));
    out.push_back(pieces);
  }
  if (!t.json.empty()) {
    std::cout << out.dump() << "\n";
  } else if (t.decode) {
    std::cout << out[0].get<std::string>() << "\n";
  } else if (t.pieces) {
    std::cout << out[0].dump() << "\n";
  } else {
    std::string line;
    for (int64_t id : out[0].get<std::vector<int64_t>>()) line += (line.empty() ? "" : " ") + std::to_string(id);
    std::cout << line << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modalign: fine-tune vision-language models with attention-alignment losses"};
  app.set_version_flag("--version", "modalign 0.1.0");
  app.require_subcommand(1);
  int code = 0;

  ConfigArgs probe_args;
  ProbeArgs probe_opts;
  CLI::App* probe = app.add_subcommand("probe", "per-layer visual attention share and modality dominance of a checkpoint");
  probe_args.add_to(probe);
  probe->add_option("--checkpoint", probe_opts.checkpoint, "checkpoint folder (step-N), run folder or its `latest` file")->required();
  probe->add_option("--data", probe_opts.data, "LLaVA JSON/JSONL split whose samples are measured")->required();
  probe->add_option("--compare", probe_opts.compare, "a second checkpoint, measured on the same split and plotted beside");
  probe->add_option("--out", probe_opts.out, "output folder (default: train.output_dir/probe)");
  probe->add_option("--batch-size", probe_opts.batch_size, "samples per forward")->capture_default_str()->check(CLI::PositiveNumber);
  probe->callback([&] { code = run_probe(probe_args, probe_opts); });

  ConfigArgs config_args;
  bool defaults = false;
  CLI::App* config = app.add_subcommand("config", "print the resolved config of a run, or every key's default");
  config_args.add_to(config);
  config->add_flag("--defaults", defaults, "print every key with its default and help");
  config->add_flag("--dump", "what `config` does without a flag (kept for scripts): print the resolved YAML a run "
                             "with these files and overrides would use");
  config->callback([&] { code = run_config(config_args, defaults); });

  ConfigArgs plan_args;
  PlanArgs plan_opts;
  CLI::App* plan = app.add_subcommand("plan", "memory per rank of a run: weights, gradients, optimizer state, activations");
  plan_args.add_to(plan);
  plan->add_option("--nproc", plan_opts.nproc, "data-parallel ranks (default: distributed.nproc)")->check(CLI::PositiveNumber);
  plan->add_option("--memory-gib", plan_opts.memory_gib, "say whether the run fits this many GiB per rank");
  plan->add_option("--seq-len", plan_opts.seq_len, "tokens per sample, image span included (default: data.model_max_length)")
      ->check(CLI::PositiveNumber);
  plan->add_option("--image-tokens", plan_opts.image_tokens,
                   "image tokens per sample (default: LLaVA num_patches; Qwen: what data.image_max_pixels allows)")
      ->check(CLI::PositiveNumber);
  plan->callback([&] { code = run_plan(plan_args, plan_opts); });

  ConfigArgs train_args;
  int64_t nproc = 0;
  const std::vector<std::string> argv_all(argv, argv + argc);
  CLI::App* train = app.add_subcommand("train", "fine-tune a model from a YAML config");
  train_args.add_to(train);
  train->add_option("--nproc", nproc, "data-parallel worker processes on this machine (overrides distributed.nproc)")
      ->check(CLI::PositiveNumber);
  train->callback([&] { code = run_train(train_args, nproc, argv_all); });

  ConfigArgs tower_args;
  std::string tower_out, tower_report;
  int64_t tower_holdout = 500;
  CLI::App* tower = app.add_subcommand(
      "pretrain-tower", "pretrain the built-in benchmark's CLIP tower alone on its per-patch colour and shape labels");
  tower_args.add_to(tower);
  tower->add_option("--out", tower_out, "safetensors file of the whole model (tower trained) for model.weights")->required();
  tower->add_option("--holdout", tower_holdout, "last samples of the train file held out for accuracy")
      ->capture_default_str()->check(CLI::PositiveNumber);
  tower->add_option("--report", tower_report, "also write losses and held-out accuracy as JSON to this file");
  tower->callback([&] { code = run_pretrain_tower(tower_args, tower_out, tower_holdout, tower_report); });

  ConfigArgs eval_args;
  std::string eval_checkpoint, eval_out;
  CLI::App* eval = app.add_subcommand("eval", "evaluate a checkpoint (or the config's model.weights) on the eval splits");
  eval_args.add_to(eval);
  eval->add_option("--checkpoint", eval_checkpoint,
                   "checkpoint folder (step-N), run folder or its `latest` file; without it the model as the config "
                   "builds it (model.weights, or the preset's random initialisation)");
  eval->add_option("--out", eval_out, "also write the results as JSON to this file");
  eval->callback([&] { code = run_eval(eval_args, eval_checkpoint, eval_out); });

  ConfigArgs generate_args;
  GenerateArgs generate_opts;
  CLI::App* generate = app.add_subcommand("generate", "answer a prompt about an image, or every sample of a split");
  generate_args.add_to(generate);
  generate->add_option("--checkpoint", generate_opts.checkpoint, "checkpoint folder (step-N), run folder or its `latest` file")
      ->required();
  generate->add_option("--prompt", generate_opts.prompt, "the question (the chat template wraps it)");
  generate->add_option("--image", generate_opts.image, "image file the prompt is about");
  generate->add_option("--data", generate_opts.data, "LLaVA JSON/JSONL split to answer (data.image_folder holds its images)");
  generate->add_option("--out", generate_opts.out, "with --data: answers as JSON lines {id, prompt, answer, reference}");
  generate->callback([&] { code = run_generate(generate_args, generate_opts); });

  ConfigArgs convert_args;
  std::string convert_checkpoint, convert_out;
  bool merge_lora = false;
  CLI::App* convert = app.add_subcommand("convert", "export a checkpoint's weights as Hugging Face safetensors (llava-hf or Qwen Hub names; merging LoRA)");
  convert_args.add_to(convert);
  convert->add_option("--checkpoint", convert_checkpoint, "checkpoint folder (step-N), run folder or its `latest` file")->required();
  convert->add_option("--out", convert_out, "output .safetensors file")->required();
  convert->add_flag("--merge-lora", merge_lora, "fold LoRA adapters into the weights");
  convert->callback([&] {
    modalign::RunConfig config = modalign::load_run_config(convert_args.files, convert_args.overrides);
    modalign::setup_logging(config.logging.level);
    modalign::convert_checkpoint(config, convert_checkpoint, convert_out, merge_lora);
    std::printf("wrote %s\n", convert_out.c_str());
  });

  modalign::SynthOptions synth;
  CLI::App* synth_cmd = app.add_subcommand("synth", "generate the built-in modality-conflict benchmark");
  synth_cmd->add_option("--out", synth.out_dir, "output folder")->required();
  synth_cmd->add_option("--train", synth.train, "training samples")->capture_default_str();
  synth_cmd->add_option("--eval", synth.eval, "samples per eval split")->capture_default_str();
  synth_cmd->add_option("--image-size", synth.image_size, "image side in pixels")->capture_default_str();
  synth_cmd->add_option("--seed", synth.seed, "random seed")->capture_default_str();
  synth_cmd->add_option("--hint-agreement", synth.hint_agreement, "share of training hints that are right")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  synth_cmd->add_flag("--chance-hints", synth.chance_hints,
                      "training hints carry no information: each is an answer option drawn uniformly, or absent as often as "
                      "any one option (overrides --hint-agreement)");
  synth_cmd->add_option("--difficulty", synth.difficulty, "easy, medium or hard")
      ->transform(CLI::CheckedTransformer(std::map<std::string, modalign::SynthDifficulty>{
          {"easy", modalign::SynthDifficulty::Easy},
          {"medium", modalign::SynthDifficulty::Medium},
          {"hard", modalign::SynthDifficulty::Hard}}))
      ->default_str("medium");
  synth_cmd->add_option("--vocab-size", synth.vocab_size, "tokenizer pieces (at most)")->capture_default_str();
  synth_cmd->add_flag("--force", synth.force, "replace the benchmark files in a non-empty --out folder");
  synth_cmd->callback([&] { std::cout << modalign::synthesize(synth) << "\n"; });

  TokenizeArgs tokenize_opts;
  CLI::App* tokenize = app.add_subcommand("tokenize", "ids (or pieces) of a text with a tokenizer, or the text of ids");
  tokenize->add_option("--tokenizer", tokenize_opts.tokenizer, "SentencePiece .model, tokenizer.json, or a folder with one")
      ->required();
  tokenize->add_option("--text", tokenize_opts.text, "the text (with --decode: ids separated by spaces or commas)");
  tokenize->add_option("--json", tokenize_opts.json, "a JSON array of strings (with --decode: of id arrays); prints one JSON array");
  tokenize->add_flag("--pieces", tokenize_opts.pieces, "print the vocabulary strings instead of ids");
  tokenize->add_flag("--decode", tokenize_opts.decode, "decode ids to text (special tokens left out)");
  tokenize->add_flag("--add-special", tokenize_opts.add_special, "add the tokenizer's special tokens (BOS, template)");
  tokenize->callback([&] { code = run_tokenize(tokenize_opts); });

  std::string inspect_path;
  CLI::App* inspect = app.add_subcommand("inspect", "list the tensors and metadata of a safetensors file, index or checkpoint");
  inspect->add_option("path", inspect_path, "file, model.safetensors.index.json or folder")->required();
  inspect->callback([&] { std::cout << modalign::describe_safetensors(inspect_path); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    return report(e);
  }
  return code;
}
