// BlobClient: a small Azure Blob Storage REST client over libcurl's multi
// interface (one event thread, pooled connections reused across requests).
//
// Operations: Put Blob (single shot up to single_put_max_bytes), Put Block +
// Put Block List above it, ranged Get Blob, Get Blob Properties, Delete Blob,
// List Blobs (prefix, maxresults, continuation marker) and Create Container.
// Requests are signed with Shared Key (HMAC-SHA256 over the canonicalized
// request) or carry a SAS token. The endpoint is either the service
// (https://<account>.blob.core.windows.net) or a path-style one such as
// Azurite's (http://127.0.0.1:<port>/<account>).
//
// Faults. A request that fails with 429, 500, 502, 503, 504 or a connection
// error (refused, reset, timed out) is sent again after an exponential
// backoff with full jitter, as long as the next attempt can start before the
// request's deadline; 403, 404 and the other 4xx answers are final. Each
// attempt is bounded by request_timeout_ms and by what is left of the
// deadline, so no call outlives its deadline by more than the event loop's
// tick (a few milliseconds).
//
// Errors: NotFound (404), PermissionDenied (403; the message names the
// account), AlreadyExists (409), InvalidArgument (other 4xx, or bad input),
// Unavailable (retryable failures that outlasted the retries),
// DeadlineExceeded (the deadline passed first), DataLoss (a malformed answer).
//
// Thread-safety: every method may be called from any number of threads.
// Callbacks of the asynchronous methods run on the client's event thread and
// must not block.
#ifndef KVTIER_SRC_TIERS_BLOB_BLOB_CLIENT_H_
#define KVTIER_SRC_TIERS_BLOB_BLOB_CLIENT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace kvtier {

struct BlobClientOptions {
  // Service endpoint without the container: "https://acct.blob.core.windows.net"
  // or "http://127.0.0.1:10000/devstoreaccount1" (path style).
  std::string endpoint;
  std::string account;    // storage account name
  std::string container;  // container name (3-63 of [a-z0-9-])
  // Authorization: exactly one of the two.
  std::string shared_key;                  // base64 account key (Shared Key)
  std::string sas;                         // SAS token, the query string without '?'
  std::string api_version = "2021-08-06";  // x-ms-version
  // Put Blob up to this many bytes; Put Block + Put Block List above.
  uint64_t single_put_max_bytes = 8ull << 20;
  uint64_t block_bytes = 4ull << 20;  // bytes per block above the threshold
  uint32_t max_connections = 32;      // connections kept open to the endpoint
  uint32_t connect_timeout_ms = 2000;
  uint32_t request_timeout_ms = 10000;  // one attempt, from sending to the last byte
  uint32_t max_attempts = 6;            // attempts per request (1 = no retry)
  uint32_t backoff_initial_ms = 20;     // first retry waits up to this (full jitter)
  uint32_t backoff_max_ms = 1000;       // cap of the exponential backoff

  absl::Status Validate() const;
};

// Counters since the client was created.
struct BlobClientStats {
  uint64_t requests_ok = 0;                // 2xx answers
  uint64_t requests_not_found = 0;         // 404
  uint64_t requests_denied = 0;            // 403
  uint64_t requests_client_error = 0;      // other 4xx
  uint64_t requests_throttled = 0;         // 429 and 503
  uint64_t requests_server_error = 0;      // other 5xx
  uint64_t requests_connection_error = 0;  // no answer: refused, reset, timeout
  uint64_t retries = 0;                    // attempts after the first
  uint64_t bytes_sent = 0;                 // request bodies
  uint64_t bytes_received = 0;             // response bodies
};

struct BlobProperties {
  uint64_t size = 0;
  std::map<std::string, std::string> metadata;  // x-ms-meta-<name> (lowercase name)
};

struct BlobRangeResult {
  uint64_t bytes = 0;      // bytes written into the output
  uint64_t blob_size = 0;  // the whole blob's size
  std::map<std::string, std::string> metadata;
};

struct BlobListItem {
  std::string name;
  uint64_t size = 0;
};

struct BlobListPage {
  std::vector<BlobListItem> blobs;
  std::string next_marker;  // empty on the last page
};

class BlobClient {
 public:
  static absl::StatusOr<std::unique_ptr<BlobClient>> Create(const BlobClientOptions& options);
  // Fails the requests in flight with Unavailable and stops the event thread.
  ~BlobClient();

  using Metadata = std::map<std::string, std::string>;

