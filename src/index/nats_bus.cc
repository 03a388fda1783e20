#include "src/index/nats_bus.h"

#include <nats/nats.h>

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace kvtier::index {
namespace {

absl::Status FromNats(natsStatus s, absl::string_view what) {
  if (s == NATS_OK) return absl::OkStatus();
  const std::string text = absl::StrCat(what, ": ", natsStatus_GetText(s));
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
    default:
      return absl::UnavailableError(text);
  }
}

}  // namespace

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

absl::Status NatsBusOptions::Validate() const {
  if (url.empty()) return absl::InvalidArgumentError("nats url: must not be empty");
  for (absl::string_view u : absl::StrSplit(url, ',')) {
    if (!absl::StartsWith(u, "nats://") && !absl::StartsWith(u, "tls://")) {
      return absl::InvalidArgumentError(
          absl::StrCat("nats url: '", u, "' does not start with nats:// or tls://"));
    }
  }
  if (connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("nats connect_timeout: must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<NatsBus>> NatsBus::Connect(const NatsBusOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  if (s != NATS_OK) return FromNats(s, "nats options");
  std::vector<std::string> urls;
  for (absl::string_view u : absl::StrSplit(options.url, ',')) urls.emplace_back(u);
  std::vector<const char*> url_ptrs;
  for (const std::string& u : urls) url_ptrs.push_back(u.c_str());
  s = natsOptions_SetServers(opts, url_ptrs.data(), static_cast<int>(url_ptrs.size()));
  if (s == NATS_OK) s = natsOptions_SetName(opts, options.name.c_str());
  if (s == NATS_OK) {
    s = natsOptions_SetTimeout(opts, absl::ToInt64Milliseconds(options.connect_timeout));
  }
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
  if (s == NATS_OK && options.retry_initial_connect) {
    s = natsOptions_SetRetryOnFailedConnect(opts, true, nullptr, nullptr);
  }
  if (s != NATS_OK) {
    natsOptions_Destroy(opts);
    return FromNats(s, "nats options");
  }
  std::unique_ptr<NatsBus> bus(new NatsBus());
  s = natsConnection_Connect(&bus->nc_, opts);
  natsOptions_Destroy(opts);
  if (s != NATS_OK && !(options.retry_initial_connect && s == NATS_NOT_YET_CONNECTED)) {
    bus->nc_ = nullptr;
    return FromNats(s, absl::StrCat("nats: cannot connect to ", options.url));
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
