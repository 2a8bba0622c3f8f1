// Turns YAML files and `--set section.key=value` overrides into a validated RunConfig, and RunConfig
// back into YAML (the resolved config a run uses, or every key with its default and help).
//
// Rules: files apply in order and later values win (a list, `losses:` included, is replaced whole);
// `--set` applies after all files; `${VAR}` and `${VAR:-default}` are expanded in every value; relative
// paths in path-valued keys are resolved against the folder of the YAML file that set them (against
// the working directory for --set). Every error is a ConfigError naming file:line, key path and problem.
#pragma once
#include <string>
#include <vector>

#include "lib/config/run_config.h"

namespace modalign {

RunConfig load_run_config(const std::vector<std::string>& files, const std::vector<std::string>& overrides);

// Applies one YAML document to `config` (no validation); `origin` names it in errors and `base_dir` is
// where its relative paths start. Used by load_run_config and by checkpoints (config.yaml).
void apply_yaml(RunConfig& config, const std::string& yaml_text, const std::string& origin,
                const std::string& base_dir);

// The resolved config as YAML; load_run_config of this text gives back an equal config.
std::string dump_config(const RunConfig& config);

// The lines of dump_config that differ between a saved config (YAML text; `origin` names it) and
// `config`, as "'saved line' -> 'current line'": what a resumed run reports.
std::vector<std::string> config_changes(const std::string& saved_yaml, const std::string& origin, const RunConfig& config);

// Every key with its default value and one line of help (with the allowed choices), as commented YAML.
std::string describe_defaults();

}  // namespace modalign
