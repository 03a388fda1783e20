// Deterministic damage to valid encodings, for tests that feed decoders
// bytes a peer, a disk or a bad actor could send.
//
//   Mutator m(/*seed=*/7);
//   for (int i = 0; i < 10000; ++i) {
//     std::string bad = m.Mutate(valid);
//     ...  // decode `bad`: an error, or exactly what a reference decoder says
//   }
//
// Each Mutate applies one to four edits drawn from: flip one bit, set a byte
// to a boundary value (0x00, 0x7f, 0x80, 0xff) or a random one, truncate,
// delete a range, duplicate a range, insert random bytes. The sequence
// depends only on the seed, so a failure names its seed and iteration and
// reproduces exactly.
//
// Thread-safety: none; one Mutator per thread.
#ifndef KVTIER_TESTS_TESTING_MUTATE_H_
#define KVTIER_TESTS_TESTING_MUTATE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>

namespace kvtier::testing {

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  // A damaged copy of `in` (may be empty, may equal `in` when an edit undoes
  // itself).
  std::string Mutate(const std::string& in) {
    std::string s = in;
    const int edits = 1 + static_cast<int>(Below(4));
    for (int e = 0; e < edits; ++e) Edit(s);
    return s;
  }

  // Uniform in [0, n); 0 when n is 0.
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : rng_() % n; }

 private:
  void Edit(std::string& s) {
    static constexpr unsigned char kBoundary[] = {0x00, 0x7f, 0x80, 0xff};
    switch (Below(6)) {
      case 0:  // flip a bit
        if (!s.empty()) s[Below(s.size())] ^= static_cast<char>(1u << Below(8));
        break;
      case 1:  // a boundary or random byte
        if (!s.empty()) {
          s[Below(s.size())] = static_cast<char>(Below(2) == 0 ? kBoundary[Below(4)] : Below(256));
        }
        break;
      case 2:  // truncate
        s.resize(Below(s.size() + 1));
        break;
      case 3: {  // delete a range
        const size_t at = Below(s.size() + 1);
        s.erase(at, 1 + Below(16));
        break;
      }
      case 4: {  // duplicate a range
        const size_t at = Below(s.size() + 1);
        const std::string piece = s.substr(at, 1 + Below(32));
        s.insert(std::min(s.size(), static_cast<size_t>(Below(s.size() + 1))), piece);
        break;
      }
      default: {  // insert random bytes
        std::string junk(1 + Below(8), '\0');
        for (char& c : junk) c = static_cast<char>(Below(256));
        s.insert(Below(s.size() + 1), junk);
        break;
      }
    }
  }

  std::mt19937_64 rng_;
};

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_TESTING_MUTATE_H_
