// kvtier._kvtier: Python bindings of the public C++ API (include/kvtier/*.h)
// and of the gather/scatter data path (cuda/device_runtime.h).
//
// Errors: a non-OK absl::Status raises kvtier.Error, or the subclass for its
// code (NotFoundError, DataLossError, InvalidArgumentError (also a
// ValueError), ResourceExhaustedError, UnavailableError, PermissionDeniedError,
// UnauthenticatedError, FailedPreconditionError). Every exception carries the
// status code name in `.code`.
//
// The GIL is released around every call that blocks: cache and daemon calls
// (pin releases included), copies, stream and event waits. Buffers passed in
// are held (and their Python objects referenced) for the whole call; an
// (address, nbytes) payload is raw memory the caller keeps valid.
//
// Thread-safety: what the C++ objects promise (Cache, Client, DeviceRuntime
// and KvCopier are safe to call from several threads).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "cuda/device_runtime.h"
#include "kvtier/cache.h"
#include "kvtier/client.h"
#include "kvtier/engine_layout.h"
#include "kvtier/keys.h"
#include "kvtier/namespace.h"

namespace py = pybind11;

namespace kvtier {
namespace {

// ---- errors -----------------------------------------------------------------

struct Errors {
  PyObject* base = nullptr;
  PyObject* not_found = nullptr;
  PyObject* data_loss = nullptr;
  PyObject* invalid_argument = nullptr;
  PyObject* resource_exhausted = nullptr;
  PyObject* unavailable = nullptr;
  PyObject* permission_denied = nullptr;
  PyObject* unauthenticated = nullptr;
  PyObject* failed_precondition = nullptr;
};
Errors g_errors;

PyObject* ErrorClassFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kNotFound:
      return g_errors.not_found;
    case absl::StatusCode::kDataLoss:
      return g_errors.data_loss;
    case absl::StatusCode::kInvalidArgument:
      return g_errors.invalid_argument;
    case absl::StatusCode::kResourceExhausted:
      return g_errors.resource_exhausted;
    case absl::StatusCode::kUnavailable:
      return g_errors.unavailable;
    case absl::StatusCode::kPermissionDenied:
      return g_errors.permission_denied;
    case absl::StatusCode::kUnauthenticated:
      return g_errors.unauthenticated;
    case absl::StatusCode::kFailedPrecondition:
      return g_errors.failed_precondition;
    default:
      return g_errors.base;
  }
}

// Raises the Python exception for a non-OK status. REQUIRES: the GIL is held.
[[noreturn]] void Raise(const absl::Status& status) {
  PyObject* cls = ErrorClassFor(status.code());
  py::object exc = py::reinterpret_steal<py::object>(
      PyObject_CallFunction(cls, "s", std::string(status.message()).c_str()));
  if (!exc) throw py::error_already_set();
  exc.attr("code") = py::str(absl::StatusCodeToString(status.code()));
  PyErr_SetObject(cls, exc.ptr());
  throw py::error_already_set();
}

void Check(const absl::Status& status) {
  if (!status.ok()) Raise(status);
}

template <typename T>
T Unwrap(absl::StatusOr<T> v) {
  if (!v.ok()) Raise(v.status());
  return std::move(*v);
}

PyObject* NewError(py::module_& m, const char* name, PyObject* base, PyObject* extra_base) {
  py::object bases = extra_base == nullptr
                         ? py::reinterpret_borrow<py::object>(base)
                         : py::reinterpret_steal<py::object>(PyTuple_Pack(2, base, extra_base));
  std::string qualified = absl::StrCat("kvtier.", name);
  PyObject* cls = PyErr_NewException(qualified.c_str(), bases.ptr(), nullptr);
  if (cls == nullptr) throw py::error_already_set();
  m.add_object(name, py::reinterpret_borrow<py::object>(cls));
  return cls;
}

// ---- conversions ------------------------------------------------------------

std::vector<TokenId> ToTokens(const py::iterable& tokens, const char* field) {
  std::vector<TokenId> out;
  size_t i = 0;
  for (py::handle h : tokens) {
    long long v = h.cast<long long>();
    if (v < 0 || v > static_cast<long long>(std::numeric_limits<uint32_t>::max())) {
      Raise(absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "] = ", v, ": token ids must fit in 32 bits")));
    }
    out.push_back(static_cast<TokenId>(v));
    ++i;
  }
  return out;
}

std::vector<std::byte> ToBytes(const py::handle& h) {
  std::string s = h.cast<std::string>();  // accepts bytes
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

// A contiguous buffer held for the duration of a call.
struct HeldBuffer {
  py::buffer_info info;
  std::byte* data() const { return static_cast<std::byte*>(info.ptr); }
  size_t size() const { return static_cast<size_t>(info.size * info.itemsize); }
};

HeldBuffer Hold(const py::buffer& b, bool writable, const char* field) {
  py::buffer_info info = b.request(writable);
  for (py::ssize_t d = info.ndim - 1, expect = info.itemsize; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expect) {
      Raise(absl::InvalidArgumentError(absl::StrCat(field, ": buffer must be C-contiguous")));
    }
    expect *= info.shape[d];
  }
  return HeldBuffer{std::move(info)};
}

