// libFuzzer target: mms.toml parsing (lib/config/config.cpp, toml++ 3.3.0).
//   ParseConfig(text, "fuzz.toml")  -- what mmsd --config / SIGHUP reload run.
// Property (config.h): "RenderConfig ... Parsing it back yields c": a config
// that parses renders to TOML that parses to the same rendering.
// Also ParseHostPort and IsDeviceName on the raw input (mmsd --metrics-address).
// config.cpp is included so the harness builds from one TU with toml++ header-only.
#include "lib/config/config.cpp"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mms;
  std::string text(reinterpret_cast<const char*>(data), size);
  if (size < 256) {
    auto hp = ParseHostPort(text);
    if (hp.ok() && hp->port == 0) std::abort();
    (void)IsDeviceName(text);
  }
  auto c = ParseConfig(text, "fuzz.toml");
  if (!c.ok()) return 0;
  std::string r1 = RenderConfig(*c);
  auto c2 = ParseConfig(r1, "rendered.toml");
  if (!c2.ok()) {
    std::fprintf(stderr, "PROPERTY VIOLATED: rendered config does not parse: %s\n--- rendered:\n%s\n",
                 c2.status().message().c_str(), r1.c_str());
    std::abort();
  }
  std::string r2 = RenderConfig(*c2);
  if (r1 != r2) {
    std::fprintf(stderr, "PROPERTY VIOLATED: render(parse(render(c))) != render(c)\n--- r1:\n%s\n--- r2:\n%s\n",
                 r1.c_str(), r2.c_str());
    std::abort();
  }
  return 0;
}
