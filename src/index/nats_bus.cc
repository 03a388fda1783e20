#include "src/index/nats_bus.h"

#include <nats/nats.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvtier::index {
namespace {

// libnats' own text for the last error of this thread when it belongs to
// `s`, without its "(file.c:123): " prefix; "" otherwise.
std::string LastErrorText(natsStatus s) {
  natsStatus last = NATS_OK;
  const char* text = nats_GetLastError(&last);
  if (text == nullptr || last != s) return "";
  absl::string_view t(text);
  if (absl::StartsWith(t, "(")) {
    if (const size_t end = t.find("): "); end != absl::string_view::npos) t.remove_prefix(end + 3);
  }
  return std::string(t);
}

absl::Status FromNats(natsStatus s, absl::string_view what) {
  if (s == NATS_OK) return absl::OkStatus();
  const std::string detail = LastErrorText(s);
  std::string text = absl::StrCat(what, ": ", natsStatus_GetText(s));
  if (!detail.empty() && detail != natsStatus_GetText(s)) absl::StrAppend(&text, " (", detail, ")");
  switch (s) {
    case NATS_NO_SERVER:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_STALE_CONNECTION:
    case NATS_NOT_YET_CONNECTED:
      return absl::UnavailableError(text);
    case NATS_TIMEOUT:
      return absl::DeadlineExceededError(text);
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
    case NATS_ADDRESS_MISSING:
      return absl::InvalidArgumentError(text);
    case NATS_CONNECTION_AUTH_FAILED:
    case NATS_NOT_PERMITTED:
      return absl::PermissionDeniedError(absl::StrCat(text, ": refused by the server"));
    case NATS_SSL_ERROR:
      return absl::UnauthenticatedError(absl::StrCat(text, ": TLS failed"));
    default:
      return absl::UnavailableError(text);
  }
}

// What follows the scheme of a URL, up to its path.
absl::string_view Authority(absl::string_view url) {
  const size_t scheme = url.find("://");
  if (scheme != absl::string_view::npos) url.remove_prefix(scheme + 3);
  return url.substr(0, url.find('/'));
}

// Whether `url` carries credentials (nats://user:password@host).
bool HasUserInfo(absl::string_view url) {
  return Authority(url).find('@') != absl::string_view::npos;
}

// The host of `url`, without brackets for IPv6.
std::string UrlHost(absl::string_view url) {
  absl::string_view a = Authority(url);
  if (const size_t at = a.rfind('@'); at != absl::string_view::npos) a.remove_prefix(at + 1);
  if (absl::StartsWith(a, "[")) {
    const size_t end = a.find(']');
    return std::string(a.substr(1, end == absl::string_view::npos ? end : end - 1));
  }
  return std::string(a.substr(0, a.find(':')));
}

// `text` with the secrets of `o` replaced by "***" (belt and braces: libnats
// texts should not hold them).
std::string Scrub(std::string text, const NatsBusOptions& o) {
  std::vector<std::string> secrets = {o.token, o.password};
  for (absl::string_view u : absl::StrSplit(o.url, ',')) {
    const absl::string_view a = Authority(u);
    if (const size_t at = a.rfind('@'); at != absl::string_view::npos) {
      secrets.emplace_back(a.substr(0, at));  // user:password, or a token
      if (const size_t colon = a.find(':'); colon < at) {
        secrets.emplace_back(a.substr(colon + 1, at - colon - 1));
      }
    }
  }
  for (const std::string& secret : secrets) {
    if (!secret.empty()) text = absl::StrReplaceAll(text, {{secret, "***"}});
  }
  return text;
}

// Which credentials the client offered, for error texts (never the secrets).
std::string CredentialsGiven(const NatsBusOptions& o) {
  if (!o.token.empty()) return "a token was given";
  if (!o.user.empty()) return absl::StrCat("user '", o.user, "' with a password was given");
  if (HasUserInfo(o.url)) return "the URL's credentials were given";
  return "no credentials were given: set token, or user and password";
}

// The error of a failed first connect.
absl::Status ConnectError(natsStatus s, const NatsBusOptions& o) {
  const std::string servers = RedactNatsUrls(o.url);
  const std::string detail = Scrub(LastErrorText(s), o);
  const std::string why = detail.empty() ? natsStatus_GetText(s) : detail;
  if (s == NATS_CONNECTION_AUTH_FAILED || s == NATS_NOT_PERMITTED ||
      absl::StrContains(absl::AsciiStrToLower(detail), "authorization")) {
    return absl::PermissionDeniedError(absl::StrCat("nats: authentication refused by ", servers,
                                                    " (", CredentialsGiven(o), "): ", why));
  }
  if (s == NATS_SSL_ERROR || s == NATS_SECURE_CONNECTION_REQUIRED) {
    std::string text = absl::StrCat("nats: TLS handshake with ", servers, " failed: ", why);
    if (!o.UsesTls()) {
      absl::StrAppend(&text, " (the server requires TLS: set ca_file, or use tls:// URLs)");
    }
    return absl::UnauthenticatedError(text);
  }
  if (s == NATS_SECURE_CONNECTION_WANTED) {
    return absl::FailedPreconditionError(
        absl::StrCat("nats: TLS is on (ca_file or tls://) but ", servers, " offers no TLS"));
  }
  // A server that verifies client certificates closes the connection right
  // after the handshake when it does not accept the client's (TLS 1.3).
  if (o.UsesTls() && (s == NATS_PROTOCOL_ERROR || s == NATS_CONNECTION_CLOSED)) {
    return absl::UnauthenticatedError(absl::StrCat(
        "nats: ", servers, " closed the connection after the TLS handshake: it refused ",
        o.cert_file.empty() ? "a client without a certificate (set cert_file and key_file)"
                            : absl::StrCat("the client certificate '", o.cert_file, "'"),
        " (", why, ")"));
  }
  absl::Status st = FromNats(s, absl::StrCat("nats: cannot connect to ", servers));
  return absl::Status(st.code(), Scrub(std::string(st.message()), o));
}

// An option file that cannot be read: InvalidArgument naming the option and the file.
absl::Status CheckReadable(absl::string_view option, const std::string& path) {
  if (path.empty() || access(path.c_str(), R_OK) == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("nats ", option, ": cannot read '", path, "': ", std::strerror(errno)));
}

// Called when a connection retried in the background is made.
void OnConnectedLater(natsConnection*, void*) {}

struct OptionsDeleter {
  void operator()(natsOptions* o) const { natsOptions_Destroy(o); }
};
using OptionsPtr = std::unique_ptr<natsOptions, OptionsDeleter>;

// Applies the credentials and TLS settings of `o` to `opts`.
absl::Status ApplySecurity(const NatsBusOptions& o, natsOptions* opts) {
  if (!o.token.empty()) {
    if (natsStatus s = natsOptions_SetToken(opts, o.token.c_str()); s != NATS_OK) {
      return FromNats(s, "nats token");
    }
  }
  if (!o.user.empty()) {
    if (natsStatus s = natsOptions_SetUserInfo(opts, o.user.c_str(), o.password.c_str());
        s != NATS_OK) {
      return FromNats(s, "nats user");
    }
  }
  if (!o.UsesTls()) return absl::OkStatus();
  if (natsStatus s = natsOptions_SetSecure(opts, true); s != NATS_OK) {
    if (s == NATS_ILLEGAL_STATE) {
      return absl::FailedPreconditionError("nats: this libnats is built without TLS");
    }
    return FromNats(s, "nats: cannot turn TLS on");
  }
  if (natsStatus s = natsOptions_LoadCATrustedCertificates(opts, o.ca_file.c_str()); s != NATS_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("nats ca_file: cannot load '", o.ca_file, "': ", LastErrorText(s)));
  }
  if (!o.cert_file.empty()) {
    if (natsStatus s =
            natsOptions_LoadCertificatesChain(opts, o.cert_file.c_str(), o.key_file.c_str());
        s != NATS_OK) {
      return absl::InvalidArgumentError(absl::StrCat("nats cert_file/key_file: cannot load '",
                                                     o.cert_file, "' and '", o.key_file,
                                                     "': ", LastErrorText(s)));
    }
  }
  // libnats checks the server's name only when told which one to expect.
  const std::string name = o.tls_name.empty()
                               ? UrlHost(absl::string_view(o.url).substr(0, o.url.find(',')))
                               : o.tls_name;
  if (natsStatus s = natsOptions_SetExpectedHostname(opts, name.c_str()); s != NATS_OK) {
    return FromNats(s, "nats tls_name");
  }
  return absl::OkStatus();
}

}  // namespace