py::dict TierStatsDict(const TierStats& t) {
  py::dict d;
  d["tier"] = std::string(TierName(t.tier));
  d["capacity_bytes"] = t.capacity_bytes;
  d["used_bytes"] = t.used_bytes;
  d["chunks"] = t.chunks;
  d["pinned_chunks"] = t.pinned_chunks;
  d["hits"] = t.hits;
  d["misses"] = t.misses;
  d["saves"] = t.saves;
  d["save_rejections"] = t.save_rejections;
  d["evictions"] = t.evictions;
  d["bytes_written"] = t.bytes_written;
  d["bytes_read"] = t.bytes_read;
  d["corrupt_chunks"] = t.corrupt_chunks;
  return d;
}

py::dict CacheStatsDict(const CacheStats& s) {
  py::dict d;
  d["lookups"] = s.lookups;
  d["lookup_chunks"] = s.lookup_chunks;
  d["lookup_hits"] = s.lookup_hits;
  py::list tiers;
  for (const TierStats& t : s.tiers) tiers.append(TierStatsDict(t));
  d["tiers"] = tiers;
  d["huge_pages"] = s.huge_pages;
  d["gpu_registered"] = s.gpu_registered;
  d["gpu_registration"] = s.gpu_registration;
  return d;
}

// ---- host buffers -----------------------------------------------------------

// Host memory owned by Python: plain aligned memory, or pinned memory of a
// DeviceRuntime (which `owner` keeps alive). Exposes the buffer protocol
// (one-dimensional, bytes, writable).
class HostBuffer {
 public:
  HostBuffer(void* data, size_t bytes, std::function<void(void*)> free_fn, py::object owner)
      : data_(data), bytes_(bytes), free_(std::move(free_fn)), owner_(std::move(owner)) {}
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer() {
    if (data_ != nullptr) free_(data_);
  }

  static std::unique_ptr<HostBuffer> Allocate(size_t bytes) {
    if (bytes == 0) Raise(absl::InvalidArgumentError("nbytes: must be positive"));
    size_t rounded = (bytes + 255) / 256 * 256;
    void* p = std::aligned_alloc(256, rounded);
    if (p == nullptr) {
      Raise(absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes")));
    }
    std::memset(p, 0, rounded);
    return std::make_unique<HostBuffer>(
        p, bytes, [](void* q) { std::free(q); }, py::none());
  }

  std::byte* data() const { return static_cast<std::byte*>(data_); }
  size_t size() const { return bytes_; }

 private:
  void* data_;
  size_t bytes_;
  std::function<void(void*)> free_;
  py::object owner_;
};

// ---- pins -------------------------------------------------------------------

// Drops one reference to a shared pin; the last one releases it, with the GIL
// released (a daemon pin's release is a call to kvtierd). REQUIRES: the GIL is
// held (it guards every copy of the shared_ptr, so use_count() is exact).
void DropPin(std::shared_ptr<ChunkPin>& pin) {
  // Taken out first: while the GIL is released below, another thread may
  // call release() or payload on the same object and must find it empty.
  std::shared_ptr<ChunkPin> last = std::move(pin);
  if (last == nullptr || last.use_count() != 1) return;
  py::gil_scoped_release release;
  last->Release();
}

// The Python ChunkPin: one handle on a pin it shares with the payload views it
// hands out, so the chunk stays pinned until release() and the last view.
class PyChunkPin {
 public:
  explicit PyChunkPin(ChunkPin pin)
      : num_tokens_(pin.num_tokens()), pin_(std::make_shared<ChunkPin>(std::move(pin))) {}
  PyChunkPin(const PyChunkPin&) = delete;
  PyChunkPin& operator=(const PyChunkPin&) = delete;
  ~PyChunkPin() { DropPin(pin_); }

  bool valid() const { return pin_ != nullptr && pin_->valid(); }
  uint32_t num_tokens() const { return num_tokens_; }
  // Empty once released.
  absl::Span<const std::byte> payload() const {
    return pin_ == nullptr ? absl::Span<const std::byte>() : pin_->payload();
  }
  const std::shared_ptr<ChunkPin>& shared() const { return pin_; }
  // Drops this handle; safe to call twice. REQUIRES: the GIL is held.
  void Release() { DropPin(pin_); }

 private:
  uint32_t num_tokens_;
  std::shared_ptr<ChunkPin> pin_;
};

// The buffer exporter behind ChunkPin.payload: every memoryview of it keeps
// it, and so the pin, alive. `owner` (the Python ChunkPin) keeps the cache
// alive (keep_alive of Cache.pin) until the pin is released.
class PinnedPayload {
 public:
  PinnedPayload(std::shared_ptr<ChunkPin> pin, py::object owner)
      : pin_(std::move(pin)), owner_(std::move(owner)) {}
  PinnedPayload(const PinnedPayload&) = delete;
  PinnedPayload& operator=(const PinnedPayload&) = delete;
  ~PinnedPayload() { DropPin(pin_); }  // before owner_ lets go of the cache

  absl::Span<const std::byte> payload() const { return pin_->payload(); }

