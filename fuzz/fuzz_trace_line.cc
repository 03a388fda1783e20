// The trace reader's line parser (src/core/replay/trace_reader.h), a
// purpose-built JSON reader, against nlohmann::json: a line it accepts holds
// exactly the timestamp, lengths and ids a general JSON parser reads from it.
//
// Input: one line.
#include <string>
#include <vector>

#include "fuzz/fuzz_target.h"
#include "nlohmann/json.hpp"
#include "src/core/replay/trace_reader.h"

namespace kvtier::fuzz {

std::vector<std::string> Seeds() {
  return {
      R"({"timestamp": 1500, "input_length": 1100, "output_length": 12, "hash_ids": [7, 8, 90],)"
      R"( "note": {"a": [1, "x\u00e9\n", true, null, -2.5e3]}})",
      R"({"hash_ids":[],"timestamp":0,"input_length":0,"output_length":0})",
  };
}

}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string line(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<kvtier::replay::TraceRequest> r =
      kvtier::replay::ParseTraceLine(line, 1, kvtier::replay::TraceOptions{.block_tokens = 0});
  if (!r.ok()) {
    KVTIER_FUZZ_CHECK(absl::IsInvalidArgument(r.status()));
    return 0;
  }
  // The trace parser skips unknown values without checking their UTF-8; so
  // that the JSON parser takes them, non-ASCII bytes (which only a string can
  // hold) are made ASCII.
  std::string ascii = line;
  for (char& c : ascii) c = static_cast<unsigned char>(c) >= 0x80 ? '?' : c;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ascii);
  } catch (const nlohmann::json::out_of_range&) {
    // A number past a double's range (1e400) under a key the trace parser
    // skips: valid JSON (RFC 8259 leaves the range to the parser), which
    // nlohmann::json refuses. Nothing to compare with.
    return 0;
  } catch (const nlohmann::json::exception&) {
    KVTIER_FUZZ_CHECK(!"nlohmann::json refuses a line the trace parser took");
  }
  KVTIER_FUZZ_CHECK(j.is_object());
  for (const char* key : {"timestamp", "input_length", "output_length"}) {
    KVTIER_FUZZ_CHECK(j.contains(key) && j[key].is_number_integer());
  }
  KVTIER_FUZZ_CHECK(j.contains("hash_ids") && j["hash_ids"].is_array());
  KVTIER_FUZZ_CHECK(j["timestamp"].get<int64_t>() == r->timestamp_ms);
  KVTIER_FUZZ_CHECK(j["input_length"].get<uint64_t>() == r->input_length);
  KVTIER_FUZZ_CHECK(j["output_length"].get<uint64_t>() == r->output_length);
  std::vector<uint64_t> ids;
  for (const nlohmann::json& id : j["hash_ids"]) {
    KVTIER_FUZZ_CHECK(id.is_number_unsigned());
    ids.push_back(id.get<uint64_t>());
  }
  KVTIER_FUZZ_CHECK(ids == r->hash_ids);
  return 0;
}
