// With libFuzzer (fuzz_target.h): before fuzzing starts, an empty corpus
// folder (the first argument that is not a flag) gets the target's seeds.
#include <filesystem>
#include <string>

#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = (*argv)[i];
    if (arg.empty() || arg[0] == '-') continue;
    const std::filesystem::path dir = arg;
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec) || !std::filesystem::is_empty(dir, ec)) break;
    kvtier::fuzz::WriteSeeds(dir);
    break;
  }
  return 0;
}
