#include "src/tiers/blob/blob_client.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <deque>
#include <future>
#include <random>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "src/common/status_macros.h"

namespace kvtier {

namespace {

using HeaderMap = std::map<std::string, std::string>;

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("blob.", field, ": ", what));
}

// RFC 1123 date in GMT, as x-ms-date wants it.
std::string HttpDate() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

bool ValidContainerName(const std::string& c) {
  if (c.size() < 3 || c.size() > 63) return false;
  for (char ch : c) {
    if (!(std::islower(static_cast<unsigned char>(ch)) ||
          std::isdigit(static_cast<unsigned char>(ch)) || ch == '-')) {
      return false;
    }
  }
  return c.front() != '-' && c.back() != '-' && c.find("--") == std::string::npos;
}

std::string XmlUnescape(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    static const std::pair<absl::string_view, char> kEntities[] = {
        {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    bool matched = false;
    for (const auto& [ent, ch] : kEntities) {
      if (s.substr(i, ent.size()) == ent) {
        out.push_back(ch);
        i += ent.size() - 1;
        matched = true;
        break;
      }
    }
    if (!matched) out.push_back('&');
  }
  return out;
}

// The text between <tag> and </tag> at or after `from`; npos-safe.
bool FindElement(absl::string_view xml, absl::string_view tag, size_t from, absl::string_view* text,
                 size_t* end) {
  const std::string open = absl::StrCat("<", tag, ">");
  const std::string close = absl::StrCat("</", tag, ">");
  const size_t a = xml.find(open, from);
  if (a == absl::string_view::npos) return false;
  const size_t b = xml.find(close, a + open.size());
  if (b == absl::string_view::npos) return false;
  *text = xml.substr(a + open.size(), b - a - open.size());
  *end = b + close.size();
  return true;
}

}  // namespace

// ---- protocol pieces ------------------------------------------------------------