std::string RedactNatsUrls(absl::string_view urls) {
  std::vector<std::string> out;
  for (absl::string_view u : absl::StrSplit(urls, ',')) {
    const absl::string_view a = Authority(u);
    const size_t at = a.rfind('@');
    if (at == absl::string_view::npos) {
      out.emplace_back(u);
      continue;
    }
    const size_t start = static_cast<size_t>(a.data() - u.data());
    out.push_back(absl::StrCat(u.substr(0, start), "***", u.substr(start + at)));
  }
  return absl::StrJoin(out, ",");
}

absl::Status NameNatsSetting(const absl::Status& status, absl::string_view option_prefix,
                             absl::string_view other_prefix) {
  if (status.ok()) return status;
  absl::string_view why = status.message();
  return absl::Status(status.code(), absl::ConsumePrefix(&why, "nats ")
                                         ? absl::StrCat(option_prefix, why)
                                         : absl::StrCat(other_prefix, status.message()));
}

struct NatsBus::Sub {
  Handler handler;
  bool stream = false;
  natsSubscription* sub = nullptr;
  ~Sub() {
    if (sub != nullptr) {
      natsSubscription_Unsubscribe(sub);
      natsSubscription_Destroy(sub);
    }
  }
};

namespace {

void OnMessage(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* handler = static_cast<NatsBus::Handler*>(closure);
  const absl::string_view subject(natsMsg_GetSubject(msg));
  const absl::string_view data(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
  (*handler)(subject, data, nullptr);
  natsMsg_Destroy(msg);
}

void OnStreamMessage(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* handler = static_cast<NatsBus::Handler*>(closure);
  StreamPosition pos;
  jsMsgMetaData* meta = nullptr;
  const bool has_meta = natsMsg_GetMetaData(&meta, msg) == NATS_OK;
  if (has_meta) {
    pos.stream_sequence = meta->Sequence.Stream;
    pos.pending = meta->NumPending;
    jsMsgMetaData_Destroy(meta);
  }
  const absl::string_view subject(natsMsg_GetSubject(msg));
  const absl::string_view data(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
  (*handler)(subject, data, has_meta ? &pos : nullptr);
  natsMsg_Destroy(msg);
}

}  // namespace

bool NatsBusOptions::UsesTls() const {
  if (!ca_file.empty()) return true;
  for (absl::string_view u : absl::StrSplit(url, ',')) {
    if (absl::StartsWith(u, "tls://")) return true;
  }
  return false;
}

absl::Status NatsBusOptions::Validate() const {
  if (url.empty()) return absl::InvalidArgumentError("nats url: must not be empty");
  bool url_credentials = false;
  std::vector<std::string> hosts;
  for (absl::string_view u : absl::StrSplit(url, ',')) {
    if (!absl::StartsWith(u, "nats://") && !absl::StartsWith(u, "tls://")) {
      return absl::InvalidArgumentError(absl::StrCat("nats url: '", RedactNatsUrls(u),
                                                     "' does not start with nats:// or tls://"));
    }
    hosts.push_back(UrlHost(u));
    url_credentials = url_credentials || HasUserInfo(u);
  }
  if (connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("nats connect_timeout: must be positive");
  }
  if (!token.empty() && (!user.empty() || !password.empty())) {
    return absl::InvalidArgumentError("nats token: set a token or a user and password, not both");
  }
  // libnats copies these into its CONNECT JSON as they are: a quote, a
  // backslash or a control character would break it.
  for (const auto& [option, value] : {std::pair<const char*, const std::string*>{"token", &token},
                                      {"user", &user},
                                      {"password", &password}}) {
    for (const char ch : *value) {
      if (ch == '"' || ch == '\\' || static_cast<unsigned char>(ch) < 0x20) {
        return absl::InvalidArgumentError(absl::StrCat(
            "nats ", option, ": must not hold quotes, backslashes or control characters"));
      }
    }
  }
  if (user.empty() != password.empty()) {
    return absl::InvalidArgumentError(user.empty() ? "nats password: needs user"
                                                   : "nats user: needs password");
  }
  if (url_credentials && (!token.empty() || !user.empty())) {
    return absl::InvalidArgumentError(
        "nats url: carries credentials; give them in the URL or in token/user, not both");
  }
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(cert_file.empty() ? "nats key_file: needs cert_file"
                                                        : "nats cert_file: needs key_file");
  }
  const bool tls = UsesTls();
  if (!tls && !cert_file.empty()) {
    return absl::InvalidArgumentError(
        "nats cert_file: needs TLS (set ca_file, or use tls:// URLs)");
  }
  if (!tls && !tls_name.empty()) {
    return absl::InvalidArgumentError("nats tls_name: needs TLS (set ca_file, or use tls:// URLs)");
  }
  if (tls && ca_file.empty()) {
    return absl::InvalidArgumentError(
        "nats ca_file: required with tls:// URLs (the PEM CA that signed the server's "
        "certificate)");
  }
  if (tls && tls_name.empty() &&
      (hosts[0].empty() || !std::all_of(hosts.begin(), hosts.end(),
                                        [&](const std::string& h) { return h == hosts[0]; }))) {
    return absl::InvalidArgumentError(
        "nats tls_name: required with TLS when the URLs do not all name one host");
  }
  if (absl::Status s = CheckReadable("ca_file", ca_file); !s.ok()) return s;
  if (absl::Status s = CheckReadable("cert_file", cert_file); !s.ok()) return s;
  return CheckReadable("key_file", key_file);
}

absl::StatusOr<std::unique_ptr<NatsBus>> NatsBus::Connect(const NatsBusOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  natsOptions* raw = nullptr;
  natsStatus s = natsOptions_Create(&raw);
  if (s != NATS_OK) return FromNats(s, "nats options");
  const OptionsPtr opts(raw);
  std::vector<std::string> urls;
  for (absl::string_view u : absl::StrSplit(options.url, ',')) urls.emplace_back(u);
  std::vector<const char*> url_ptrs;
  url_ptrs.reserve(urls.size());
  for (const std::string& u : urls) url_ptrs.push_back(u.c_str());
  s = natsOptions_SetServers(opts.get(), url_ptrs.data(), static_cast<int>(url_ptrs.size()));
  if (s == NATS_OK) s = natsOptions_SetName(opts.get(), options.name.c_str());
  if (s == NATS_OK) {
    s = natsOptions_SetTimeout(opts.get(), absl::ToInt64Milliseconds(options.connect_timeout));
  }
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts.get(), -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts.get(), 250);
  if (s != NATS_OK) {
    absl::Status st = FromNats(s, "nats options");
    return absl::Status(st.code(), Scrub(std::string(st.message()), options));
  }
  if (absl::Status st = ApplySecurity(options, opts.get()); !st.ok()) {
    return absl::Status(st.code(), Scrub(std::string(st.message()), options));
  }
  std::unique_ptr<NatsBus> bus(new NatsBus());
  // A first try without retrying, so that a refusal (credentials, TLS) is
  // reported at once: libnats would retry those in the background too.
  s = natsConnection_Connect(&bus->nc_, opts.get());
  if (s != NATS_OK) {
    bus->nc_ = nullptr;
    absl::Status error = ConnectError(s, options);
    const bool unreachable = error.code() == absl::StatusCode::kUnavailable ||
                             error.code() == absl::StatusCode::kDeadlineExceeded;
    if (!options.retry_initial_connect || !unreachable) return error;
    // With a callback libnats connects in the background; without one it
    // would block here until the server is up.
    s = natsOptions_SetRetryOnFailedConnect(opts.get(), true, OnConnectedLater, nullptr);
    if (s == NATS_OK) s = natsConnection_Connect(&bus->nc_, opts.get());
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
      bus->nc_ = nullptr;
      return ConnectError(s, options);
    }
  }
  s = natsConnection_JetStream(&bus->js_, bus->nc_, nullptr);
  if (s != NATS_OK) return FromNats(s, "nats: JetStream context");
  return bus;
}

