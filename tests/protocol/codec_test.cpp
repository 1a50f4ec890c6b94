#include <doctest/doctest.h>

#include <cstring>

#include "protocol/codec.h"

using namespace mms;
using namespace mms::proto;

namespace {
Tensor Floats(const std::string& name, std::vector<int64_t> shape, float start) {
  Tensor t = Tensor::Alloc(name, DType::kFloat32, std::move(shape));
  auto* p = reinterpret_cast<float*>(t.mutable_data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = start + static_cast<float>(i);
  return t;
}

DecodeResult DecodeStr(const std::string& s, size_t cap = 1 << 20) {
  auto buf = std::make_shared<std::string>(s);
  return Decode(reinterpret_cast<const uint8_t*>(buf->data()), buf->size(), buf, cap);
}
}  // namespace

TEST_CASE("a message with tensors round-trips bit for bit") {
  Message m;
  m.type = kPredict;
  m.request_id = 0x1122334455667788ull;
  m.body = {{"model", "rec:3"}, {"user", "用户-7"}};
  m.tensors.push_back(Floats("x", {2, 3}, 1.5f));
  Tensor ids = Tensor::Alloc("ids_with_a_longer_name", DType::kInt64, {5});
  for (int i = 0; i < 5; ++i) reinterpret_cast<int64_t*>(ids.mutable_data())[i] = i * 1000;
  m.tensors.push_back(ids);
  m.tensors.push_back(Tensor::Alloc("empty", DType::kBool, {0, 4}));

  std::string wire = Encode(m);
  DecodeResult d = DecodeStr(wire);
  REQUIRE(d.error == DecodeError::kNone);
  CHECK(d.message.type == kPredict);
  CHECK(d.message.request_id == m.request_id);
  CHECK(d.message.body == m.body);
  REQUIRE(d.message.tensors.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    const Tensor& a = m.tensors[i];
    const Tensor& b = d.message.tensors[i];
    CHECK(a.name == b.name);
    CHECK(a.dtype == b.dtype);
    CHECK(a.shape == b.shape);
    REQUIRE(a.nbytes == b.nbytes);
    if (a.nbytes) CHECK(std::memcmp(a.data.get(), b.data.get(), a.nbytes) == 0);
  }
}

TEST_CASE("every malformed message gets its own reason") {
  Message m;
  m.type = kPing;
  m.request_id = 7;
  m.tensors.push_back(Floats("x", {4}, 0));
  const std::string good = Encode(m);

  SUBCASE("empty") { CHECK(DecodeStr("").error == DecodeError::kEmpty); }
  SUBCASE("wrong magic") {
    std::string s = good;
    s[0] = 'X';
    CHECK(DecodeStr(s).error == DecodeError::kBadMagic);
  }
  SUBCASE("shorter than the envelope") { CHECK(DecodeStr(good.substr(0, 10)).error == DecodeError::kTruncated); }
  SUBCASE("other protocol version") {
    std::string s = good;
    uint16_t v = 2;
    std::memcpy(&s[4], &v, 2);
    DecodeResult d = DecodeStr(s);
    CHECK(d.error == DecodeError::kVersion);
    CHECK(d.request_id == 7);  // still readable for the error reply
    CHECK(d.detail.find("version 2") != std::string::npos);
  }
  SUBCASE("truncated tensor frame") {
    CHECK(DecodeStr(good.substr(0, good.size() - 3)).error == DecodeError::kTruncated);
  }
  SUBCASE("trailing garbage") { CHECK(DecodeStr(good + "zz").error == DecodeError::kTruncated); }
  SUBCASE("invalid JSON") {
    Message j;
    j.type = kPing;
    std::string s = Encode(j);
    std::string body = "{not json";
    uint32_t len = static_cast<uint32_t>(body.size());
    std::memcpy(&s[16], &len, 4);
    s += body;
    CHECK(DecodeStr(s).error == DecodeError::kBadJson);
  }
  SUBCASE("JSON that is not an object") {
    Message j;
    j.type = kPing;
    j.body = nlohmann::json::array({1, 2});
    CHECK(DecodeStr(Encode(j)).error == DecodeError::kBadJson);
  }
  SUBCASE("a tensor of no elements with a dim past the cap") {
    // [6e9, 0]: no bytes to send, and 6e9 rows for a model (or the LoRA
    // path's per-row index) to allocate for.
    Message z;
    z.type = kPing;
    Tensor t = Floats("x", {0}, 0);
    t.shape = {6'000'000'000, 0};
    z.tensors.push_back(t);
    DecodeResult d = DecodeStr(Encode(z));
    CHECK(d.error == DecodeError::kBadTensor);
    CHECK(d.detail.find("has no elements but a dim of 6000000000") != std::string::npos);
    // Up to the cap is what a tensor with elements could have: accepted, as are no rows.
    z.tensors[0].shape = {1 << 20, 0};
    CHECK(DecodeStr(Encode(z)).error == DecodeError::kNone);
    z.tensors[0].shape = {0, 4};
    CHECK(DecodeStr(Encode(z)).error == DecodeError::kNone);
  }
  SUBCASE("byte count that does not match dtype and shape") {
    Tensor bad = Floats("x", {4}, 0);
    bad.shape = {5};  // 20 bytes expected, 16 sent
    Message b;
    b.type = kPing;
    b.tensors.push_back(bad);
    DecodeResult d = DecodeStr(Encode(b));
    CHECK(d.error == DecodeError::kBadTensor);
    CHECK(d.detail.find("float32[5]") != std::string::npos);
    // A 60 KiB name is not echoed back in full (error replies and log lines).
    b.tensors[0].name = std::string(60000, 'n');
    DecodeResult long_name = DecodeStr(Encode(b));
    CHECK(long_name.error == DecodeError::kBadTensor);
    CHECK(long_name.detail.size() < 200);
  }
  SUBCASE("unknown dtype") {
    std::string s = good;
    size_t frame = kHeaderSize + 2;  // body "{}"
    s[frame] = 99;
    CHECK(DecodeStr(s).error == DecodeError::kBadTensor);
  }
  SUBCASE("negative dimension") {
    Tensor bad = Floats("x", {4}, 0);
    bad.shape = {-4};
    Message b;
    b.type = kPing;
    b.tensors.push_back(bad);
    CHECK(DecodeStr(Encode(b)).error == DecodeError::kBadTensor);
  }
  SUBCASE("over the size cap") {
    DecodeResult d = DecodeStr(good, good.size() - 1);
    CHECK(d.error == DecodeError::kTooLarge);
  }
  // A body with `body` as its raw JSON text.
  auto with_body = [](const std::string& body) {
    Message j;
    j.type = kPing;
    std::string s = Encode(j).substr(0, kHeaderSize);  // the envelope, without its "{}"
    uint32_t len = static_cast<uint32_t>(body.size());
    std::memcpy(&s[16], &len, 4);
    return s + body;
  };
  SUBCASE("JSON nested past the depth limit is refused before parsing; brackets in strings do not count") {
    auto nested = [](size_t levels) {
      std::string s = "{\"a\":";
      for (size_t i = 1; i < levels; ++i) s += "[";
      s += "1";
      for (size_t i = 1; i < levels; ++i) s += "]";
      return s + "}";
    };
    CHECK(DecodeStr(with_body(nested(kMaxJsonDepth))).error == DecodeError::kNone);
    DecodeResult d = DecodeStr(with_body(nested(kMaxJsonDepth + 1)));
    CHECK(d.error == DecodeError::kBadJson);
    CHECK(d.detail.find("nested deeper than 64") != std::string::npos);
    // 8 MiB of unclosed arrays: refused at once (parsing it took 600 MB and seconds).
    CHECK(DecodeStr(with_body(std::string(8 << 20, '[')), 16 << 20).error == DecodeError::kBadJson);
    DecodeResult strings = DecodeStr(with_body("{\"a\":\"" + std::string(500, '[') + "\\\"[{\"}"));
    CHECK(strings.error == DecodeError::kNone);
    CHECK(strings.message.body["a"].get<std::string>().size() == 503);
  }
  SUBCASE("a request body over the daemon's cap") {
    std::string big = "{\"a\":\"" + std::string(2000, 'x') + "\"}";
    auto buf = std::make_shared<std::string>(with_body(big));
    DecodeResult d = Decode(reinterpret_cast<const uint8_t*>(buf->data()), buf->size(), buf, 1 << 20, 1000);
    CHECK(d.error == DecodeError::kBadJson);
    CHECK(d.detail.find("tensors go in frames") != std::string::npos);
    CHECK(Decode(reinterpret_cast<const uint8_t*>(buf->data()), buf->size(), buf, 1 << 20, 4000).error ==
          DecodeError::kNone);
  }
}

TEST_CASE("error replies carry the status") {
  Message e = ErrorReply(9, Status(Code::kNotFound, "unknown model 'x'"), "no_model");
  DecodeResult d = DecodeStr(Encode(e));
  REQUIRE(d.error == DecodeError::kNone);
  Status st = StatusFromErrorReply(d.message);
  CHECK(st.code() == Code::kNotFound);
  CHECK(st.message() == "unknown model 'x'");
  CHECK(d.message.body["reason"] == "no_model");
}

TEST_CASE("dtype names") {
  CHECK(ParseDType("int64").value() == DType::kInt64);
  CHECK(ParseDType("F32").value() == DType::kFloat32);
  CHECK(ParseDType("float").value() == DType::kFloat32);
  CHECK(ParseDType("BF16").value() == DType::kBFloat16);
  CHECK_FALSE(ParseDType("complex64").ok());
  CHECK(DTypeSize(DType::kInt64) == 8);
  CHECK(std::string(DTypeSafetensorsName(DType::kBool)) == "BOOL");
}

TEST_CASE("tensors the frame format cannot carry are refused before encoding, not truncated") {
  Message m;
  m.type = kPredict;
  m.tensors.push_back(Tensor::Alloc("x", DType::kFloat32, std::vector<int64_t>(kMaxDims, 1)));
  m.tensors.push_back(Tensor::Alloc(std::string(kMaxNameBytes, 'n'), DType::kInt8, {2}));
  REQUIRE(CheckEncodable(m).ok());  // exactly at the limits: fine, and round-trips
  DecodeResult d = DecodeStr(Encode(m));
  REQUIRE(d.error == DecodeError::kNone);
  CHECK(d.message.tensors[0].shape.size() == kMaxDims);
  CHECK(d.message.tensors[1].name.size() == kMaxNameBytes);

  SUBCASE("more dims than the decoder accepts (a u8: 256 dims was sent as 0)") {
    for (size_t dims : {kMaxDims + 1, size_t{256}}) {
      Message b;
      b.type = kPredict;
      b.tensors.push_back(Tensor::Alloc("deep", DType::kFloat32, std::vector<int64_t>(dims, 1)));
      Status st = CheckEncodable(b);
      CHECK(st.code() == Code::kInvalidArgument);
      CHECK(st.message().find("'deep' has " + std::to_string(dims) + " dimensions") != std::string::npos);
      CHECK(st.message().find(std::to_string(kMaxDims)) != std::string::npos);
    }
  }
  SUBCASE("a name longer than its u16 length (65536 bytes was sent as 0)") {
    Message b;
    b.type = kPredict;
    b.tensors.push_back(Tensor::Alloc(std::string(kMaxNameBytes + 1, 'n'), DType::kFloat32, {1}));
    Status st = CheckEncodable(b);
    CHECK(st.code() == Code::kInvalidArgument);
    CHECK(st.message().find("65536 bytes") != std::string::npos);
    CHECK(st.message().size() < 300);  // not the whole name
  }
  SUBCASE("more frames than the decoder accepts") {
    Message b;
    b.type = kPredict;
    b.tensors.assign(kMaxFrames + 1, Tensor::Alloc("x", DType::kFloat32, {1}));
    CHECK(CheckEncodable(b).code() == Code::kInvalidArgument);
  }
}

TEST_CASE("a bool tensor frame holding a byte other than 0 or 1 is refused (found by fuzzing)") {
  Message m;
  m.type = kPredict;
  m.request_id = 1;
  Tensor b = Tensor::Alloc("mask", DType::kBool, {4});
  b.mutable_data()[1] = 1;
  m.tensors.push_back(b);
  CHECK(DecodeStr(Encode(m)).error == DecodeError::kNone);
  b.mutable_data()[3] = 2;
  DecodeResult d = DecodeStr(Encode(m));
  CHECK(d.error == DecodeError::kBadTensor);
  CHECK_MESSAGE(d.detail.find("bool tensor 'mask' holds the byte 2") != std::string::npos, d.detail);
}