namespace blob_internal {

std::string UrlEncode(const std::string& s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

std::string Base64Encode(const std::string& s) {
  std::string out(4 * ((s.size() + 2) / 3) + 1, '\0');
  const int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                      reinterpret_cast<const unsigned char*>(s.data()), static_cast<int>(s.size()));
  out.resize(n);
  return out;
}

absl::StatusOr<std::string> Base64Decode(const std::string& s) {
  std::string in(absl::StripAsciiWhitespace(s));
  if (in.empty() || in.size() % 4 != 0) {
    return absl::InvalidArgumentError("not base64 (length is not a multiple of 4)");
  }
  std::string out(in.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  if (n < 0) return absl::InvalidArgumentError("not base64");
  size_t pad = 0;
  if (in.back() == '=') ++pad;
  if (in.size() >= 2 && in[in.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string HmacSha256Base64(const std::string& key, const std::string& text) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(text.data()), text.size(), mac, &len);
  return Base64Encode(std::string(reinterpret_cast<char*>(mac), len));
}

std::string StringToSign(const std::string& verb, const HeaderMap& headers,
                         const std::string& account, const std::string& path,
                         const std::map<std::string, std::string>& query) {
  auto h = [&](const char* name) -> std::string {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  };
  std::string content_length = h("content-length");
  if (content_length == "0") content_length.clear();  // x-ms-version >= 2015-02-21
  std::string s =
      absl::StrCat(verb, "\n", h("content-encoding"), "\n", h("content-language"), "\n",
                   content_length, "\n", h("content-md5"), "\n", h("content-type"), "\n", h("date"),
                   "\n", h("if-modified-since"), "\n", h("if-match"), "\n", h("if-none-match"),
                   "\n", h("if-unmodified-since"), "\n", h("range"), "\n");
  for (const auto& [name, value] : headers) {  // sorted by lowercase name
    if (absl::StartsWith(name, "x-ms-")) {
      absl::StrAppend(&s, name, ":", absl::StripAsciiWhitespace(value), "\n");
    }
  }
  absl::StrAppend(&s, "/", account, path);
  for (const auto& [name, value] : query) {
    absl::StrAppend(&s, "\n", absl::AsciiStrToLower(name), ":", value);
  }
  return s;
}

absl::StatusOr<std::string> AccountSas(const std::string& account, const std::string& key_base64,
                                       const std::string& permissions, absl::Time expiry) {
  KVTIER_ASSIGN_OR_RETURN(std::string key, Base64Decode(key_base64));
  const std::string version = "2019-12-12";
  const std::string se = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", expiry, absl::UTCTimeZone());
  const std::string services = "b";
  const std::string types = "sco";
  const std::string protocol = "https,http";
  // Fields: account, permissions, services, resource types, start, expiry,
  // IP, protocol, version (each followed by a newline).
  const std::string to_sign =
      absl::StrCat(account, "\n", permissions, "\n", services, "\n", types, "\n", "", "\n", se,
                   "\n", "", "\n", protocol, "\n", version, "\n");
  const std::string sig = HmacSha256Base64(key, to_sign);
  return absl::StrCat("sv=", version, "&ss=", services, "&srt=", types, "&sp=", permissions,
                      "&se=", UrlEncode(se, false), "&spr=", UrlEncode(protocol, false),
                      "&sig=", UrlEncode(sig, false));
}

absl::StatusOr<BlobListPage> ParseListBlobs(const std::string& xml_text) {
  absl::string_view xml(xml_text);
  if (xml.find("<EnumerationResults") == absl::string_view::npos) {
    return absl::DataLossError("List Blobs: the answer has no <EnumerationResults>");
  }
  // A listing cut short would otherwise read as fewer blobs and no next page.
  if (xml.find("</EnumerationResults>") == absl::string_view::npos) {
    return absl::DataLossError("List Blobs: the answer is cut short (no </EnumerationResults>)");
  }
  BlobListPage page;
  size_t pos = 0;
  absl::string_view blob;
  size_t end = 0;
  while (FindElement(xml, "Blob", pos, &blob, &end)) {
    BlobListItem item;
    absl::string_view text;
    size_t e2 = 0;
    if (!FindElement(blob, "Name", 0, &text, &e2)) {
      return absl::DataLossError("List Blobs: a <Blob> without <Name>");
    }
    item.name = XmlUnescape(text);
    if (FindElement(blob, "Content-Length", 0, &text, &e2)) {
      if (!absl::SimpleAtoi(text, &item.size)) {
        return absl::DataLossError(absl::StrCat("List Blobs: bad Content-Length '", text, "'"));
      }
    }
    page.blobs.push_back(std::move(item));
    pos = end;
  }
  if (xml.find("<Blob>", pos) != absl::string_view::npos) {
    return absl::DataLossError("List Blobs: a <Blob> without </Blob>");
  }
  absl::string_view marker;
  if (FindElement(xml, "NextMarker", 0, &marker, &end)) page.next_marker = XmlUnescape(marker);
  return page;
}

absl::Duration Backoff(uint32_t attempt, uint32_t initial_ms, uint32_t max_ms, uint64_t random) {
  uint64_t cap = initial_ms;
  for (uint32_t i = 1; i < attempt && cap < max_ms; ++i) cap *= 2;
  cap = std::min<uint64_t>(cap, max_ms);
  if (cap == 0) return absl::ZeroDuration();
  return absl::Milliseconds(static_cast<int64_t>(random % (cap + 1)));
}

}  // namespace blob_internal

absl::Status BlobClientOptions::Validate() const {
  if (!absl::StartsWith(endpoint, "http://") && !absl::StartsWith(endpoint, "https://")) {
    return Invalid("endpoint", absl::StrCat("'", endpoint, "' is not an http(s):// URL"));
  }
  if (account.empty()) return Invalid("account", "must not be empty");
  if (!ValidContainerName(container)) {
    return Invalid("container",
                   absl::StrCat("'", container, "' is not 3-63 lowercase letters, digits, '-'"));
  }
  if (shared_key.empty() == sas.empty()) {
    return Invalid("key", "set exactly one of the shared key and the SAS token");
  }
  if (!shared_key.empty() && !blob_internal::Base64Decode(shared_key).ok()) {
    return Invalid("key", "the shared key is not base64");
  }
  if (!sas.empty() && sas.front() == '?') return Invalid("sas", "leave out the leading '?'");
  if (block_bytes < 64ull * 1024 || block_bytes > (100ull << 20)) {
    return Invalid("block_bytes", absl::StrCat(block_bytes, " is outside [64 KiB, 100 MiB]"));
  }
  if (single_put_max_bytes > (256ull << 20)) {
    return Invalid("single_put_max_bytes", absl::StrCat(single_put_max_bytes, " is over 256 MiB"));
  }
  if (max_connections < 1 || max_connections > 1024) {
    return Invalid("max_connections", absl::StrCat(max_connections, " is outside [1, 1024]"));
  }
  if (connect_timeout_ms == 0) return Invalid("connect_timeout_ms", "must be positive");
  if (request_timeout_ms == 0) return Invalid("request_timeout_ms", "must be positive");
  if (max_attempts < 1 || max_attempts > 100) {
    return Invalid("max_attempts", absl::StrCat(max_attempts, " is outside [1, 100]"));
  }
  if (backoff_max_ms < backoff_initial_ms) {
    return Invalid("backoff_max_ms", "must be at least backoff_initial_ms");
  }
  return absl::OkStatus();
}

// ---- requests and the event loop -------------------------------------------------

struct RequestResult {
  absl::Status status;
  long http = 0;
  std::string body;
  HeaderMap headers;
  uint64_t sink_bytes = 0;
};

struct BlobClient::Request {
  std::string verb;  // GET, PUT, HEAD, DELETE
  std::string name;  // blob name; empty for a container request
  std::map<std::string, std::string> query;
  HeaderMap headers;  // lowercase names
  absl::Span<const std::byte> body;
  std::string owned_body;
  bool has_sink = false;
  absl::Span<std::byte> sink;
  absl::Time deadline = absl::InfiniteFuture();
  absl::AnyInvocable<void(RequestResult) &&> done;

  // Attempt state (event thread only).
  uint32_t attempts = 0;
  absl::Time retry_at;
  CURL* easy = nullptr;
  curl_slist* header_list = nullptr;
  std::string url;
  char error[CURL_ERROR_SIZE] = {};
  RequestResult result;
  bool sink_overflow = false;
};

class BlobClient::Loop {
 public:
  Loop(const BlobClient* client) : client_(client), rng_(std::random_device{}()) {}
  ~Loop() { Stop(); }

  absl::Status Init() {
    multi_ = curl_multi_init();
    if (multi_ == nullptr) return absl::InternalError("curl_multi_init failed");
    const long conns = client_->options_.max_connections;
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, conns);
    thread_ = std::thread([this] { Run(); });
    return absl::OkStatus();
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    if (multi_ != nullptr) curl_multi_wakeup(multi_);
    if (thread_.joinable()) thread_.join();
    if (multi_ != nullptr) curl_multi_cleanup(multi_);
    multi_ = nullptr;
  }

  void Submit(std::unique_ptr<Request> req) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        incoming_.push_back(std::move(req));
        req = nullptr;
      }
    }
    if (req != nullptr) {
      RequestResult r;
      r.status = absl::UnavailableError("blob: the client is closed");
      std::move(req->done)(std::move(r));
      return;
    }
    curl_multi_wakeup(multi_);
  }

  BlobClientStats Stats() const {
    BlobClientStats s;
    s.requests_ok = ok_.load();
    s.requests_not_found = not_found_.load();
    s.requests_denied = denied_.load();
    s.requests_client_error = client_error_.load();
    s.requests_throttled = throttled_.load();
    s.requests_server_error = server_error_.load();
    s.requests_connection_error = connection_error_.load();
    s.retries = retries_.load();
    s.bytes_sent = bytes_sent_.load();
    s.bytes_received = bytes_received_.load();
    return s;
  }

 private:
  static size_t OnBody(char* data, size_t size, size_t n, void* user) {
    auto* req = static_cast<Request*>(user);
    const size_t len = size * n;
    if (req->has_sink) {
      if (req->result.sink_bytes + len > req->sink.size()) {
        req->sink_overflow = true;
        return 0;  // aborts the transfer
      }
      std::memcpy(req->sink.data() + req->result.sink_bytes, data, len);
      req->result.sink_bytes += len;
    } else {
      req->result.body.append(data, len);
    }
    return len;
  }

  static size_t OnHeader(char* data, size_t size, size_t n, void* user) {
    auto* req = static_cast<Request*>(user);
    const size_t len = size * n;
    absl::string_view line(data, len);
    if (absl::StartsWith(line, "HTTP/")) {
      req->result.headers.clear();  // a new response (after 100 Continue, say)
      return len;
    }
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) return len;
    req->result.headers[absl::AsciiStrToLower(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    return len;
  }

  // Starts the next attempt of `req`, or finishes it when the deadline has passed.
  void StartAttempt(std::unique_ptr<Request> req) {
    const absl::Time now = absl::Now();
    if (now >= req->deadline) {
      Finish(std::move(req),
             absl::DeadlineExceededError(absl::StrCat("blob: ", req->verb, " ", Describe(*req),
                                                      ": deadline passed after ", req->attempts,
                                                      " attempt(s)", LastError(*req))));
      return;
    }
    ++req->attempts;
    if (req->attempts > 1) retries_.fetch_add(1, std::memory_order_relaxed);
    req->result = RequestResult{};
    req->sink_overflow = false;
    const BlobClientOptions& o = client_->options_;

    HeaderMap headers = req->headers;
    headers["x-ms-date"] = HttpDate();
    headers["x-ms-version"] = o.api_version;
    const bool has_body = req->verb == "PUT";
    const absl::Span<const std::byte> body =
        req->owned_body.empty()
            ? req->body
            : absl::MakeConstSpan(reinterpret_cast<const std::byte*>(req->owned_body.data()),
                                  req->owned_body.size());
    if (has_body) {
      headers["content-length"] = absl::StrCat(body.size());
      if (headers.find("content-type") == headers.end()) {
        headers["content-type"] = "application/octet-stream";
      }
    }
    const std::string path = client_->ResourcePath(req->name);
    if (!o.shared_key.empty()) {
      const std::string to_sign =
          blob_internal::StringToSign(req->verb, headers, o.account, path, req->query);
      headers["authorization"] =
          absl::StrCat("SharedKey ", o.account, ":",
                       blob_internal::HmacSha256Base64(client_->key_bytes_, to_sign));
    }
    req->url = client_->Url(req->name, req->query);

    CURL* easy = TakeEasy();
    req->easy = easy;
    curl_easy_setopt(easy, CURLOPT_URL, req->url.c_str());
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, req.get());
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->error);
    req->error[0] = '\0';
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Loop::OnBody);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, req.get());
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &Loop::OnHeader);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, req.get());
    const int64_t left_ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(req->deadline - now));
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
                     static_cast<long>(std::min<int64_t>(o.request_timeout_ms, left_ms)));
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(std::min<int64_t>(o.connect_timeout_ms, left_ms)));
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    // Whole chunks move in few, large socket reads and writes.
    curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, 512L * 1024);
    curl_easy_setopt(easy, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024);
    if (req->verb == "HEAD") {
      curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
    } else if (req->verb == "GET") {
      curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    } else if (req->verb == "PUT") {
      curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "PUT");
      curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
      curl_easy_setopt(easy, CURLOPT_POSTFIELDS,
                       body.empty() ? "" : reinterpret_cast<const char*>(body.data()));
      bytes_sent_.fetch_add(body.size(), std::memory_order_relaxed);
    } else {
      curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->verb.c_str());
    }
    curl_slist* list = nullptr;
    list = curl_slist_append(list, "Expect:");
    for (const auto& [name, value] : headers) {
      if (name == "content-length") continue;  // curl sends it
      list = curl_slist_append(list, absl::StrCat(name, ": ", value).c_str());
    }
    req->header_list = list;
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, list);
    Request* raw = req.release();
    running_[easy] = raw;
    curl_multi_add_handle(multi_, easy);
  }

  static std::string Describe(const Request& req) {
    return req.name.empty() ? std::string("container") : req.name;
  }
  static std::string LastError(const Request& req) {
    return req.result.status.ok() ? std::string()
                                  : absl::StrCat(" (last: ", req.result.status.message(), ")");
  }

  // Classifies a finished attempt; retries or finishes.
  void Completed(CURL* easy, CURLcode code) {
    auto it = running_.find(easy);
    if (it == running_.end()) return;
    std::unique_ptr<Request> req(it->second);
    running_.erase(it);
    curl_multi_remove_handle(multi_, easy);
    long http = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &http);
    curl_slist_free_all(req->header_list);
    req->header_list = nullptr;
    GiveEasy(easy);
    req->easy = nullptr;
    req->result.http = http;
    const BlobClientOptions& o = client_->options_;
    const std::string what = absl::StrCat("blob: ", req->verb, " ", Describe(*req));

    bool retryable = false;
    absl::Status status;
    if (code != CURLE_OK) {
      if (req->sink_overflow) {
        Finish(std::move(req), absl::DataLossError(absl::StrCat(
                                   what, ": the answer is larger than the buffer given")));
        return;
      }
      connection_error_.fetch_add(1, std::memory_order_relaxed);
      status = absl::UnavailableError(
          absl::StrCat(what, ": ", curl_easy_strerror(code),
                       req->error[0] != '\0' ? absl::StrCat(" (", req->error, ")") : ""));
      retryable = true;
    } else if (http >= 200 && http < 300) {
      ok_.fetch_add(1, std::memory_order_relaxed);
      bytes_received_.fetch_add(req->result.sink_bytes + req->result.body.size(),
                                std::memory_order_relaxed);
      Finish(std::move(req), absl::OkStatus());
      return;
    } else {
      auto ec = req->result.headers.find("x-ms-error-code");
      const std::string code_name = ec == req->result.headers.end() ? "" : ec->second;
      const std::string msg = absl::StrCat(what, ": HTTP ", http,
                                           code_name.empty() ? "" : absl::StrCat(" ", code_name));
      if (http == 404) {
        not_found_.fetch_add(1, std::memory_order_relaxed);
        status = absl::NotFoundError(msg);
      } else if (http == 403) {
        denied_.fetch_add(1, std::memory_order_relaxed);
        status = absl::PermissionDeniedError(
            absl::StrCat(msg, ": storage account '", o.account, "' refused the request (check the ",
                         o.shared_key.empty() ? "SAS token" : "shared key", ")"));
      } else if (http == 429 || http == 503) {
        throttled_.fetch_add(1, std::memory_order_relaxed);
        status = absl::UnavailableError(msg);
        retryable = true;
      } else if (http >= 500) {
        server_error_.fetch_add(1, std::memory_order_relaxed);
        status = absl::UnavailableError(msg);
        retryable = http == 500 || http == 502 || http == 504;
      } else {
        client_error_.fetch_add(1, std::memory_order_relaxed);
        if (http == 409) {
          status = absl::AlreadyExistsError(msg);
        } else if (http == 412) {
          status = absl::FailedPreconditionError(msg);
        } else {
          status = absl::InvalidArgumentError(absl::StrCat(
              msg, req->result.body.empty() ? "" : absl::StrCat(": ", req->result.body)));
        }
      }
    }
    if (!retryable) {
      Finish(std::move(req), status);
      return;
    }
    req->result.status = status;
    if (req->attempts >= o.max_attempts) {
      Finish(std::move(req),
             absl::UnavailableError(
                 absl::StrCat(status.message(), " (gave up after ", req->attempts, " attempts)")));
      return;
    }
    const absl::Duration wait =
        blob_internal::Backoff(req->attempts, o.backoff_initial_ms, o.backoff_max_ms, rng_());
    const absl::Time at = absl::Now() + wait;
    if (at >= req->deadline) {
      Finish(std::move(req),
             absl::DeadlineExceededError(absl::StrCat(status.message(), " (deadline passed after ",
                                                      req->attempts, " attempt(s))")));
      return;
    }
    req->retry_at = at;
    retry_.push_back(std::move(req));
  }

  // Takes `req` by reference so that callers may build `status` from it in
  // the same call (no argument is moved from before the others are evaluated).
  void Finish(std::unique_ptr<Request>&& req_ref, absl::Status status) {
    std::unique_ptr<Request> req = std::move(req_ref);
    RequestResult r = std::move(req->result);
    r.status = std::move(status);
    std::move(req->done)(std::move(r));
  }

  CURL* TakeEasy() {
    if (!idle_easy_.empty()) {
      CURL* e = idle_easy_.back();
      idle_easy_.pop_back();
      curl_easy_reset(e);
      return e;
    }
    return curl_easy_init();
  }
  void GiveEasy(CURL* e) {
    if (idle_easy_.size() < 256) {
      idle_easy_.push_back(e);
    } else {
      curl_easy_cleanup(e);
    }
  }

  void Run() {
    for (;;) {
      std::deque<std::unique_ptr<Request>> fresh;
      bool stopping = false;
      {
        absl::MutexLock lock(&mu_);
        fresh.swap(incoming_);
        stopping = stopping_;
      }
      if (stopping) {
        for (auto& r : fresh) {
          Finish(std::move(r), absl::UnavailableError("blob: the client is closed"));
        }
        break;
      }
      for (auto& r : fresh) StartAttempt(std::move(r));
      const absl::Time now = absl::Now();
      absl::Time next_retry = absl::InfiniteFuture();
      std::vector<std::unique_ptr<Request>> due;
      for (size_t i = 0; i < retry_.size();) {
        if (retry_[i]->retry_at <= now) {
          due.push_back(std::move(retry_[i]));
          retry_[i] = std::move(retry_.back());
          retry_.pop_back();
        } else {
          next_retry = std::min(next_retry, retry_[i]->retry_at);
          ++i;
        }
      }
      for (auto& r : due) StartAttempt(std::move(r));
      int still_running = 0;
      curl_multi_perform(multi_, &still_running);
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg == CURLMSG_DONE) Completed(msg->easy_handle, msg->data.result);
      }
      int timeout_ms = 50;
      if (!retry_.empty()) {
        timeout_ms = static_cast<int>(std::clamp<int64_t>(
            absl::ToInt64Milliseconds(next_retry - absl::Now()), 0, timeout_ms));
      }
      bool has_new = false;
      {
        absl::MutexLock lock(&mu_);
        has_new = !incoming_.empty() || stopping_;
      }
      if (!has_new) curl_multi_poll(multi_, nullptr, 0, timeout_ms, nullptr);
    }
    // Fail what is left.
    for (auto& [easy, raw] : running_) {
      std::unique_ptr<Request> req(raw);
      curl_multi_remove_handle(multi_, easy);
      curl_slist_free_all(req->header_list);
      curl_easy_cleanup(easy);
      Finish(std::move(req), absl::UnavailableError("blob: the client is closed"));
    }
    running_.clear();
    for (auto& r : retry_)
      Finish(std::move(r), absl::UnavailableError("blob: the client is closed"));
    retry_.clear();
    for (CURL* e : idle_easy_) curl_easy_cleanup(e);
    idle_easy_.clear();
  }

  const BlobClient* client_;
  CURLM* multi_ = nullptr;
  std::thread thread_;
  absl::Mutex mu_;
  std::deque<std::unique_ptr<Request>> incoming_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Event thread only.
  absl::flat_hash_map<CURL*, Request*> running_;
  std::vector<std::unique_ptr<Request>> retry_;
  std::vector<CURL*> idle_easy_;
  std::mt19937_64 rng_;

  std::atomic<uint64_t> ok_{0}, not_found_{0}, denied_{0}, client_error_{0}, throttled_{0},
      server_error_{0}, connection_error_{0}, retries_{0}, bytes_sent_{0}, bytes_received_{0};
};