  // Uploads `data` as a block blob named `name` (replacing one of that
  // name), with `metadata` (names: lowercase letters, digits, '_').
  absl::Status Upload(const std::string& name, absl::Span<const std::byte> data,
                      const Metadata& metadata, absl::Time deadline);

  // Reads `out.size()` bytes from `offset` (fewer at the blob's end) into
  // `out`. NotFound for a missing blob; InvalidArgument for an offset past
  // the end.
  absl::StatusOr<BlobRangeResult> GetRange(const std::string& name, uint64_t offset,
                                           absl::Span<std::byte> out, absl::Time deadline);
  using RangeCallback = absl::AnyInvocable<void(absl::StatusOr<BlobRangeResult>) &&>;
  // GetRange without waiting; `out` must stay valid until `done` runs.
  void GetRangeAsync(const std::string& name, uint64_t offset, absl::Span<std::byte> out,
                     absl::Time deadline, RangeCallback done);

  absl::StatusOr<BlobProperties> GetProperties(const std::string& name, absl::Time deadline);
  using PropertiesCallback = absl::AnyInvocable<void(absl::StatusOr<BlobProperties>) &&>;
  void GetPropertiesAsync(const std::string& name, absl::Time deadline, PropertiesCallback done);

  // NotFound when there is no such blob.
  absl::Status Delete(const std::string& name, absl::Time deadline);

  // One page of the blobs whose names start with `prefix`, in name order.
  // `marker` is empty for the first page, then the previous page's
  // next_marker. `max_results` 0 = the service's default (5000).
  absl::StatusOr<BlobListPage> List(const std::string& prefix, const std::string& marker,
                                    uint32_t max_results, absl::Time deadline);

  // Creates the container; OK when it exists already.
  absl::Status CreateContainer(absl::Time deadline);
  // Get Container Properties: a cheap request that tells whether the
  // endpoint answers and accepts the credentials.
  absl::Status CheckContainer(absl::Time deadline);

  // The full URL of a blob (with the SAS token when one is configured).
  std::string BlobUrl(const std::string& name) const;

  BlobClientStats Stats() const;
  const BlobClientOptions& options() const { return options_; }

  struct Request;
  class Loop;

 private:
  explicit BlobClient(const BlobClientOptions& options);
  // Runs `req` (retries included); `req->done` gets the final outcome.
  void Start(std::unique_ptr<Request> req);
  absl::Status RunSync(std::unique_ptr<Request> req, std::string* body,
                       std::map<std::string, std::string>* headers);
  // URL path of the container or of a blob in it ("/acct/container/name").
  std::string ResourcePath(const std::string& name) const;
  // The full URL with `query` (values encoded here) and the SAS token.
  std::string Url(const std::string& name, const std::map<std::string, std::string>& query) const;

  BlobClientOptions options_;
  std::string key_bytes_;  // decoded shared key
  std::string base_path_;  // URL path of the endpoint ("" or "/account")
  std::string origin_;     // scheme://host[:port]
  std::unique_ptr<Loop> loop_;
};

// Parts of the protocol, exposed for tests.
namespace blob_internal {
// The Shared Key string to sign for a request.
std::string StringToSign(const std::string& verb, const std::map<std::string, std::string>& headers,
                         const std::string& account, const std::string& path,
                         const std::map<std::string, std::string>& query);
// base64(HMAC-SHA256(key, text)).
std::string HmacSha256Base64(const std::string& key, const std::string& text);
// Percent-encodes everything but unreserved characters (and '/' when keep_slash).
std::string UrlEncode(const std::string& s, bool keep_slash);
absl::StatusOr<std::string> Base64Decode(const std::string& s);
std::string Base64Encode(const std::string& s);
// An account SAS token (query string, no '?') for the Blob service signed
// with the base64 account key: permissions such as "rwdlac", resource types
// service, container and object, http and https, valid until `expiry`.
absl::StatusOr<std::string> AccountSas(const std::string& account, const std::string& key_base64,
                                       const std::string& permissions, absl::Time expiry);
// Parses a List Blobs answer.
absl::StatusOr<BlobListPage> ParseListBlobs(const std::string& xml);
// The backoff before attempt `attempt` (>= 1): uniform in [0, min(max, initial * 2^(attempt-1))].
absl::Duration Backoff(uint32_t attempt, uint32_t initial_ms, uint32_t max_ms, uint64_t random);
}  // namespace blob_internal

}  // namespace kvtier

#endif  // KVTIER_SRC_TIERS_BLOB_BLOB_CLIENT_H_
