// Request traces for replay: the JSON Lines format of the Mooncake traces.
//
// One JSON object a line:
//   {"timestamp": 0, "input_length": 40160, "output_length": 6,
//    "hash_ids": [0, 1, 2, ...]}
// timestamp: arrival in ms (relative), input_length / output_length: tokens,
// hash_ids: prefix-chained block ids (two requests whose lists start with the
// same k ids share their first k blocks of prompt tokens). Other fields are
// skipped; the four above are required, each exactly once.
//
// The parser is purpose-built for this shape (objects of integers and integer
// arrays; any other JSON value is accepted and skipped under an unknown key).
// Every error is InvalidArgument naming the line, and the field or column.
//
// Thread-safety: free functions without shared state.
#ifndef KVTIER_SRC_CORE_REPLAY_TRACE_READER_H_
#define KVTIER_SRC_CORE_REPLAY_TRACE_READER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvtier::replay {

struct TraceRequest {
  int64_t timestamp_ms = 0;        // arrival, ms since the trace began
  uint64_t input_length = 0;       // prompt tokens
  uint64_t output_length = 0;      // generated tokens
  std::vector<uint64_t> hash_ids;  // prefix-chained block ids, first block first
  uint64_t line = 0;               // 1-based line in the source text; 0 if built in code
};

struct TraceOptions {
  // Tokens a hash id stands for. When non-zero, every line must carry
  // ceil(input_length / block_tokens) ids (the last block may be partial);
  // 0 skips that check.
  uint32_t block_tokens = 512;
  // Check that the ids are prefix-chained across the whole trace: an id is
  // always preceded by the same id (or always first). Simulators do not need
  // it; it catches traces whose ids were renumbered per request.
  bool check_chains = true;

  absl::Status Validate() const;
};

// Parses one line (without its newline). `line_number` (1-based) goes into
// error messages and TraceRequest::line. InvalidArgument for malformed JSON,
// a missing, repeated or ill-typed field, or an id count that does not match
// input_length.
absl::StatusOr<TraceRequest> ParseTraceLine(absl::string_view line, uint64_t line_number,
                                            const TraceOptions& options = {});

// Parses a whole JSON Lines text in order; blank lines are skipped. Then runs
// CheckPrefixChains when options.check_chains.
absl::StatusOr<std::vector<TraceRequest>> ParseTrace(absl::string_view text,
                                                     const TraceOptions& options = {});

// Reads and parses the file at `path`. NotFound / PermissionDenied /
// Internal when it cannot be read, otherwise as ParseTrace.
absl::StatusOr<std::vector<TraceRequest>> ReadTraceFile(const std::string& path,
                                                        const TraceOptions& options = {});

// InvalidArgument naming both lines when one id follows two different
// predecessors, or is first in one request and not in another. (An id that
// repeats within a request always trips this.)
absl::Status CheckPrefixChains(absl::Span<const TraceRequest> requests);

}  // namespace kvtier::replay

#endif  // KVTIER_SRC_CORE_REPLAY_TRACE_READER_H_