// ---- BlobClient -------------------------------------------------------------------

BlobClient::BlobClient(const BlobClientOptions& options) : options_(options) {}

BlobClient::~BlobClient() {
  if (loop_ != nullptr) loop_->Stop();
}

absl::StatusOr<std::unique_ptr<BlobClient>> BlobClient::Create(const BlobClientOptions& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  static const CURLcode global = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (global != CURLE_OK) {
    return absl::InternalError(
        absl::StrCat("curl_global_init failed: ", curl_easy_strerror(global)));
  }
  std::unique_ptr<BlobClient> c(new BlobClient(options));
  if (!options.shared_key.empty()) {
    KVTIER_ASSIGN_OR_RETURN(c->key_bytes_, blob_internal::Base64Decode(options.shared_key));
  }
  std::string ep = options.endpoint;
  while (!ep.empty() && ep.back() == '/') ep.pop_back();
  const size_t scheme = ep.find("://");
  const size_t slash = ep.find('/', scheme + 3);
  if (slash == std::string::npos) {
    c->origin_ = ep;
  } else {
    c->origin_ = ep.substr(0, slash);
    c->base_path_ = ep.substr(slash);
  }
  c->loop_ = std::make_unique<Loop>(c.get());
  KVTIER_RETURN_IF_ERROR(c->loop_->Init());
  return c;
}

