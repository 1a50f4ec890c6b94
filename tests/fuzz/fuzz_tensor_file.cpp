// libFuzzer target: tensor input files (lib/protocol/tensor_file.cpp), the
// files `mms predict --input` / a version's sample input read:
//   byte 0 % 3 == 0: the rest is JSON text, read as ReadTensorFile reads a
//                    .json file (BOM, ParseJsonStrict, TensorsFromJson)
//                    in memory; a file that reads must write back (TensorsToJson)
//                    and read again to the same tensors ("an output file is a
//                    valid input file");
//   byte 0 % 3 == 1: the rest is a safetensors file in memory:
//                    ParseSafetensorsHeader, then every entry read as
//                    ReadSafetensorsFile does, VerifySafetensorsChecksum;
//   byte 0 % 3 == 2: the rest is written to a file (.json, .safetensors or no
//                    extension, by byte 1) and read with ReadTensorFile, the
//                    real entry point; what reads is written (WriteTensorFile,
//                    both formats) and read back to the same tensors.
// tensor_file.cpp is included to reach functions in its anonymous namespace.
#include "lib/protocol/tensor_file.cpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "protocol/codec.h"  // ShortName

namespace {
using namespace mms;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "PROPERTY VIOLATED: %s\n", what);
  std::abort();
}

bool SameTensorsImpl(const std::vector<Tensor>& a, const std::vector<Tensor>& b);
bool SameTensors(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  if (SameTensorsImpl(a, b)) return true;
  auto show = [](const char* what, const std::vector<Tensor>& ts) {
    std::fprintf(stderr, "%s: %zu tensors\n", what, ts.size());
    for (const auto& t : ts) {
      std::fprintf(stderr, "  '%s' %s %zu bytes:", proto::ShortName(t.name).c_str(), t.Describe().c_str(), t.nbytes);
      auto v = TensorToDoubles(t);
      for (size_t i = 0; i < v.size() && i < 8; ++i) std::fprintf(stderr, " %.17g", v[i]);
      std::fprintf(stderr, " | hex");
      for (size_t i = 0; i < t.nbytes && i < 32; ++i) std::fprintf(stderr, " %02x", t.data.get()[i]);
      std::fprintf(stderr, "\n");
    }
  };
  show("read", a);
  show("written and read back", b);
  return false;
}
bool SameTensorsImpl(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const Tensor& x = a[i];
    // JSON files are objects: the order of the tensors may change (nlohmann sorts keys).
    const Tensor* y = nullptr;
    for (const auto& t : b)
      if (t.name == x.name) y = &t;
    if (!y || x.dtype != y->dtype || x.shape != y->shape || x.nbytes != y->nbytes) return false;
    if (x.nbytes == 0 || std::memcmp(x.data.get(), y->data.get(), x.nbytes) == 0) continue;
    // JSON has one NaN ("nan"): a NaN's sign and payload are not kept. Any
    // other difference is a change.
    const size_t es = DTypeSize(x.dtype);
    const bool is_float = x.dtype == DType::kFloat32 || x.dtype == DType::kFloat64 || x.dtype == DType::kFloat16 ||
                          x.dtype == DType::kBFloat16;
    if (!is_float) return false;
    std::vector<double> dx = TensorToDoubles(x), dy = TensorToDoubles(*y);
    for (size_t k = 0; k < dx.size(); ++k)
      if (std::memcmp(x.data.get() + k * es, y->data.get() + k * es, es) != 0 && !(std::isnan(dx[k]) && std::isnan(dy[k])))
        return false;
  }
  return true;
}

std::string TmpDir() {
  static std::string d = [] {
    const char* base = std::getenv("FUZZ_TMP");
    std::string p = std::string(base ? base : "/dev/shm") + "/mms_fuzz_tf_" + std::to_string(getpid());
    (void)MakeDirs(p, 0700);
    return p;
  }();
  return d;
}

void CheckTensors(const std::vector<Tensor>& ts) {
  for (const auto& t : ts) {
    if (t.numel() < 0 || static_cast<uint64_t>(t.numel()) * DTypeSize(t.dtype) != t.nbytes) Fail("tensor size");
    (void)TensorToDoubles(t);
    (void)t.Describe();
  }
}

