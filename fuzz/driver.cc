// The runner of a fuzz target in builds without libFuzzer (fuzz_target.h).
//
//   fuzz_<target> [--mutations N] [--seed S]   the seeds, then N damaged
//                                              copies of them (default 20000)
//   fuzz_<target> FILE|DIR ...                 each file once (a corpus, or a
//                                              crash file libFuzzer wrote)
//   fuzz_<target> --write-seeds DIR            the seeds as files, then exit
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "fuzz/fuzz_target.h"
#include "tests/testing/mutate.h"

namespace {

void Run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

bool RunFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "cannot read " << path << "\n";
    return false;
  }
  Run(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  return true;
}

int Usage(const char* argv0) {
  std::cerr << "usage: " << argv0
            << " [--mutations N] [--seed S] | --write-seeds DIR | FILE|DIR ...\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t mutations = 20000, seed = 1;
  std::vector<std::filesystem::path> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--mutations" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &mutations)) return Usage(argv[0]);
    } else if (arg == "--seed" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &seed)) return Usage(argv[0]);
    } else if (arg == "--write-seeds" && has_value) {
      const std::filesystem::path dir = argv[++i];
      std::filesystem::create_directories(dir);
      std::cout << "wrote " << kvtier::fuzz::WriteSeeds(dir) << " seeds to " << dir << "\n";
      return 0;
    } else if (!arg.empty() && arg[0] != '-') {
      paths.emplace_back(arg);
    } else {
      return Usage(argv[0]);
    }
  }
  if (!paths.empty()) {
    uint64_t files = 0;
    for (const std::filesystem::path& p : paths) {
      if (std::filesystem::is_directory(p)) {
        for (const auto& e : std::filesystem::directory_iterator(p)) {
          if (!e.is_regular_file() || !RunFile(e.path())) continue;
          ++files;
        }
      } else if (RunFile(p)) {
        ++files;
      } else {
        return 1;
      }
    }
    std::cout << "ran " << files << " inputs\n";
    return 0;
  }
  const std::vector<std::string> seeds = kvtier::fuzz::Seeds();
  for (const std::string& s : seeds) Run(s);
  kvtier::testing::Mutator m(seed);
  for (uint64_t i = 0; i < mutations; ++i) Run(m.Mutate(seeds[m.Below(seeds.size())]));
  std::cout << "ran " << seeds.size() << " seeds and " << mutations << " damaged copies (seed "
            << seed << ")\n";
  return 0;
}