std::string BlobClient::ResourcePath(const std::string& name) const {
  std::string p = absl::StrCat(base_path_, "/", options_.container);
  if (!name.empty()) absl::StrAppend(&p, "/", blob_internal::UrlEncode(name, true));
  return p;
}

std::string BlobClient::Url(const std::string& name,
                            const std::map<std::string, std::string>& query) const {
  std::string url = absl::StrCat(origin_, ResourcePath(name));
  char sep = '?';
  for (const auto& [k, v] : query) {
    absl::StrAppend(&url, std::string(1, sep), k, "=", blob_internal::UrlEncode(v, false));
    sep = '&';
  }
  if (!options_.sas.empty()) absl::StrAppend(&url, std::string(1, sep), options_.sas);
  return url;
}

std::string BlobClient::BlobUrl(const std::string& name) const { return Url(name, {}); }

BlobClientStats BlobClient::Stats() const { return loop_->Stats(); }

void BlobClient::Start(std::unique_ptr<Request> req) { loop_->Submit(std::move(req)); }

namespace {

// A random number per upload (any thread may upload; a few microseconds
// beside the blocks' round trips).
uint64_t UploadId() {
  std::random_device rd;
  return static_cast<uint64_t>(rd()) << 32 | rd();
}

std::map<std::string, std::string> MetadataOf(const HeaderMap& headers) {
  std::map<std::string, std::string> m;
  for (const auto& [name, value] : headers) {
    if (absl::StartsWith(name, "x-ms-meta-")) m[name.substr(10)] = value;
  }
  return m;
}

}  // namespace