void JsonMode(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);
  auto j = ParseJsonStrict(text);
  if (!j.ok()) return;
  auto t = TensorsFromJson(*j);
  if (!t.ok()) return;
  CheckTensors(*t);
  // An integer tensor holds exactly the integers the file gives (flat data only).
  for (const auto& x : *t) {
    if (x.dtype != DType::kInt64 && x.dtype != DType::kInt32) continue;
    const auto& data = (*j)[x.name]["data"];
    if (!data.is_array() || static_cast<int64_t>(data.size()) != x.numel()) continue;
    for (size_t i = 0; i < data.size(); ++i) {
      if (!data[i].is_number_integer() || data[i].is_number_unsigned()) continue;
      int64_t want = data[i].get<int64_t>();
      int64_t got = x.dtype == DType::kInt64 ? x.as<int64_t>()[i] : x.as<int32_t>()[i];
      if (got != want) {
        std::fprintf(stderr, "tensor '%s' element %zu: file says %lld, read as %lld\n", x.name.c_str(), i,
                     static_cast<long long>(want), static_cast<long long>(got));
        Fail("a JSON integer is not read exactly");
      }
    }
  }
  std::string out = TensorsToJson(*t).dump(2) + "\n";  // WriteTensorFile's JSON
  auto j2 = ParseJsonStrict(out);
  if (!j2.ok()) Fail("TensorsToJson output is not JSON");
  auto t2 = TensorsFromJson(*j2);
  if (!t2.ok()) {
    std::fprintf(stderr, "re-read error: %s\n", t2.status().message().c_str());
    Fail("a JSON tensor file written by mms does not read back");
  }
  if (!SameTensors(*t, *t2)) Fail("JSON tensor file round trip changed the tensors");
}

void SafetensorsMode(const uint8_t* data, size_t size) {
  auto h = ParseSafetensorsHeader(data, size, size);
  if (!h.ok()) return;
  if (h->data_offset > size) Fail("data_offset past the file");
  const uint64_t data_size = size - h->data_offset;
  std::vector<Tensor> out;
  for (const auto& e : h->entries) {
    if (e.begin > e.end || e.end > data_size) Fail("entry out of bounds accepted");
    auto alloc = Tensor::TryAlloc(e.name, e.dtype, e.shape);
    if (!alloc.ok()) return;
    Tensor t = std::move(alloc).value();
    if (t.nbytes != e.end - e.begin) Fail("entry size does not match its shape");
    if (t.nbytes) std::memcpy(t.mutable_data(), data + h->data_offset + e.begin, t.nbytes);
    out.push_back(std::move(t));
  }
  CheckTensors(out);
  (void)VerifySafetensorsChecksum(*h, data + h->data_offset, data_size, "x.safetensors");
}

void FileMode(const uint8_t* data, size_t size) {
  if (size < 1) return;
  static const char* kExt[] = {".json", ".safetensors", ".bin", ".SafeTensors"};
  const std::string dir = TmpDir();
  const std::string path = dir + "/in" + kExt[data[0] % 4];
  ++data;
  --size;
  if (Status st = WriteFileAtomic(path, std::string(reinterpret_cast<const char*>(data), size)); !st.ok()) {
    std::fprintf(stderr, "cannot write %s: %s\n", path.c_str(), st.message().c_str());
    std::abort();
  }
  auto t = ReadTensorFile(path);
  if (!t.ok()) return;
  CheckTensors(*t);
  for (const char* ext : {".json", ".safetensors"}) {
    const std::string out = dir + "/out" + ext;
    std::fprintf(stderr, "%s", "");  // (leg: see 'written to')
    if (Status st = WriteTensorFile(out, *t); !st.ok()) {
      std::fprintf(stderr, "write error: %s\n", st.message().c_str());
      Fail("WriteTensorFile failed on tensors ReadTensorFile returned");
    }
    auto back = ReadTensorFile(out);
    if (!back.ok()) {
      std::fprintf(stderr, "re-read error: %s\n", back.status().message().c_str());
      Fail("a tensor file written by mms does not read back");
    }
    if (!SameTensors(*t, *back)) {
      std::fprintf(stderr, "written to %s\n", out.c_str());
      Fail("tensor file round trip changed the tensors");
    }
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  switch (data[0] % 3) {
    case 0: JsonMode(data + 1, size - 1); break;
    case 1: SafetensorsMode(data + 1, size - 1); break;
    case 2: FileMode(data + 1, size - 1); break;
  }
  return 0;
}