NatsBus::~NatsBus() {
  subs_.clear();
  if (js_ != nullptr) jsCtx_Destroy(js_);
  if (nc_ != nullptr) {
    natsConnection_FlushTimeout(nc_, 500);
    natsConnection_Close(nc_);
    natsConnection_Destroy(nc_);
  }
}

absl::Status NatsBus::Publish(const std::string& subject, absl::string_view data) {
  return FromNats(
      natsConnection_Publish(nc_, subject.c_str(), data.data(), static_cast<int>(data.size())),
      absl::StrCat("nats publish ", subject));
}

absl::Status NatsBus::Flush(absl::Duration timeout) {
  return FromNats(natsConnection_FlushTimeout(nc_, absl::ToInt64Milliseconds(timeout)),
                  "nats flush");
}

absl::Status NatsBus::EnsureStream(const EventStreamOptions& options) {
  jsStreamInfo* si = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&si, js_, options.name.c_str(), nullptr, &jerr);
  if (s == NATS_OK) {
    jsStreamInfo_Destroy(si);
    return absl::OkStatus();
  }
  if (s != NATS_NOT_FOUND) return FromNats(s, absl::StrCat("jetstream stream ", options.name));
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = options.name.c_str();
  const char* subjects[] = {options.subjects.c_str()};
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.MaxAge = absl::ToInt64Nanoseconds(options.max_age);
  cfg.MaxBytes = options.max_bytes;
  cfg.Storage = options.file_storage ? js_FileStorage : js_MemoryStorage;
  s = js_AddStream(&si, js_, &cfg, nullptr, &jerr);
  if (s == NATS_OK) {
    jsStreamInfo_Destroy(si);
    return absl::OkStatus();
  }
  // Another process may have created it meanwhile.
  if (js_GetStreamInfo(&si, js_, options.name.c_str(), nullptr, &jerr) == NATS_OK) {
    jsStreamInfo_Destroy(si);
    return absl::OkStatus();
  }
  return FromNats(s, absl::StrCat("jetstream: cannot create stream ", options.name, " (error ",
                                  static_cast<int>(jerr), ")"));
}

