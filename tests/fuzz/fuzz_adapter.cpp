// libFuzzer target: LoRA adapter registration and the packed-weights header
// readers (lib/lora/adapter.cpp; torch-free):
//   input = MODE byte, then PART_A, the separator "\n#--#\n", PART_B.
//   MODE % 2 == 0: a PEFT adapter directory: PART_A is adapter_config.json,
//     PART_B adapter_model.safetensors; CheckAdapter against a fixed base
//     (float32, or bfloat16 with MODE & 2; stacked modules with MODE & 4). An
//     adapter that checks is packed (WritePackedAdapter) and its packed file
//     read as AdapterLoader::Load does (header, "mms.adapter" metadata ->
//     AdapterInfo::FromJson, checksums).
//   MODE % 2 == 1: PART_B is a base version's packed weights.safetensors
//     (ReadLoraBase, and the layout LoadPackedTorchScript derives from the
//     header: entries, aliases, checksums); PART_A is then the adapter config
//     checked against that base with testdata's a1 weights
//     (FUZZ_ADAPTER_A1 = path of a1/adapter_model.safetensors).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/paths.h"
#include "lora/adapter.h"
#include "protocol/tensor_file.h"

namespace {
using namespace mms;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "PROPERTY VIOLATED: %s\n", what);
  std::abort();
}

const std::string& Dir() {
  static std::string d = [] {
    const char* base = std::getenv("FUZZ_TMP");
    std::string p = std::string(base ? base : "/dev/shm") + "/mms_fuzz_ad_" + std::to_string(getpid());
    (void)MakeDirs(p + "/adapter", 0700);
    (void)MakeDirs(p + "/a1", 0700);
    return p;
  }();
  return d;
}

void Put(const std::string& path, const char* data, size_t n) {
  if (Status st = WriteFileAtomic(path, std::string(data, n)); !st.ok()) {
    std::fprintf(stderr, "cannot write %s: %s\n", path.c_str(), st.message().c_str());
    std::abort();
  }
}

LoraBase FixedBase(unsigned mode) {
  LoraBase b;
  b.ref = "base:1";
  DType d = (mode & 2) ? DType::kBFloat16 : DType::kFloat32;
  b.linears["q"] = {d, 16, 16};
  b.linears["v"] = {d, 16, 16};
  b.linears["o"] = {d, 4, 16};
  b.linears["layers.0.q_proj"] = {d, 16, 16};
  b.linears["layers.1.q_proj"] = {d, 16, 16};
  b.linears["model.layers.2.mlp.experts.0.up_proj"] = {d, 8, 16};
  b.linears["emb"] = {DType::kInt64, 4, 4};
  if (mode & 4) b.stacked = {"q", "v"};
  return b;
}

// As AdapterLoader::Load (lib/lora/adapter_model.cpp) reads a packed adapter.
void LoadPacked(const std::string& path) {
  auto header = ReadSafetensorsHeader(path);
  if (!header.ok()) Fail("a packed adapter's header does not read");
  auto meta = header->metadata.find("mms.adapter");
  if (meta == header->metadata.end()) Fail("a packed adapter has no mms.adapter");
  auto j = nlohmann::json::parse(meta->second, nullptr, false);
  if (j.is_discarded()) Fail("unreadable adapter metadata");
  auto info = AdapterInfo::FromJson(j);
  if (!info.ok()) Fail("AdapterInfo::FromJson refuses what ToJson wrote");
  auto content = ReadFile(path);
  if (!content.ok()) Fail("read");
  uint64_t end = 0;
  for (const auto& e : header->entries) end = std::max(end, e.end);
  if (header->data_offset + end > content->size()) Fail("packed adapter truncated");
  Status st = VerifySafetensorsChecksum(*header, reinterpret_cast<const uint8_t*>(content->data()) + header->data_offset,
                                        end, path);
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.message().c_str());
    Fail("a freshly packed adapter fails its own checksum");
  }
}

void CheckDir(const std::string& dir, const LoraBase& base) {
  auto a = CheckAdapter(dir, base);
  if (!a.ok()) return;
  if (a->tensors.size() != 2 * a->info.targets.size()) Fail("tensor count");
  const std::string packed = Dir() + "/adapter.safetensors";
  if (Status st = WritePackedAdapter(packed, *a); !st.ok()) Fail("WritePackedAdapter failed");
  LoadPacked(packed);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const unsigned mode = data[0];
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  static const std::string kSep = "\n#--#\n";
  size_t at = rest.find(kSep);
  std::string_view a = rest.substr(0, at), b;
  if (at != std::string_view::npos) b = rest.substr(at + kSep.size());
  const std::string& d = Dir();
  if (mode % 2 == 0) {
    Put(d + "/adapter/adapter_config.json", a.data(), a.size());
    Put(d + "/adapter/adapter_model.safetensors", b.data(), b.size());
    CheckDir(d + "/adapter", FixedBase(mode));
    return 0;
  }
  // A base's packed weights.
  const std::string weights = d + "/weights.safetensors";
  Put(weights, b.data(), b.size());
  auto h = ReadSafetensorsHeader(weights);
  auto base = ReadLoraBase("base:1", weights, (mode & 4) ? std::vector<std::string>{"q"} : std::vector<std::string>{});
  if (h.ok() != base.ok()) Fail("ReadLoraBase and ReadSafetensorsHeader disagree");
  if (!h.ok()) return 0;
  // LoadPackedTorchScript's layout and checksum checks (torch_model.cpp).
  uint64_t total = 0;
  for (const auto& e : h->entries) total = std::max(total, e.end);
  if (h->data_offset + total > b.size()) Fail("entry past the end of the file accepted");
  (void)VerifySafetensorsChecksum(*h, reinterpret_cast<const uint8_t*>(b.data()) + h->data_offset, total, weights);
  if (auto m = h->metadata.find("mms.adapter"); m != h->metadata.end()) {
    auto j = nlohmann::json::parse(m->second, nullptr, false);
    if (!j.is_discarded()) (void)AdapterInfo::FromJson(j);
  }
  // The adapter config against this base, with a1's real weights.
  static const std::string a1 = [] {
    const char* p = std::getenv("FUZZ_ADAPTER_A1");
    auto r = ReadFile(p ? p : "testdata/adapters/a1/adapter_model.safetensors");  // (scripts/fuzz.sh sets it)
    if (!r.ok()) {
      std::fprintf(stderr, "set FUZZ_ADAPTER_A1 to testdata/adapters/a1/adapter_model.safetensors\n");
      std::abort();
    }
    return *r;
  }();
  static bool a1_written = false;
  if (!a1_written) Put(d + "/a1/adapter_model.safetensors", a1.data(), a1.size());
  a1_written = true;
  Put(d + "/a1/adapter_config.json", a.data(), a.size());
  CheckDir(d + "/a1", *base);
  return 0;
}