absl::Status BlobClient::RunSync(std::unique_ptr<Request> req, std::string* body,
                                 std::map<std::string, std::string>* headers) {
  std::promise<RequestResult> promise;
  std::future<RequestResult> f = promise.get_future();
  req->done = [&promise](RequestResult r) { promise.set_value(std::move(r)); };
  Start(std::move(req));
  RequestResult r = f.get();
  if (body != nullptr) *body = std::move(r.body);
  if (headers != nullptr) *headers = std::move(r.headers);
  return r.status;
}

absl::Status BlobClient::Upload(const std::string& name, absl::Span<const std::byte> data,
                                const Metadata& metadata, absl::Time deadline) {
  if (name.empty()) return absl::InvalidArgumentError("blob name: must not be empty");
  auto add_metadata = [&](Request& r) {
    for (const auto& [k, v] : metadata) r.headers[absl::StrCat("x-ms-meta-", k)] = v;
  };
  if (data.size() <= options_.single_put_max_bytes) {
    auto req = std::make_unique<Request>();
    req->verb = "PUT";
    req->name = name;
    req->headers["x-ms-blob-type"] = "BlockBlob";
    add_metadata(*req);
    req->body = data;
    req->deadline = deadline;
    return RunSync(std::move(req), nullptr, nullptr);
  }
  // Put Block for each piece, all in flight at once; then Put Block List.
  const uint64_t bs = options_.block_bytes;
  const size_t blocks = (data.size() + bs - 1) / bs;
  std::vector<std::string> ids(blocks);
  struct Shared {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    absl::Status first_error ABSL_GUARDED_BY(mu);
  };
  auto shared = std::make_shared<Shared>();
  {
    absl::MutexLock lock(&shared->mu);
    shared->left = blocks;
  }
  // Block IDs start with a random prefix of this upload, so two writers of
  // one name never stage blocks under each other's IDs (Put Block List
  // would commit a mix). Every ID of a blob has the same length.
  const uint64_t upload_id = UploadId();
  for (size_t i = 0; i < blocks; ++i) {
    ids[i] = blob_internal::Base64Encode(absl::StrFormat("kvtier-%016x-%08d", upload_id, i));
    auto req = std::make_unique<Request>();
    req->verb = "PUT";
    req->name = name;
    req->query["comp"] = "block";
    req->query["blockid"] = ids[i];
    const size_t off = i * bs;
    req->body = data.subspan(off, std::min<size_t>(bs, data.size() - off));
    req->deadline = deadline;
    req->done = [shared](const RequestResult& r) {
      absl::MutexLock lock(&shared->mu);
      if (!r.status.ok() && shared->first_error.ok()) shared->first_error = r.status;
      --shared->left;
    };
    Start(std::move(req));
  }
  {
    absl::MutexLock lock(&shared->mu);
    shared->mu.Await(absl::Condition(
        +[](size_t* left) { return *left == 0; }, &shared->left));
    if (!shared->first_error.ok()) return shared->first_error;
  }
  auto req = std::make_unique<Request>();
  req->verb = "PUT";
  req->name = name;
  req->query["comp"] = "blocklist";
  req->headers["content-type"] = "application/xml";
  add_metadata(*req);
  std::string xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>";
  for (const std::string& id : ids) absl::StrAppend(&xml, "<Latest>", id, "</Latest>");
  absl::StrAppend(&xml, "</BlockList>");
  req->owned_body = std::move(xml);
  req->deadline = deadline;
  return RunSync(std::move(req), nullptr, nullptr);
}