 private:
  std::shared_ptr<ChunkPin> pin_;
  py::object owner_;
};

// ---- gather / scatter -------------------------------------------------------

// One chunk of a Python-side transfer list: (block_ids, num_tokens, payload)
// with payload a buffer, or an (address, nbytes) pair for device memory (raw:
// the caller keeps it valid). `payloads` references each payload object, as
// the iterable (a generator, say) may drop it before the copy runs.
struct PyTransfers {
  std::vector<std::vector<int32_t>> block_ids;
  std::vector<py::object> payloads;
  std::vector<HeldBuffer> held;
  std::vector<ChunkTransfer> chunks;
};

PyTransfers ToTransfers(const py::iterable& items, bool writable) {
  PyTransfers t;
  std::vector<std::pair<std::byte*, size_t>> payloads;
  for (py::handle item : items) {
    py::tuple tup = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
    if (tup.size() != 3) {
      Raise(
          absl::InvalidArgumentError("transfers: each entry is (block_ids, num_tokens, payload)"));
    }
    std::vector<int32_t> ids;
    for (py::handle b : tup[0].cast<py::iterable>()) {
      long long v = b.cast<long long>();
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        Raise(absl::InvalidArgumentError(absl::StrCat("block_ids: ", v, " does not fit int32")));
      }
      ids.push_back(static_cast<int32_t>(v));
    }
    t.block_ids.push_back(std::move(ids));
    uint32_t num_tokens = tup[1].cast<uint32_t>();
    py::object payload = tup[2];
    t.payloads.push_back(payload);
    if (py::isinstance<HostBuffer>(payload)) {
      HostBuffer& hb = payload.cast<HostBuffer&>();
      payloads.emplace_back(hb.data(), hb.size());
    } else if (py::isinstance<py::tuple>(payload)) {
      py::tuple p = payload.cast<py::tuple>();
      if (p.size() != 2) {
        Raise(absl::InvalidArgumentError("payload: an (address, nbytes) pair"));
      }
      payloads.emplace_back(reinterpret_cast<std::byte*>(p[0].cast<uintptr_t>()),
                            p[1].cast<size_t>());
    } else {
      t.held.push_back(Hold(payload.cast<py::buffer>(), writable, "payload"));
      payloads.emplace_back(t.held.back().data(), t.held.back().size());
    }
    ChunkTransfer c;
    c.num_tokens = num_tokens;
    t.chunks.push_back(c);
  }
  for (size_t i = 0; i < t.chunks.size(); ++i) {
    t.chunks[i].block_ids = t.block_ids[i];
    t.chunks[i].payload = payloads[i].first;
    t.chunks[i].payload_bytes = payloads[i].second;
  }
  return t;
}

DeviceStream ToStream(uintptr_t stream) { return reinterpret_cast<DeviceStream>(stream); }

// ---- engine layouts ---------------------------------------------------------

std::vector<void*> ToPointers(const std::vector<uintptr_t>& addrs) {
  std::vector<void*> out;
  out.reserve(addrs.size());
  for (uintptr_t a : addrs) out.push_back(reinterpret_cast<void*>(a));
  return out;
}

EngineShape MakeShape(uint32_t num_blocks, uint32_t tokens_per_block, uint32_t num_kv_heads,
                      uint32_t head_size, DType dtype) {
  EngineShape s;
  s.num_blocks = num_blocks;
  s.tokens_per_block = tokens_per_block;
  s.num_kv_heads = num_kv_heads;
  s.head_size = head_size;
  s.dtype = dtype;
  return s;
}

}  // namespace
}  // namespace kvtier

