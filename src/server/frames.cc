#include "src/server/frames.h"

#include <cstring>
#include <string>

namespace kvtier::wire {
namespace {

void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// Field tags (field number << 3 | wire type 2).
constexpr uint8_t kTag1 = (1 << 3) | 2;
constexpr uint8_t kTag2 = (2 << 3) | 2;
constexpr uint8_t kTag3 = (3 << 3) | 2;

void PutMessage(std::string& out, uint8_t tag, const google::protobuf::MessageLite& m) {
  out.push_back(static_cast<char>(tag));
  PutVarint(out, m.ByteSizeLong());
  m.AppendToString(&out);
}

// Keeps the owner of sent bytes alive until gRPC drops the slice.
struct OwnerBox {
  std::shared_ptr<const void> owner;
};
void DropOwner(void* box) { delete static_cast<OwnerBox*>(box); }

grpc::Status Encode(const std::string& header, absl::Span<const std::byte> data,
                    const std::shared_ptr<const void>& owner, grpc::ByteBuffer* out) {
  grpc::Slice slices[2];
  size_t n = 0;
  slices[n++] = grpc::Slice(header);
  if (!data.empty()) {
    void* p = const_cast<std::byte*>(data.data());
    if (owner != nullptr) {
      slices[n++] = grpc::Slice(p, data.size(), DropOwner, new OwnerBox{owner});
    } else {
      slices[n++] = grpc::Slice(p, data.size(), grpc::Slice::STATIC_SLICE);
    }
  }
  grpc::ByteBuffer bb(slices, n);
  out->Swap(&bb);
  return grpc::Status::OK;
}

// Reads protobuf wire data spread over slices.
class Reader {
 public:
  explicit Reader(grpc::ByteBuffer* bb) { ok_ = bb->Dump(&slices_).ok(); }
  bool ok() const { return ok_; }
  bool AtEnd() {
    while (idx_ < slices_.size() && off_ == slices_[idx_].size()) {
      ++idx_;
      off_ = 0;
    }
    return idx_ >= slices_.size();
  }
  bool Byte(uint8_t* b) {
    if (AtEnd()) return false;
    *b = slices_[idx_].begin()[off_++];
    return true;
  }
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!Byte(&b)) return false;
      *v |= uint64_t(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  // A field tag as protobuf's parser reads one: at most 5 bytes, bits above
  // 32 dropped; field number 0 refused.
  bool Tag(uint64_t* tag) {
    uint32_t v = 0;
    for (int i = 0; i < 5; ++i) {
      uint8_t b;
      if (!Byte(&b)) return false;
      v |= static_cast<uint32_t>(b & 0x7F) << (7 * i);  // the 5th byte's top bits fall off
      if ((b & 0x80) == 0) {
        *tag = v;
        return (v >> 3) != 0;
      }
    }
    return false;
  }
  // Calls fn(slice, offset, length) for each piece of the next n bytes.
  template <typename Fn>
  bool Take(uint64_t n, Fn fn) {
    while (n > 0) {
      if (AtEnd()) return false;
      const size_t avail = slices_[idx_].size() - off_;
      const size_t k = std::min<uint64_t>(avail, n);
      fn(slices_[idx_], off_, k);
      off_ += k;
      n -= k;
    }
    return true;
  }
  bool String(uint64_t n, std::string* out) {
    out->clear();
    return Take(n, [&](const grpc::Slice& s, size_t off, size_t k) {
      out->append(reinterpret_cast<const char*>(s.begin()) + off, k);
    });
  }
  bool Skip(uint64_t wire_type) {
    uint64_t v;
    switch (wire_type) {
      case 0:
        return Varint(&v);
      case 1:
        return Take(8, [](const grpc::Slice&, size_t, size_t) {});
      case 2:
        return Varint(&v) && Take(v, [](const grpc::Slice&, size_t, size_t) {});
      case 5:
        return Take(4, [](const grpc::Slice&, size_t, size_t) {});
      default:
        return false;
    }
  }

 private:
  std::vector<grpc::Slice> slices_;
  size_t idx_ = 0;
  size_t off_ = 0;
  bool ok_ = false;
};

grpc::Status Malformed(const char* what) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      std::string("malformed ") + what + " message");
}

}  // namespace

void ReceivedBytes::CopyTo(std::byte* dst) const {
  for (const Piece& p : pieces_) {
    std::memcpy(dst, p.slice.begin() + p.offset, p.length);
    dst += p.length;
  }
}

