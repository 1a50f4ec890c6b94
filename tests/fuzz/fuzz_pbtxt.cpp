// libFuzzer target: config.pbtxt reading (lib/config/pbtxt.cpp and
// triton_config.cpp), what `mms model import` runs on a repository's files.
// Properties: no crash, hang or unbounded recursion; every field of a parsed
// tree has a line and column inside the text; a config that parses maps to
// variable dims (or an error) for forward's inputs without crashing, and
// every dim it gives names one of them past dim 0; its first model_warmup
// builds a sample of forward's inputs or an error, never a crash.
#include <cstdio>
#include <cstdlib>

#include "lib/config/pbtxt.h"
#include "lib/config/triton_config.h"

namespace {

void CheckPositions(const mms::PbtxtMessage& m, int lines) {
  for (const auto& f : m.fields) {
    if (f.line < 1 || f.line > lines || f.column < 1) {
      std::fprintf(stderr, "PROPERTY VIOLATED: field %s at %d:%d of %d lines\n", f.name.c_str(), f.line, f.column, lines);
      std::abort();
    }
    if ((f.kind == mms::PbtxtField::Kind::kMessage) != (f.message != nullptr)) std::abort();
    if (f.message) CheckPositions(*f.message, lines);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mms;
  std::string text(reinterpret_cast<const char*>(data), size);
  int lines = 1;
  for (char c : text) lines += c == '\n';
  auto tree = ParsePbtxt(text, "fuzz.pbtxt");
  if (tree.ok()) CheckPositions(*tree, lines);
  auto config = ParseTritonConfig(text, "fuzz.pbtxt");
  if (config.ok() != tree.ok() && !tree.ok()) std::abort();  // (a config is a tree first)
  if (!config.ok()) return 0;
  const std::vector<InputSpec> specs = {{"ids", DType::kInt64, std::vector<int64_t>{2, 3}},
                                        {"mask", DType::kInt64, std::vector<int64_t>{2, 3, 4}},
                                        {"free", DType::kFloat32, std::nullopt}};
  // The warm-up sample (no data files: the directory does not exist); its
  // size is refused over 64 MiB before anything is allocated.
  auto sample = TritonWarmupSample(*config, specs, "/nonexistent-mms-fuzz", "fuzz.pbtxt");
  if (sample.ok())
    for (const auto& t : *sample)
      if (t.name != "ids" && t.name != "mask" && t.name != "free") std::abort();
  auto dims = TritonVariableDims(*config, specs, "fuzz.pbtxt");
  if (!dims.ok()) return 0;
  for (const auto& d : *dims)
    if (d != "ids:1" && d != "mask:1" && d != "mask:2") {
      std::fprintf(stderr, "PROPERTY VIOLATED: variable dim %s names no dim of the inputs past dim 0\n", d.c_str());
      std::abort();
    }
  return 0;
}