void BlobClient::GetRangeAsync(const std::string& name, uint64_t offset, absl::Span<std::byte> out,
                               absl::Time deadline, RangeCallback done) {
  if (out.empty()) {
    std::move(done)(absl::InvalidArgumentError("out: an empty range"));
    return;
  }
  auto req = std::make_unique<Request>();
  req->verb = "GET";
  req->name = name;
  req->headers["x-ms-range"] = absl::StrCat("bytes=", offset, "-", offset + out.size() - 1);
  req->has_sink = true;
  req->sink = out;
  req->deadline = deadline;
  req->done = [done = std::move(done), name](RequestResult r) mutable {
    if (!r.status.ok()) {
      if (r.http == 416) {
        std::move(done)(absl::InvalidArgumentError(
            absl::StrCat("blob: GET ", name, ": the range starts past the blob's end")));
      } else {
        std::move(done)(std::move(r.status));
      }
      return;
    }
    BlobRangeResult res;
    res.bytes = r.sink_bytes;
    res.metadata = MetadataOf(r.headers);
    auto cr = r.headers.find("content-range");
    if (cr != r.headers.end()) {
      const size_t slash = cr->second.rfind('/');
      if (slash == std::string::npos ||
          !absl::SimpleAtoi(absl::string_view(cr->second).substr(slash + 1), &res.blob_size)) {
        std::move(done)(absl::DataLossError(
            absl::StrCat("blob: GET ", name, ": bad Content-Range '", cr->second, "'")));
        return;
      }
    } else {
      res.blob_size = r.sink_bytes;  // the whole blob came back (200)
    }
    std::move(done)(res);
  };
  Start(std::move(req));
}