absl::StatusOr<uint64_t> NatsBus::LastSequence(const std::string& stream) {
  jsStreamInfo* si = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&si, js_, stream.c_str(), nullptr, &jerr);
  if (s != NATS_OK) return FromNats(s, absl::StrCat("jetstream stream ", stream));
  const uint64_t last = si->State.Msgs == 0 ? 0 : si->State.LastSeq;
  jsStreamInfo_Destroy(si);
  return last;
}

absl::Status NatsBus::Subscribe(const std::string& subject, Handler handler) {
  auto sub = std::make_unique<Sub>();
  sub->handler = std::move(handler);
  natsStatus s =
      natsConnection_Subscribe(&sub->sub, nc_, subject.c_str(), OnMessage, &sub->handler);
  if (s != NATS_OK) {
    sub->sub = nullptr;
    return FromNats(s, absl::StrCat("nats subscribe ", subject));
  }
  subs_.push_back(std::move(sub));
  return absl::OkStatus();
}

absl::Status NatsBus::SubscribeStream(const std::string& subject, Handler handler) {
  auto sub = std::make_unique<Sub>();
  sub->handler = std::move(handler);
  sub->stream = true;
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Ordered = true;
  so.Config.DeliverPolicy = js_DeliverAll;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_Subscribe(&sub->sub, js_, subject.c_str(), OnStreamMessage, &sub->handler,
                              nullptr, &so, &jerr);
  if (s != NATS_OK) {
    sub->sub = nullptr;
    return FromNats(
        s, absl::StrCat("jetstream subscribe ", subject, " (error ", static_cast<int>(jerr), ")"));
  }
  subs_.push_back(std::move(sub));
  return absl::OkStatus();
}

bool NatsBus::connected() const {
  return nc_ != nullptr && natsConnection_Status(nc_) == NATS_CONN_STATUS_CONNECTED;
}

}  // namespace kvtier::index
