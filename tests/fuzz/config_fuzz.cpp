// libFuzzer target: the YAML config loader must give a valid RunConfig or throw ConfigError; a config it
// accepts and validates must survive dump -> load unchanged (after one round, which resolves the relative
// paths of keys the input left at their defaults).
#include "lib/config/config_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  modalign::RunConfig config;
  try {
    modalign::apply_yaml(config, text, "fuzz.yaml", "/tmp");
    modalign::validate(config);
  } catch (const modalign::ConfigError&) {
    return 0;
  }
  modalign::RunConfig once, twice;
  modalign::apply_yaml(once, modalign::dump_config(config), "dumped.yaml", "/tmp");
  modalign::apply_yaml(twice, modalign::dump_config(once), "dumped-again.yaml", "/tmp");
  if (modalign::dump_config(twice) != modalign::dump_config(once)) __builtin_trap();
  return 0;
}