PYBIND11_MODULE(_kvtier, m) {
  using namespace kvtier;  // NOLINT(build/namespaces): binding table
  m.doc() = "kvtier: tiered KV-cache offload (native module; import kvtier instead)";

  g_errors.base = NewError(m, "Error", PyExc_RuntimeError, nullptr);
  g_errors.not_found = NewError(m, "NotFoundError", g_errors.base, PyExc_KeyError);
  g_errors.data_loss = NewError(m, "DataLossError", g_errors.base, nullptr);
  g_errors.invalid_argument = NewError(m, "InvalidArgumentError", g_errors.base, PyExc_ValueError);
  g_errors.resource_exhausted = NewError(m, "ResourceExhaustedError", g_errors.base, nullptr);
  g_errors.unavailable = NewError(m, "UnavailableError", g_errors.base, nullptr);
  g_errors.permission_denied = NewError(m, "PermissionDeniedError", g_errors.base, nullptr);
  g_errors.unauthenticated = NewError(m, "UnauthenticatedError", g_errors.base, nullptr);
  g_errors.failed_precondition = NewError(m, "FailedPreconditionError", g_errors.base, nullptr);

  // ---- keys ------------------------------------------------------------------
  py::class_<BlockKey>(m, "BlockKey", "A 128-bit block or chunk key.")
      .def(py::init<>())
      .def(py::init([](uint64_t hi, uint64_t lo) {
             return BlockKey{hi, lo};
           }),
           py::arg("hi"), py::arg("lo"))
      .def_readwrite("hi", &BlockKey::hi)
      .def_readwrite("lo", &BlockKey::lo)
      .def("is_zero", &BlockKey::IsZero)
      .def("hex", &BlockKey::ToHex, "32 lowercase hex digits, hi first.")
      .def_static(
          "from_hex", [](const std::string& s) { return Unwrap(BlockKey::FromHex(s)); },
          py::arg("hex"))
      .def("__eq__", [](const BlockKey& a, const BlockKey& b) { return a == b; })
      .def("__lt__", [](const BlockKey& a, const BlockKey& b) { return a < b; })
      .def("__hash__", [](const BlockKey& k) { return py::hash(py::make_tuple(k.hi, k.lo)); })
      .def("__repr__", [](const BlockKey& k) { return "BlockKey('" + k.ToHex() + "')"; })
      .def(py::pickle([](const BlockKey& k) { return py::make_tuple(k.hi, k.lo); },
                      [](const py::tuple& t) {
                        return BlockKey{t[0].cast<uint64_t>(), t[1].cast<uint64_t>()};
                      }));

  m.def(
      "hash_block",
      [](uint64_t namespace_id, const BlockKey& parent, const py::iterable& tokens,
         const std::vector<uint64_t>& extra) {
        std::vector<TokenId> t = ToTokens(tokens, "tokens");
        return HashBlock(namespace_id, parent, t, extra);
      },
      py::arg("namespace_id"), py::arg("parent"), py::arg("tokens"),
      py::arg("extra") = std::vector<uint64_t>{}, "Key of one block (see kvtier/keys.h).");
  m.def(
      "key_from_engine_hash",
      [](uint64_t namespace_id, const py::bytes& hash) {
        return KeyFromEngineHash(namespace_id, ToBytes(hash));
      },
      py::arg("namespace_id"), py::arg("engine_hash"),
      "Maps an engine's own block hash (bytes) to a key of the namespace.");

  // ---- dtypes and layouts --------------------------------------------------------
  py::enum_<DType>(m, "DType")
      .value("float16", DType::kFloat16)
      .value("bfloat16", DType::kBFloat16)
      .value("float32", DType::kFloat32)
      .value("float8_e4m3", DType::kFloat8E4M3)
      .value("float8_e5m2", DType::kFloat8E5M2)
      .value("uint8", DType::kUInt8);
  m.def(
      "parse_dtype", [](const std::string& name) { return Unwrap(ParseDType(name)); },
      py::arg("name"), "DType from a name: float16/fp16/half, bfloat16/bf16, float32, ...");
  m.def(
      "dtype_name", [](DType d) { return std::string(DTypeName(d)); }, py::arg("dtype"));
  m.def("dtype_size", &DTypeSize, py::arg("dtype"), "Bytes per element.");

  py::class_<KvLayout>(m, "KvLayout", "The shape of one chunk's KV.")
      .def(py::init([](uint32_t num_layers, uint32_t num_kv_heads, uint32_t head_size,
                       uint32_t kv_tensors, uint32_t tokens_per_block, DType dtype) {
             KvLayout l;
             l.num_layers = num_layers;
             l.num_kv_heads = num_kv_heads;
             l.head_size = head_size;
             l.kv_tensors = kv_tensors;
             l.tokens_per_block = tokens_per_block;
             l.dtype = dtype;
             return l;
           }),
           py::arg("num_layers") = 0, py::arg("num_kv_heads") = 0, py::arg("head_size") = 0,
           py::arg("kv_tensors") = 2, py::arg("tokens_per_block") = 16,
           py::arg("dtype") = DType::kFloat16)
      .def_readwrite("num_layers", &KvLayout::num_layers)
      .def_readwrite("num_kv_heads", &KvLayout::num_kv_heads)
      .def_readwrite("head_size", &KvLayout::head_size)
      .def_readwrite("kv_tensors", &KvLayout::kv_tensors)
      .def_readwrite("tokens_per_block", &KvLayout::tokens_per_block)
      .def_readwrite("dtype", &KvLayout::dtype)
      .def("validate", [](const KvLayout& l) { Check(l.Validate()); })
      .def("bytes_per_token", &KvLayout::BytesPerToken)
      .def("tensor_bytes", &KvLayout::TensorBytes, py::arg("num_tokens"))
      .def("__repr__", [](const KvLayout& l) {
        return absl::StrCat("KvLayout(num_layers=", l.num_layers, ", num_kv_heads=", l.num_kv_heads,
                            ", head_size=", l.head_size, ", kv_tensors=", l.kv_tensors,
                            ", tokens_per_block=", l.tokens_per_block,
                            ", dtype=", std::string(DTypeName(l.dtype)), ")");
      });

  py::class_<NamespaceOptions>(m, "NamespaceOptions")
      .def(py::init<>())
      .def_readwrite("model_id", &NamespaceOptions::model_id)
      .def_readwrite("model_revision", &NamespaceOptions::model_revision)
      .def_readwrite("layout", &NamespaceOptions::layout)
      .def_readwrite("tokens_per_chunk", &NamespaceOptions::tokens_per_chunk)
      .def_readwrite("tp_rank", &NamespaceOptions::tp_rank)
      .def_readwrite("tp_size", &NamespaceOptions::tp_size)
      .def_readwrite("pp_rank", &NamespaceOptions::pp_rank)
      .def_readwrite("pp_size", &NamespaceOptions::pp_size)
      .def_readwrite("cache_salt", &NamespaceOptions::cache_salt)
      .def("validate", [](const NamespaceOptions& o) { Check(o.Validate()); });

  py::class_<ChunkRef>(m, "ChunkRef", "One chunk of a token sequence.")
      .def(py::init([](const BlockKey& key, const BlockKey& parent, uint32_t first_token,
                       uint32_t num_tokens) {
             return ChunkRef{key, parent, first_token, num_tokens};
           }),
           py::arg("key"), py::arg("parent") = BlockKey{}, py::arg("first_token") = 0,
           py::arg("num_tokens") = 0)
      .def_readwrite("key", &ChunkRef::key)
      .def_readwrite("parent", &ChunkRef::parent)
      .def_readwrite("first_token", &ChunkRef::first_token)
      .def_readwrite("num_tokens", &ChunkRef::num_tokens)
      .def("__repr__",
           [](const ChunkRef& c) {
             return absl::StrCat("ChunkRef(key=", c.key.ToHex(), ", first_token=", c.first_token,
                                 ", num_tokens=", c.num_tokens, ")");
           })
      .def(py::pickle(
          [](const ChunkRef& c) {
            return py::make_tuple(c.key.hi, c.key.lo, c.parent.hi, c.parent.lo, c.first_token,
                                  c.num_tokens);
          },
          [](const py::tuple& t) {
            return ChunkRef{BlockKey{t[0].cast<uint64_t>(), t[1].cast<uint64_t>()},
                            BlockKey{t[2].cast<uint64_t>(), t[3].cast<uint64_t>()},
                            t[4].cast<uint32_t>(), t[5].cast<uint32_t>()};
          }));

  py::class_<Namespace>(m, "Namespace",
                        "Everything that makes two KV tensors incompatible; hashes to an id.")
      .def_static(
          "create", [](const NamespaceOptions& o) { return Unwrap(Namespace::Create(o)); },
          py::arg("options"))
      .def_property_readonly("id", &Namespace::id)
      .def_property_readonly("id_hex", &Namespace::IdHex)
      .def_property_readonly("options", &Namespace::options)
      .def_property_readonly("layout", &Namespace::layout)
      .def_property_readonly("tokens_per_chunk", &Namespace::tokens_per_chunk)
      .def_property_readonly("layout_signature", &Namespace::layout_signature)
      .def("payload_bytes", &Namespace::PayloadBytes, py::arg("num_tokens"))
      .def("full_chunk_payload_bytes", &Namespace::FullChunkPayloadBytes)
      .def(
          "block_keys",
          [](const Namespace& ns, const py::iterable& tokens) {
            std::vector<TokenId> t = ToTokens(tokens, "tokens");
            return Unwrap(ns.BlockKeys(t));
          },
          py::arg("tokens"), "Keys of every full block of tokens.")
      .def(
          "chunks",
          [](const Namespace& ns, const py::iterable& tokens, bool include_partial) {
            std::vector<TokenId> t = ToTokens(tokens, "tokens");
            return Unwrap(ns.Chunks(t, include_partial));
          },
          py::arg("tokens"), py::arg("include_partial") = false,
          "Chunks of a token sequence (full chunks only unless include_partial).")
      .def(
          "chunks_from_engine_hashes",
          [](const Namespace& ns, const py::iterable& hashes, bool include_partial) {
            std::vector<std::vector<std::byte>> h;
            for (py::handle x : hashes) h.push_back(ToBytes(x));
            return Unwrap(ns.ChunksFromEngineHashes(h, include_partial));
          },
          py::arg("block_hashes"), py::arg("include_partial") = false,
          "Chunks from the engine's block hashes (bytes, one per engine block).")
      .def_static(
          "keys", [](const std::vector<ChunkRef>& c) { return Namespace::Keys(c); },
          py::arg("chunks"));

  // ---- engine layouts -----------------------------------------------------------------
  py::class_<EngineStrides>(m, "EngineStrides", "Strides in elements, as torch.Tensor.stride().")
      .def(py::init([](int64_t layer, int64_t kv, int64_t block, int64_t token, int64_t head,
                       int64_t dim) { return EngineStrides{layer, kv, block, token, head, dim}; }),
           py::arg("layer") = 0, py::arg("kv") = 0, py::arg("block") = 0, py::arg("token") = 0,
           py::arg("head") = 0, py::arg("dim") = 1)
      .def_readwrite("layer", &EngineStrides::layer)
      .def_readwrite("kv", &EngineStrides::kv)
      .def_readwrite("block", &EngineStrides::block)
      .def_readwrite("token", &EngineStrides::token)
      .def_readwrite("head", &EngineStrides::head)
      .def_readwrite("dim", &EngineStrides::dim);

  py::class_<EngineLayout>(m, "EngineLayout",
                           "Where the engine keeps its paged KV (see kvtier/engine_layout.h). "
                           "Pointers are integers (torch: tensor.data_ptr()).")
      .def(py::init([](const std::vector<uintptr_t>& layer_bases, uintptr_t cross_layer_base,
                       const EngineStrides& strides, DType dtype, uint32_t num_layers,
                       uint32_t num_blocks, uint32_t tokens_per_block, uint32_t num_kv_heads,
                       uint32_t head_size, uint32_t kv_tensors) {
             EngineLayout l;
             l.layer_bases = ToPointers(layer_bases);
             l.cross_layer_base = reinterpret_cast<void*>(cross_layer_base);
             l.strides = strides;
             l.dtype = dtype;
             l.num_layers =
                 num_layers == 0 ? static_cast<uint32_t>(layer_bases.size()) : num_layers;
             l.num_blocks = num_blocks;
             l.tokens_per_block = tokens_per_block;
             l.num_kv_heads = num_kv_heads;
             l.head_size = head_size;
             l.kv_tensors = kv_tensors;
             Check(l.Validate());
             return l;
           }),
           py::arg("layer_bases") = std::vector<uintptr_t>{}, py::arg("cross_layer_base") = 0,
           py::arg("strides") = EngineStrides{}, py::arg("dtype") = DType::kFloat16,
           py::arg("num_layers") = 0, py::arg("num_blocks") = 0, py::arg("tokens_per_block") = 0,
           py::arg("num_kv_heads") = 0, py::arg("head_size") = 0, py::arg("kv_tensors") = 2)
      .def_static(
          "vllm_flash_nhd",
          [](const std::vector<uintptr_t>& bases, uint32_t num_blocks, uint32_t tokens_per_block,
             uint32_t num_kv_heads, uint32_t head_size, DType dtype) {
            EngineLayout l = EngineLayout::VllmFlashNhd(
                ToPointers(bases),
                MakeShape(num_blocks, tokens_per_block, num_kv_heads, head_size, dtype));
            Check(l.Validate());
            return l;
          },
          py::arg("layer_bases"), py::arg("num_blocks"), py::arg("tokens_per_block"),
          py::arg("num_kv_heads"), py::arg("head_size"), py::arg("dtype"),
          "vLLM FlashAttention [2, num_blocks, block_size, num_kv_heads, head_size] per layer.")
      .def_readonly("strides", &EngineLayout::strides)
      .def_readonly("dtype", &EngineLayout::dtype)
      .def_readonly("num_layers", &EngineLayout::num_layers)
      .def_readonly("num_blocks", &EngineLayout::num_blocks)
      .def_readonly("tokens_per_block", &EngineLayout::tokens_per_block)
      .def_readonly("num_kv_heads", &EngineLayout::num_kv_heads)
      .def_readonly("head_size", &EngineLayout::head_size)
      .def_readonly("kv_tensors", &EngineLayout::kv_tensors)
      .def("validate", [](const EngineLayout& l) { Check(l.Validate()); })
      .def(
          "check_compatible",
          [](const EngineLayout& l, const Namespace& ns) { Check(l.CheckCompatible(ns)); },
          py::arg("ns"))
      .def("chunk_layout", &EngineLayout::ChunkLayout,
           "The KvLayout of the chunks this pool fills.")
      .def("payload_bytes", &EngineLayout::PayloadBytes, py::arg("num_tokens"))
      .def("layer_payload_bytes", &EngineLayout::LayerPayloadBytes, py::arg("num_tokens"))
      .def("tensor_bytes", &EngineLayout::TensorBytes, py::arg("num_tokens"));

  // ---- host buffers and the device runtime ------------------------------------------
  py::class_<HostBuffer>(m, "HostBuffer", py::buffer_protocol(),
                         "Host memory (zeroed); the buffer protocol exposes its bytes.")
      .def(py::init([](size_t nbytes) { return HostBuffer::Allocate(nbytes); }), py::arg("nbytes"))
      .def_property_readonly(
          "address", [](const HostBuffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_property_readonly("nbytes", &HostBuffer::size)
      .def("__len__", &HostBuffer::size)
      .def_buffer([](HostBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {1});
      });

  py::class_<KvCopier>(m, "KvCopier",
                       "Moves KV between one engine pool and chunk payloads. A transfer is "
                       "(block_ids, num_tokens, payload) with payload a HostBuffer, any "
                       "writable buffer, or (address, nbytes) for device memory.")
      .def(
          "gather",
          [](KvCopier& c, const py::iterable& transfers, uintptr_t stream) {
            PyTransfers t = ToTransfers(transfers, true);
            absl::Status s;
            {
              py::gil_scoped_release release;
              s = c.Gather(t.chunks, ToStream(stream));
            }
            Check(s);
          },
          py::arg("transfers"), py::arg("stream") = 0)
      .def(
          "scatter",
          [](KvCopier& c, const py::iterable& transfers, uintptr_t stream) {
            PyTransfers t = ToTransfers(transfers, false);
            absl::Status s;
            {
              py::gil_scoped_release release;
              s = c.Scatter(t.chunks, ToStream(stream));
            }
            Check(s);
          },
          py::arg("transfers"), py::arg("stream") = 0)
      .def(
          "gather_layer",
          [](KvCopier& c, uint32_t layer, const py::iterable& transfers, uintptr_t stream) {
            PyTransfers t = ToTransfers(transfers, true);
            absl::Status s;
            {
              py::gil_scoped_release release;
              s = c.GatherLayer(layer, t.chunks, ToStream(stream));
            }
            Check(s);
          },
          py::arg("layer"), py::arg("transfers"), py::arg("stream") = 0)
      .def(
          "scatter_layer",
          [](KvCopier& c, uint32_t layer, const py::iterable& transfers, uintptr_t stream) {
            PyTransfers t = ToTransfers(transfers, false);
            absl::Status s;
            {
              py::gil_scoped_release release;
              s = c.ScatterLayer(layer, t.chunks, ToStream(stream));
            }
            Check(s);
          },
          py::arg("layer"), py::arg("transfers"), py::arg("stream") = 0)
      .def_property_readonly("layout", &KvCopier::layout);

  py::class_<DeviceRuntime>(m, "DeviceRuntime", "CPU or CUDA data path (cuda/device_runtime.h).")
      .def_static(
          "create",
          [](const std::string& kind, int device) {
            DeviceRuntimeOptions o;
            if (kind == "auto") {
              o.kind = DeviceRuntimeOptions::Kind::kAuto;
            } else if (kind == "cpu") {
              o.kind = DeviceRuntimeOptions::Kind::kCpu;
            } else if (kind == "cuda") {
              o.kind = DeviceRuntimeOptions::Kind::kCuda;
            } else {
              Raise(absl::InvalidArgumentError(
                  absl::StrCat("kind: '", kind, "' is not one of auto, cpu, cuda")));
            }
            o.device = device;
            return Unwrap(DeviceRuntime::Create(o));
          },
          py::arg("kind") = "auto", py::arg("device") = 0)
      .def_property_readonly("name", [](const DeviceRuntime& r) { return std::string(r.Name()); })
      .def_property_readonly("is_gpu", &DeviceRuntime::IsGpu)
      .def_property_readonly("device_count", &DeviceRuntime::DeviceCount)
      .def_property_readonly("description", &DeviceRuntime::Description)
      .def(
          "alloc_pinned",
          [](py::object self, size_t nbytes) {
            DeviceRuntime& r = self.cast<DeviceRuntime&>();
            if (nbytes == 0) Raise(absl::InvalidArgumentError("nbytes: must be positive"));
            absl::StatusOr<void*> p;
            {
              py::gil_scoped_release release;
              p = r.AllocPinned(nbytes);
            }
            void* ptr = Unwrap(std::move(p));
            std::memset(ptr, 0, nbytes);
            return std::make_unique<HostBuffer>(
                ptr, nbytes, [&r](void* q) { (void)r.FreePinned(q); }, self);
          },
          py::arg("nbytes"), "Page-locked host memory the device can DMA (plain on CPU).")
      .def(
          "synchronize_stream",
          [](DeviceRuntime& r, uintptr_t stream) {
            absl::Status s;
            {
              py::gil_scoped_release release;
              s = r.SynchronizeStream(ToStream(stream));
            }
            Check(s);
          },
          py::arg("stream") = 0)
      .def(
          "create_kv_copier",
          [](DeviceRuntime& r, const EngineLayout& layout, size_t host_staging_bytes) {
            KvCopierOptions o;
            o.host_staging_bytes = host_staging_bytes;
            return Unwrap(r.CreateKvCopier(layout, o));
          },
          py::arg("layout"), py::arg("host_staging_bytes") = size_t{128} << 20,
          py::keep_alive<0, 1>());

  // ---- the cache ------------------------------------------------------------------
  py::enum_<Tier>(m, "Tier")
      .value("none", Tier::kNone)
      .value("gpu", Tier::kGpu)
      .value("dram", Tier::kDram)
      .value("nvme", Tier::kNvme)
      .value("blob", Tier::kBlob)
      .value("remote", Tier::kRemote);

  py::class_<ChunkLocation>(m, "ChunkLocation")
      .def_readonly("tier", &ChunkLocation::tier)
      .def_readonly("holder", &ChunkLocation::holder);
  py::class_<LookupResult>(m, "LookupResult")
      .def_readonly("matched", &LookupResult::matched,
                    "Number of leading chunks of the chain that are cached.")
      .def_readonly("chunks", &LookupResult::chunks);

  py::class_<CacheOptions>(m, "CacheOptions", "Options of the embedded cache (kvtier/cache.h).")
      .def(py::init<>())
      .def_readwrite("dram_capacity_bytes", &CacheOptions::dram_capacity_bytes)
      .def_readwrite("slab_bytes", &CacheOptions::slab_bytes)
      .def_readwrite("index_shards", &CacheOptions::index_shards)
      .def_readwrite("huge_pages", &CacheOptions::huge_pages)
      .def_readwrite("prefault", &CacheOptions::prefault)
      .def_readwrite("eviction_policy", &CacheOptions::eviction_policy)
      .def_readwrite("register_with_gpu", &CacheOptions::register_with_gpu)
      .def("validate", [](const CacheOptions& o) { Check(o.Validate()); });

  py::class_<PinnedPayload>(m, "_PinnedPayload", py::buffer_protocol(),
                            "The exporter behind ChunkPin.payload (holds the pin).")
      .def_buffer([](PinnedPayload& p) {
        // Read-only: the const is restored by `readonly`.
        return py::buffer_info(const_cast<std::byte*>(p.payload().data()), 1,
                               py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(p.payload().size())}, {1},
                               /*readonly=*/true);
      });

  py::class_<PyChunkPin>(
      m, "ChunkPin",
      "A chunk held in place. `payload` is a read-only memoryview of the cache's "
      "memory (no copy) that holds the pin itself: the chunk stays pinned (neither "
      "evicted nor removed) until release() and until every view of it is gone. "
      "Usable as a context manager (release() on exit).")
      .def_property_readonly("valid", &PyChunkPin::valid, "False once release() was called.")
      .def_property_readonly("num_tokens", &PyChunkPin::num_tokens)
      .def_property_readonly(
          "nbytes", [](const PyChunkPin& p) { return p.payload().size(); }, "0 once released.")
      .def_property_readonly(
          "address",
          [](const PyChunkPin& p) { return reinterpret_cast<uintptr_t>(p.payload().data()); },
          "Address of the payload (0 once released); valid only until release().")
      .def_property_readonly(
          "payload",
          [](const py::object& self) {
            const PyChunkPin& p = self.cast<const PyChunkPin&>();
            if (!p.valid()) Raise(absl::FailedPreconditionError("pin: already released"));
            return py::memoryview(py::cast(std::make_unique<PinnedPayload>(p.shared(), self)));
          },
          "Read-only memoryview of the payload; it (and any slice of it) keeps the chunk "
          "pinned while alive. Raises FailedPreconditionError once released.")
      .def("release", &PyChunkPin::Release,
           "Drops this handle: the chunk is unpinned now, or when the last view taken from "
           "`payload` is garbage-collected. Safe to call twice.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyChunkPin& p, const py::object&, const py::object&, const py::object&) {
        p.Release();
      });

  py::class_<Cache>(m, "Cache", "Save and reuse KV chunks (kvtier/cache.h).")
      .def_static(
          "create",
          [](const CacheOptions& o) {
            absl::StatusOr<std::unique_ptr<Cache>> c;
            {
              py::gil_scoped_release release;
              c = Cache::Create(o);
            }
            return Unwrap(std::move(c));
          },
          py::arg("options") = CacheOptions{}, "The embedded cache (host DRAM, this process).")
      .def(
          "lookup",
          [](Cache& c, const Namespace& ns, const std::vector<BlockKey>& chain) {
            absl::StatusOr<LookupResult> r;
            {
              py::gil_scoped_release release;
              r = c.Lookup(ns, chain);
            }
            return Unwrap(std::move(r));
          },
          py::arg("ns"), py::arg("chain"))
      .def(
          "save",
          [](Cache& c, const Namespace& ns, const ChunkRef& chunk, const py::buffer& payload) {
            HeldBuffer b = Hold(payload, false, "payload");
            absl::Status s;
            {
              py::gil_scoped_release release;
              s = c.Save(ns, chunk, {b.data(), b.size()});
            }
            Check(s);
          },
          py::arg("ns"), py::arg("chunk"), py::arg("payload"))
      .def(
          "load",
          [](Cache& c, const Namespace& ns, const BlockKey& key, const py::buffer& out) {
            HeldBuffer b = Hold(out, true, "out");
            absl::StatusOr<size_t> n;
            {
              py::gil_scoped_release release;
              n = c.Load(ns, key, {b.data(), b.size()});
            }
            return Unwrap(std::move(n));
          },
          py::arg("ns"), py::arg("key"), py::arg("out"),
          "Copies the chunk's payload into `out`; returns its size in bytes.")
      .def(
          "pin",
          [](Cache& c, const Namespace& ns, const BlockKey& key) {
            absl::StatusOr<ChunkPin> p;
            {
              py::gil_scoped_release release;
              p = c.Pin(ns, key);
            }
            return std::make_unique<PyChunkPin>(Unwrap(std::move(p)));
          },
          py::arg("ns"), py::arg("key"), py::keep_alive<0, 1>())
      .def(
          "remove",
          [](Cache& c, const Namespace& ns, const BlockKey& key) {
            absl::StatusOr<size_t> n;
            {
              py::gil_scoped_release release;
              n = c.Remove(ns, key);
            }
            return Unwrap(std::move(n));
          },
          py::arg("ns"), py::arg("key"))
      .def("stats", [](const Cache& c) {
        CacheStats s;
        {
          py::gil_scoped_release release;
          s = c.Stats();
        }
        return CacheStatsDict(s);
      });

  // ---- the kvtierd client -------------------------------------------------------------
  py::class_<ClientOptions>(m, "ClientOptions", "How to reach kvtierd (kvtier/client.h).")
      .def(py::init<>())
      .def_readwrite("socket_path", &ClientOptions::socket_path)
      .def_readwrite("address", &ClientOptions::address)
      .def_readwrite("token", &ClientOptions::token)
      .def_readwrite("token_file", &ClientOptions::token_file)
      .def_readwrite("token_reload_ms", &ClientOptions::token_reload_ms)
      .def_readwrite("shared_memory", &ClientOptions::shared_memory)
      .def_readwrite("prefault_arena", &ClientOptions::prefault_arena)
      .def_readwrite("tls_ca_file", &ClientOptions::tls_ca_file)
      .def_readwrite("tls_cert_file", &ClientOptions::tls_cert_file)
      .def_readwrite("tls_key_file", &ClientOptions::tls_key_file)
      .def_readwrite("tls_server_name", &ClientOptions::tls_server_name)
      .def_readwrite("rpc_timeout_ms", &ClientOptions::rpc_timeout_ms)
      .def_readwrite("max_message_bytes", &ClientOptions::max_message_bytes)
      .def("validate", [](const ClientOptions& o) { Check(o.Validate()); });

  py::class_<CacheConfig>(m, "CacheConfig", "mode 'embedded' or 'daemon' (kvtier/client.h).")
      .def(py::init<>())
      .def_readwrite("mode", &CacheConfig::mode)
      .def_readwrite("embedded", &CacheConfig::embedded)
      .def_readwrite("daemon", &CacheConfig::daemon)
      .def("validate", [](const CacheConfig& c) { Check(c.Validate()); });

  py::class_<Client, Cache>(m, "Client", "The Cache interface served by kvtierd.")
      .def_static(
          "create",
          [](const ClientOptions& o) {
            absl::StatusOr<std::unique_ptr<Client>> c;
            {
              py::gil_scoped_release release;
              c = Client::Create(o);
            }
            return Unwrap(std::move(c));
          },
          py::arg("options"))
      .def("health",
           [](const Client& c) {
             absl::StatusOr<DaemonHealth> h;
             {
               py::gil_scoped_release release;
               h = c.Health();
             }
             DaemonHealth v = Unwrap(std::move(h));
             py::dict d;
             d["serving"] = v.serving;
             d["version"] = v.version;
             d["shm_socket"] = v.shm_socket;
             d["arena_id"] = v.arena_id;
             d["arena_bytes"] = v.arena_bytes;
             return d;
           })
      .def("fetch_stats",
           [](const Client& c) {
             absl::StatusOr<CacheStats> s;
             {
               py::gil_scoped_release release;
               s = c.FetchStats();
             }
             return CacheStatsDict(Unwrap(std::move(s)));
           })
      .def(
          "evict",
          [](Client& c, const Namespace& ns, const std::vector<BlockKey>& keys) {
            absl::StatusOr<uint64_t> n;
            {
              py::gil_scoped_release release;
              n = c.Evict(ns, keys);
            }
            return Unwrap(std::move(n));
          },
          py::arg("ns"), py::arg("keys") = std::vector<BlockKey>{},
          "Admin: removes keys and their descendants (every chunk of ns when empty).")
      .def_property_readonly("using_shared_memory", &Client::using_shared_memory);

  m.def(
      "open_cache",
      [](const CacheConfig& config) {
        absl::StatusOr<std::unique_ptr<Cache>> c;
        {
          py::gil_scoped_release release;
          c = OpenCache(config);
        }
        return Unwrap(std::move(c));
      },
      py::arg("config"), "The embedded cache or a kvtierd client, as config.mode says.");
}