absl::StatusOr<BlobRangeResult> BlobClient::GetRange(const std::string& name, uint64_t offset,
                                                     absl::Span<std::byte> out,
                                                     absl::Time deadline) {
  std::promise<absl::StatusOr<BlobRangeResult>> promise;
  auto f = promise.get_future();
  GetRangeAsync(name, offset, out, deadline,
                [&promise](absl::StatusOr<BlobRangeResult> r) { promise.set_value(std::move(r)); });
  return f.get();
}

void BlobClient::GetPropertiesAsync(const std::string& name, absl::Time deadline,
                                    PropertiesCallback done) {
  auto req = std::make_unique<Request>();
  req->verb = "HEAD";
  req->name = name;
  req->deadline = deadline;
  req->done = [done = std::move(done), name](RequestResult r) mutable {
    if (!r.status.ok()) {
      std::move(done)(std::move(r.status));
      return;
    }
    BlobProperties p;
    auto cl = r.headers.find("content-length");
    if (cl == r.headers.end() || !absl::SimpleAtoi(cl->second, &p.size)) {
      std::move(done)(absl::DataLossError(
          absl::StrCat("blob: HEAD ", name, ": no Content-Length in the answer")));
      return;
    }
    p.metadata = MetadataOf(r.headers);
    std::move(done)(std::move(p));
  };
  Start(std::move(req));
}

