#include "protocol/codec.h"

#include <cstring>

namespace mms::proto {
namespace {

template <class T>
void Put(uint8_t*& p, T v) {
  std::memcpy(p, &v, sizeof v);  // x86-64 and aarch64 Linux are little-endian
  p += sizeof v;
}

template <class T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

size_t Pad8(size_t n) { return (8 - (n & 7)) & 7; }

size_t FrameHeaderSize(const Tensor& t) { return 8 + 8 * t.shape.size() + 8 + t.name.size(); }


// Whether the JSON text opens more than `limit` arrays or objects at once
// (brackets inside strings do not count). One pass, no allocation.
bool JsonDeeperThan(const char* p, size_t n, size_t limit) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < n; ++i) {
    char c = p[i];
    if (in_string) {
      if (c == '\\') ++i;  // skips the escaped character
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

}  // namespace

const char* DecodeErrorName(DecodeError e) {
  switch (e) {
    case DecodeError::kNone: return "none";
    case DecodeError::kEmpty: return "empty";
    case DecodeError::kBadMagic: return "bad_magic";
    case DecodeError::kVersion: return "version";
    case DecodeError::kTruncated: return "truncated";
    case DecodeError::kBadJson: return "bad_json";
    case DecodeError::kBadTensor: return "bad_tensor";
    case DecodeError::kTooLarge: return "too_large";
  }
  return "unknown";
}

Status CheckEncodable(const Message& m) {
  if (m.tensors.size() > kMaxFrames)
    return InvalidArgument(std::to_string(m.tensors.size()) + " tensors in one message; the protocol allows " +
                           std::to_string(kMaxFrames) + " (send fewer inputs)");
  for (const auto& t : m.tensors) {
    if (t.shape.size() > kMaxDims)
      return InvalidArgument("tensor '" + ShortName(t.name) + "' has " +
                             std::to_string(t.shape.size()) + " dimensions; the protocol allows " +
                             std::to_string(kMaxDims) + " (reshape it)");
    if (t.name.size() > kMaxNameBytes)
      return InvalidArgument("tensor name '" + ShortName(t.name) + "' is " + std::to_string(t.name.size()) +
                             " bytes; the protocol allows " + std::to_string(kMaxNameBytes) +
                             " (use the argument name of forward())");
  }
  return Status::Ok();
}

std::string DumpBody(const nlohmann::json& body) {
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

size_t EncodedSize(const Message& m, const std::string& body) {
  size_t n = kHeaderSize + body.size();
  for (const auto& t : m.tensors) {
    n += FrameHeaderSize(t);
    n += Pad8(n);
    n += t.nbytes;
  }
  return n;
}

void EncodeInto(const Message& m, const std::string& body, uint8_t* out) {
  uint8_t* p = out;
  Put<uint32_t>(p, kMagic);
  Put<uint16_t>(p, kVersion);
  Put<uint16_t>(p, m.type);
  Put<uint64_t>(p, m.request_id);
  Put<uint32_t>(p, static_cast<uint32_t>(body.size()));
  Put<uint32_t>(p, static_cast<uint32_t>(m.tensors.size()));
  std::memcpy(p, body.data(), body.size());
  p += body.size();
  for (const auto& t : m.tensors) {
    Put<uint8_t>(p, static_cast<uint8_t>(t.dtype));
    Put<uint8_t>(p, static_cast<uint8_t>(t.shape.size()));
    Put<uint16_t>(p, static_cast<uint16_t>(t.name.size()));
    Put<uint32_t>(p, 0);
    for (int64_t d : t.shape) Put<int64_t>(p, d);
    Put<uint64_t>(p, static_cast<uint64_t>(t.nbytes));
    std::memcpy(p, t.name.data(), t.name.size());
    p += t.name.size();
    size_t pad = Pad8(static_cast<size_t>(p - out));
    std::memset(p, 0, pad);
    p += pad;
    if (t.nbytes) std::memcpy(p, t.data.get(), t.nbytes);
    p += t.nbytes;
  }
}

std::string Encode(const Message& m) {
  std::string body = DumpBody(m.body);
  std::string out(EncodedSize(m, body), '\0');
  EncodeInto(m, body, reinterpret_cast<uint8_t*>(out.data()));
  return out;
}

std::string ShortName(const std::string& name) {
  if (name.size() <= 60) return name;
  size_t n = 57;
  while (n > 0 && (static_cast<unsigned char>(name[n]) & 0xC0) == 0x80) --n;
  return name.substr(0, n) + "...";
}

DecodeResult Decode(const uint8_t* data, size_t size, std::shared_ptr<const void> owner,
                    size_t max_bytes, size_t max_body_bytes) {
  DecodeResult r;
  auto fail = [&](DecodeError e, std::string detail) {
    r.error = e;
    r.detail = std::move(detail);
    return r;
  };
  if (size == 0) return fail(DecodeError::kEmpty, "empty message");
  if (size > max_bytes)
    return fail(DecodeError::kTooLarge, "message of " + std::to_string(size) +
                                            " bytes is over the daemon's cap of " +
                                            std::to_string(max_bytes) +
                                            " bytes ([daemon] max_message_bytes)");
  if (size < 4) return fail(DecodeError::kTruncated, "message shorter than the 24-byte envelope");
  if (Get<uint32_t>(data) != kMagic) return fail(DecodeError::kBadMagic, "not an mms message (wrong magic)");
  if (size < kHeaderSize) return fail(DecodeError::kTruncated, "message shorter than the 24-byte envelope");
  r.version = Get<uint16_t>(data + 4);
  r.type = Get<uint16_t>(data + 6);
  r.request_id = Get<uint64_t>(data + 8);
  if (r.version != kVersion)
    return fail(DecodeError::kVersion, "protocol version " + std::to_string(r.version) +
                                           " is not supported; this side speaks version " +
                                           std::to_string(kVersion) +
                                           " (upgrade mms and mmsd together)");
  uint32_t body_len = Get<uint32_t>(data + 16);
  uint32_t frames = Get<uint32_t>(data + 20);
  size_t off = kHeaderSize;
  if (body_len > size - off)
    return fail(DecodeError::kTruncated, "body length " + std::to_string(body_len) + " runs past the end");
  if (frames > kMaxFrames)
    return fail(DecodeError::kBadTensor, "too many tensor frames (" + std::to_string(frames) + ")");
  Message& m = r.message;
  m.type = r.type;
  m.request_id = r.request_id;
  if (body_len > max_body_bytes)
    return fail(DecodeError::kBadJson, "JSON body of " + std::to_string(body_len) + " bytes is over the cap of " +
                                           std::to_string(max_body_bytes) + " (tensors go in frames, not the body)");
  if (body_len > 0 && JsonDeeperThan(reinterpret_cast<const char*>(data + off), body_len, kMaxJsonDepth))
    return fail(DecodeError::kBadJson, "JSON body nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  if (body_len > 0) {
    try {
      m.body = nlohmann::json::parse(reinterpret_cast<const char*>(data + off),
                                     reinterpret_cast<const char*>(data + off + body_len));
    } catch (const std::exception& e) {
      return fail(DecodeError::kBadJson, std::string("invalid JSON body: ") + e.what());
    }
    if (!m.body.is_object()) return fail(DecodeError::kBadJson, "JSON body must be an object");
  }
  off += body_len;
  for (uint32_t i = 0; i < frames; ++i) {
    if (size - off < 16) return fail(DecodeError::kTruncated, "tensor frame " + std::to_string(i) + " is truncated");
    uint8_t dtype = data[off];
    uint8_t ndim = data[off + 1];
    uint16_t name_len = Get<uint16_t>(data + off + 2);
    off += 8;
    if (!IsValidDType(dtype))
      return fail(DecodeError::kBadTensor, "tensor frame " + std::to_string(i) + ": unknown dtype " + std::to_string(dtype));
    if (ndim > kMaxDims)
      return fail(DecodeError::kBadTensor, "tensor frame " + std::to_string(i) + ": " + std::to_string(ndim) + " dims (max " + std::to_string(kMaxDims) + ")");
    if (size - off < 8ull * ndim + 8 + name_len)
      return fail(DecodeError::kTruncated, "tensor frame " + std::to_string(i) + " is truncated");
    Tensor t;
    t.dtype = static_cast<DType>(dtype);
    for (int d = 0; d < ndim; ++d) t.shape.push_back(Get<int64_t>(data + off + 8 * d));
    off += 8ull * ndim;
    uint64_t nbytes = Get<uint64_t>(data + off);
    off += 8;
    t.name.assign(reinterpret_cast<const char*>(data + off), name_len);
    off += name_len;
    off += Pad8(off);
    int64_t numel = ShapeNumel(t.shape);
    if (numel < 0)
      return fail(DecodeError::kBadTensor, "tensor '" + ShortName(t.name) + "': invalid shape " + ShapeString(t.shape));
    if (static_cast<uint64_t>(numel) > UINT64_MAX / DTypeSize(t.dtype) ||
        static_cast<uint64_t>(numel) * DTypeSize(t.dtype) != nbytes)
      return fail(DecodeError::kBadTensor, "tensor '" + ShortName(t.name) + "': " + std::to_string(nbytes) +
                                               " bytes do not match " + t.Describe() + " (" +
                                               std::to_string(static_cast<uint64_t>(numel) * DTypeSize(t.dtype)) +
                                               " bytes expected)");
    // A tensor with elements cannot have a dim past the cap (each element
    // takes a byte at least); one without (a dim of 0) sends any other dim
    // for free, and a model or the LoRA path allocating per row would then
    // be asked for [6e9, 0]'s 6e9 rows (tens of GB) by a 100-byte message.
    if (numel == 0)
      for (int64_t dim : t.shape)
        if (static_cast<uint64_t>(dim) > max_bytes)
          return fail(DecodeError::kBadTensor, "tensor '" + ShortName(t.name) + "': shape " + ShapeString(t.shape) +
                                                   " has no elements but a dim of " + std::to_string(dim) +
                                                   ", more than a tensor with elements could have under the cap of " +
                                                   std::to_string(max_bytes) +
                                                   " bytes ([daemon] max_message_bytes); send at most that many rows");
    if (off > size || nbytes > size - off)
      return fail(DecodeError::kTruncated, "tensor '" + ShortName(t.name) + "': data runs past the end of the message");
    t.nbytes = static_cast<size_t>(nbytes);
    const uint8_t* p = data + off;
    if (reinterpret_cast<uintptr_t>(p) % 8 == 0 && owner) {
      t.data = std::shared_ptr<const uint8_t>(owner, p);  // alias: no copy
    } else {
      Tensor copy = Tensor::Alloc(t.name, t.dtype, t.shape);
      if (t.nbytes) std::memcpy(copy.mutable_data(), p, t.nbytes);
      t.data = copy.data;
    }
    off += t.nbytes;
    if (Status st = CheckBoolBytes(t, "tensor frame " + std::to_string(i)); !st.ok())
      return fail(DecodeError::kBadTensor, st.message());
    m.tensors.push_back(std::move(t));
  }
  if (off != size)
    return fail(DecodeError::kTruncated, std::to_string(size - off) + " unexpected bytes after the last frame");
  return r;
}

Message ErrorReply(uint64_t request_id, const Status& st, const std::string& reason) {
  Message m;
  m.type = kError;
  m.request_id = request_id;
  m.body = {{"code", CodeName(st.code())}, {"message", st.message()}};
  if (!reason.empty()) m.body["reason"] = reason;
  return m;
}

Status StatusFromErrorReply(const Message& m) {
  std::string code = m.body.value("code", "INTERNAL");
  std::string msg = m.body.value("message", "unknown error");
  return Status(CodeFromName(code), msg);
}

}  // namespace mms::proto
