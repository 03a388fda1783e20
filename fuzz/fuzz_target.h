// A fuzz target: LLVMFuzzerTestOneInput, which feeds one input to a decoder
// of outside bytes and checks what it returns against a reference, and the
// valid inputs the fuzzing starts from.
//
// Each target is built two ways (fuzz/CMakeLists.txt):
//   - with libFuzzer, AddressSanitizer and UBSan under clang (`make fuzz`):
//     coverage-guided, for as long as asked; libfuzzer_main.cc writes the
//     seeds into an empty corpus folder first;
//   - in every test build with driver.cc: ctest entry `Fuzz.<target>` runs
//     the seeds and seeded damage of them, and the same binary replays the
//     files libFuzzer leaves behind (`fuzz_frames crash-...`).
//
// A failed check prints what failed and aborts, which both runners report.
#ifndef KVTIER_FUZZ_FUZZ_TARGET_H_
#define KVTIER_FUZZ_FUZZ_TARGET_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace kvtier::fuzz {

// The target's valid inputs (at least one).
std::vector<std::string> Seeds();

// Writes the seeds into `dir` as seed-0, seed-1, ...; returns how many.
inline size_t WriteSeeds(const std::filesystem::path& dir) {
  const std::vector<std::string> seeds = Seeds();
  for (size_t s = 0; s < seeds.size(); ++s) {
    std::ofstream(dir / ("seed-" + std::to_string(s)), std::ios::binary) << seeds[s];
  }
  return seeds.size();
}

[[noreturn]] inline void CheckFailed(const char* file, int line, const char* what) {
  std::fprintf(stderr, "fuzz check failed at %s:%d: %s\n", file, line, what);
  std::abort();
}

}  // namespace kvtier::fuzz

#define KVTIER_FUZZ_CHECK(cond) \
  ((cond) ? static_cast<void>(0) : ::kvtier::fuzz::CheckFailed(__FILE__, __LINE__, #cond))

#endif  // KVTIER_FUZZ_FUZZ_TARGET_H_
