// The wire format: a fixed 24-byte little-endian envelope, a JSON body and
// zero or more raw tensor frames. Layout (docs/protocol.md has the details):
//
//   u32 magic 'SMMP' | u16 version | u16 type | u64 request id
//   u32 body length  | u32 frame count | body (UTF-8 JSON object)
//   frame: u8 dtype | u8 ndim | u16 name length | u32 zero | i64 dims[ndim]
//          | u64 byte count | name | pad to 8 | bytes
//
// Decode never trusts the input: every length is checked against what is
// left, byte counts against dtype × shape, and each failure has its own
// ProtocolError reason (see DecodeError).
//
// Thread-safety: stateless functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "protocol/messages.h"
#include "protocol/tensor.h"

namespace mms::proto {

constexpr size_t kHeaderSize = 24;
constexpr size_t kMaxDims = 16;
constexpr size_t kMaxFrames = 4096;
constexpr size_t kMaxNameBytes = 65535;  // a frame's name length is a u16
// JSON bodies nested deeper are refused before parsing: nlohmann's copies
// and dumps recurse per level, and an unclosed "[[[[..." costs a heap node
// per byte before the parser finds the end. No message of ours nests past 8.
constexpr size_t kMaxJsonDepth = 64;
// The daemon's cap on a request's JSON body (requests carry a few fields;
// tensors travel in frames). Replies may be larger (SHADOW_SAMPLES).
constexpr size_t kMaxRequestBodyBytes = 1u << 20;

struct Message {
  uint16_t type = 0;
  uint64_t request_id = 0;
  nlohmann::json body = nlohmann::json::object();
  std::vector<Tensor> tensors;
};

// Why a message was refused; sent back as "reason" in the error body.
enum class DecodeError {
  kNone,
  kEmpty,
  kBadMagic,
  kVersion,
  kTruncated,
  kBadJson,
  kBadTensor,
  kTooLarge,
};
const char* DecodeErrorName(DecodeError e);  // "empty", "bad_magic", ...

struct DecodeResult {
  DecodeError error = DecodeError::kNone;
  std::string detail;    // human-readable, for the error reply
  uint16_t type = 0;     // valid when the header was readable
  uint64_t request_id = 0;
  uint16_t version = 0;
  Message message;       // valid when error == kNone
};

// Whether `m` fits the frame format within what Decode accepts: at most
// kMaxFrames tensors, each with at most kMaxDims dims and a name of at most
// kMaxNameBytes. INVALID_ARGUMENT names the tensor and the limit. EncodeInto
// does not check (a dims or name length past its u8/u16 field would be
// truncated into a malformed frame): callers sending untrusted tensors check
// first; Client::Call does.
Status CheckEncodable(const Message& m);

// A caller's name (a tensor's: up to 64 KiB) for an error message: at most
// 60 bytes, cut on a UTF-8 boundary.
std::string ShortName(const std::string& name);

// The body as it goes on the wire (invalid UTF-8 replaced, never throws).
std::string DumpBody(const nlohmann::json& body);
// Size of the whole message given its dumped body.
size_t EncodedSize(const Message& m, const std::string& body);
// Writes exactly EncodedSize(m, body) bytes to `out`.
void EncodeInto(const Message& m, const std::string& body, uint8_t* out);
std::string Encode(const Message& m);

// `owner` keeps `data` alive; tensors alias it when their bytes are 8-aligned
// (no copy), otherwise they are copied. A body over `max_body_bytes` or
// nested deeper than kMaxJsonDepth is kBadJson.
DecodeResult Decode(const uint8_t* data, size_t size, std::shared_ptr<const void> owner,
                    size_t max_bytes, size_t max_body_bytes = SIZE_MAX);

// Builds an error reply for a request.
Message ErrorReply(uint64_t request_id, const Status& st, const std::string& reason = "");
// Turns an error reply back into a Status (code from "code" name).
Status StatusFromErrorReply(const Message& m);

}  // namespace mms::proto
