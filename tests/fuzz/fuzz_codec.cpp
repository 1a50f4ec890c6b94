// libFuzzer target: the IPC request decoder, as mmsd runs it on every message
// received from the socket (daemon/server.cpp Server::Dispatch), before any
// handler sees it:
//   proto::Decode(data, len, owner, max_message_bytes, kMaxRequestBodyBytes)
//   on error: ErrorReply(detail) -> CheckEncodable -> DumpBody -> EncodeInto
//   on success: MsgTypeName / IsKnownRequestType, and the message's tensors.
// Properties checked besides the sanitizers:
//   * Decode of the same bytes at an 8-aligned address (tensors alias the
//     buffer) and at an odd address (tensors copied) agree;
//   * a decoded message is encodable (CheckEncodable) and Decode(Encode(m))
//     gives back m (body, type, id, every tensor's name, dtype, shape, bytes);
//   * every error reply the daemon would send encodes and decodes as a
//     client reads it (StatusFromErrorReply).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "protocol/codec.h"
#include "protocol/input_spec.h"
#include "protocol/messages.h"
#include "protocol/tensor.h"
#include "protocol/tensor_file.h"

using namespace mms;
using namespace mms::proto;

namespace {
constexpr size_t kDaemonMaxMessageBytes = 256u << 20;  // [daemon] max_message_bytes default

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "PROPERTY VIOLATED: %s\n", what);
  std::abort();
}

bool SameTensor(const Tensor& a, const Tensor& b) {
  return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.nbytes == b.nbytes &&
         (a.nbytes == 0 || std::memcmp(a.data.get(), b.data.get(), a.nbytes) == 0);
}

bool SameMessage(const Message& a, const Message& b) {
  if (a.type != b.type || a.request_id != b.request_id || a.body != b.body) return false;
  if (a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i)
    if (!SameTensor(a.tensors[i], b.tensors[i])) return false;
  return true;
}

DecodeResult DecodeAt(const uint8_t* data, size_t size, size_t misalign) {
  // As nng hands mmsd a message: a heap buffer that owns the bytes.
  std::shared_ptr<uint8_t> buf(static_cast<uint8_t*>(std::malloc(size + 8)), std::free);
  uint8_t* p = buf.get() + misalign;
  if (size) std::memcpy(p, data, size);
  return Decode(p, size, std::shared_ptr<const void>(buf, p), kDaemonMaxMessageBytes, kMaxRequestBodyBytes);
}

// What a client does with the daemon's reply bytes.
void ClientReads(const std::string& wire) {
  auto owner = std::make_shared<std::string>(wire);
  DecodeResult r = Decode(reinterpret_cast<const uint8_t*>(owner->data()), owner->size(),
                          std::shared_ptr<const void>(owner, owner->data()), SIZE_MAX);
  if (r.error != DecodeError::kNone) Fail("a reply mmsd encodes does not decode");
  if (r.message.type == kError) (void)StatusFromErrorReply(r.message);
}

void SendReply(const Message& m) {  // Server::Reply
  if (!CheckEncodable(m).ok()) return;
  std::string body = DumpBody(m.body);
  std::string out(EncodedSize(m, body), '\0');
  EncodeInto(m, body, reinterpret_cast<uint8_t*>(out.data()));
  ClientReads(out);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  DecodeResult d = DecodeAt(data, size, 0);
  DecodeResult d2 = DecodeAt(data, size, 1);
  if (d.error != d2.error || d.detail != d2.detail) Fail("aligned and unaligned decode disagree");
  (void)DecodeErrorName(d.error);
  if (d.error != DecodeError::kNone) {
    Status st = d.error == DecodeError::kTooLarge ? InvalidArgument(d.detail) : ProtocolError(d.detail);
    SendReply(ErrorReply(d.request_id, st, DecodeErrorName(d.error)));
    return 0;
  }
  if (!SameMessage(d.message, d2.message)) Fail("aligned and unaligned decode give different messages");
  (void)MsgTypeName(d.type);
  (void)IsKnownRequestType(d.type);
  const Message& m = d.message;
  if (!CheckEncodable(m).ok()) Fail("a decoded message is not encodable");
  // Re-encode and decode: the same message.
  std::string wire = Encode(m);
  auto owner = std::make_shared<std::string>(wire);
  DecodeResult again = Decode(reinterpret_cast<const uint8_t*>(owner->data()), owner->size(),
                              std::shared_ptr<const void>(owner, owner->data()), SIZE_MAX);
  if (again.error != DecodeError::kNone) Fail("Encode(Decode(x)) does not decode");
  if (!SameMessage(m, again.message)) Fail("Decode(Encode(m)) != m");
  // What the predict path does with the tensors before libtorch: match them
  // against the model's inputs, and read them as numbers (shadow compare).
  std::vector<InputSpec> specs;
  for (const auto& t : m.tensors) {
    InputSpec s;
    s.name = t.name;
    s.dtype = t.dtype;
    s.shape = t.shape;
    specs.push_back(std::move(s));
    (void)TensorToDoubles(t);
    (void)t.Describe();
  }
  auto matched = MatchInputs(specs, m.tensors, "m:1");
  (void)matched;
  std::vector<InputSpec> fixed(1);
  fixed[0].name = "x";
  fixed[0].dtype = DType::kFloat32;
  fixed[0].shape = std::vector<int64_t>{1, 4};
  (void)MatchInputs(fixed, m.tensors, "tiny:1");
  // A handler's reply echoes the request.
  Message reply = m;
  reply.type = static_cast<uint16_t>(m.type | kReplyBit);
  SendReply(reply);
  return 0;
}
