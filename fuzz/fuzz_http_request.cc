// The operational HTTP server's request parser (ParseHttpRequest in
// src/server/http_server.h), which reads whatever a client sends to the
// metrics and status port. What it accepts must be what the bytes say: the
// method, path and query put back together give the request line, header
// names are lowercase and values trimmed, and query parameters decode to no
// more bytes than they had.
//
// Input: the bytes read of one request.
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "fuzz/fuzz_target.h"
#include "src/server/http_server.h"

namespace kvtier::fuzz {

std::vector<std::string> Seeds() {
  return {
      "GET /api/chunks?x=%41%42&limit=10+2&flag HTTP/1.1\r\nHost: node-1\r\nAuthorization: "
      "Bearer t\r\n\r\n",
      "HEAD /healthz HTTP/1.0\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nAccept:text/plain\r\nX-Empty:\r\n\r\nbody after",
  };
}

}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string raw(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<kvtier::server::HttpRequest> r = kvtier::server::ParseHttpRequest(raw);
  if (!r.ok()) {
    KVTIER_FUZZ_CHECK(absl::IsInvalidArgument(r.status()) || absl::IsUnimplemented(r.status()));
    return 0;
  }
  KVTIER_FUZZ_CHECK(r->method == "GET" || r->method == "HEAD");
  KVTIER_FUZZ_CHECK(r->path.find_first_of("? ") == std::string::npos);
  const std::string line = raw.substr(0, raw.find("\r\n"));
  std::string target = r->path;
  if (line.size() > r->method.size() + 1 + r->path.size() &&
      line[r->method.size() + 1 + r->path.size()] == '?') {
    target += "?" + r->query;
  } else {
    KVTIER_FUZZ_CHECK(r->query.empty());
  }
  const std::string prefix = r->method + " " + target + " ";
  KVTIER_FUZZ_CHECK(absl::StartsWith(line, prefix));
  KVTIER_FUZZ_CHECK(absl::StartsWith(line.substr(prefix.size()), "HTTP/1."));
  KVTIER_FUZZ_CHECK(line.substr(prefix.size()).find(' ') == std::string::npos);
  for (const auto& [name, value] : r->headers) {
    KVTIER_FUZZ_CHECK(name == absl::AsciiStrToLower(name));
    KVTIER_FUZZ_CHECK(name.find(':') == std::string::npos);
    KVTIER_FUZZ_CHECK(name.find("\r\n") == std::string::npos &&
                      value.find("\r\n") == std::string::npos);
    KVTIER_FUZZ_CHECK(absl::StripAsciiWhitespace(value) == value);
    KVTIER_FUZZ_CHECK(raw.find(value) != std::string::npos);
  }
  for (const char* param : {"x", "limit", "flag", ""}) {
    KVTIER_FUZZ_CHECK(r->QueryParam(param).size() <= r->query.size());
  }
  return 0;
}