absl::StatusOr<BlobProperties> BlobClient::GetProperties(const std::string& name,
                                                         absl::Time deadline) {
  std::promise<absl::StatusOr<BlobProperties>> promise;
  auto f = promise.get_future();
  GetPropertiesAsync(name, deadline, [&promise](absl::StatusOr<BlobProperties> r) {
    promise.set_value(std::move(r));
  });
  return f.get();
}

absl::Status BlobClient::Delete(const std::string& name, absl::Time deadline) {
  auto req = std::make_unique<Request>();
  req->verb = "DELETE";
  req->name = name;
  req->deadline = deadline;
  return RunSync(std::move(req), nullptr, nullptr);
}

absl::StatusOr<BlobListPage> BlobClient::List(const std::string& prefix, const std::string& marker,
                                              uint32_t max_results, absl::Time deadline) {
  auto req = std::make_unique<Request>();
  req->verb = "GET";
  req->query["restype"] = "container";
  req->query["comp"] = "list";
  if (!prefix.empty()) req->query["prefix"] = prefix;
  if (!marker.empty()) req->query["marker"] = marker;
  if (max_results > 0) req->query["maxresults"] = absl::StrCat(max_results);
  req->deadline = deadline;
  std::string body;
  KVTIER_RETURN_IF_ERROR(RunSync(std::move(req), &body, nullptr));
  return blob_internal::ParseListBlobs(body);
}

absl::Status BlobClient::CreateContainer(absl::Time deadline) {
  auto req = std::make_unique<Request>();
  req->verb = "PUT";
  req->query["restype"] = "container";
  req->deadline = deadline;
  absl::Status s = RunSync(std::move(req), nullptr, nullptr);
  if (absl::IsAlreadyExists(s)) return absl::OkStatus();
  return s;
}

absl::Status BlobClient::CheckContainer(absl::Time deadline) {
  auto req = std::make_unique<Request>();
  req->verb = "HEAD";
  req->query["restype"] = "container";
  req->deadline = deadline;
  return RunSync(std::move(req), nullptr, nullptr);
}

}  // namespace kvtier