void ReceivedBytes::Clear() {
  pieces_.clear();
  size_ = 0;
}

void ReceivedBytes::Append(const grpc::Slice& slice, size_t offset, size_t length) {
  pieces_.push_back(Piece{slice, offset, length});
  size_ += length;
}

void LoadFrame::Clear() {
  has_chunk = false;
  chunk.Clear();
  data = {};
  data_owner.reset();
  received.Clear();
}

void SaveFrame::Clear() {
  has_namespace = false;
  ns.Clear();
  has_chunk = false;
  chunk.Clear();
  data = {};
  received.Clear();
}

grpc::Status SerializeFrame(const LoadFrame& frame, grpc::ByteBuffer* out) {
  std::string header;
  if (frame.has_chunk) PutMessage(header, kTag1, frame.chunk);
  if (!frame.data.empty()) {
    header.push_back(static_cast<char>(kTag2));
    PutVarint(header, frame.data.size());
  }
  return Encode(header, frame.data, frame.data_owner, out);
}

grpc::Status SerializeFrame(const SaveFrame& frame, grpc::ByteBuffer* out) {
  std::string header;
  if (frame.has_namespace) PutMessage(header, kTag1, frame.ns);
  if (frame.has_chunk) PutMessage(header, kTag2, frame.chunk);
  if (!frame.data.empty()) {
    header.push_back(static_cast<char>(kTag3));
    PutVarint(header, frame.data.size());
  }
  return Encode(header, frame.data, nullptr, out);
}

grpc::Status DeserializeFrame(grpc::ByteBuffer* in, LoadFrame* frame) {
  frame->Clear();
  Reader r(in);
  // The deserializer owns `in`: gRPC releases it after this call without
  // destroying it. The reader (and, for the payload, the frame) hold their
  // own references to its slices, so the buffer goes now; kept, every
  // received byte would stay allocated.
  in->Clear();
  if (!r.ok()) return Malformed("LoadResponse");
  std::string bytes;
  while (!r.AtEnd()) {
    uint64_t tag, len;
    if (!r.Tag(&tag)) return Malformed("LoadResponse");
    if (tag == kTag1) {
      if (!r.Varint(&len) || !r.String(len, &bytes) || !frame->chunk.MergeFromString(bytes)) {
        return Malformed("LoadResponse");
      }
      frame->has_chunk = true;
    } else if (tag == kTag2) {
      frame->received.Clear();  // the last occurrence wins, as in protobuf
      if (!r.Varint(&len) || !r.Take(len, [&](const grpc::Slice& s, size_t off, size_t k) {
            frame->received.Append(s, off, k);
          })) {
        return Malformed("LoadResponse");
      }
    } else if (!r.Skip(tag & 7)) {
      return Malformed("LoadResponse");
    }
  }
  return grpc::Status::OK;
}

grpc::Status DeserializeFrame(grpc::ByteBuffer* in, SaveFrame* frame) {
  frame->Clear();
  Reader r(in);
  // The deserializer owns `in`: gRPC releases it after this call without
  // destroying it. The reader (and, for the payload, the frame) hold their
  // own references to its slices, so the buffer goes now; kept, every
  // received byte would stay allocated.
  in->Clear();
  if (!r.ok()) return Malformed("SaveRequest");
  std::string bytes;
  while (!r.AtEnd()) {
    uint64_t tag, len;
    if (!r.Tag(&tag)) return Malformed("SaveRequest");
    if (tag == kTag1 || tag == kTag2) {
      if (!r.Varint(&len) || !r.String(len, &bytes)) return Malformed("SaveRequest");
      const bool ok =
          tag == kTag1 ? frame->ns.MergeFromString(bytes) : frame->chunk.MergeFromString(bytes);
      if (!ok) return Malformed("SaveRequest");
      (tag == kTag1 ? frame->has_namespace : frame->has_chunk) = true;
    } else if (tag == kTag3) {
      frame->received.Clear();
      if (!r.Varint(&len) || !r.Take(len, [&](const grpc::Slice& s, size_t off, size_t k) {
            frame->received.Append(s, off, k);
          })) {
        return Malformed("SaveRequest");
      }
    } else if (!r.Skip(tag & 7)) {
      return Malformed("SaveRequest");
    }
  }
  return grpc::Status::OK;
}

}  // namespace kvtier::wire
