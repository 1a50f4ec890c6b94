// Test main: doctest, with the library's logging quietened to warnings
// (MMS_TEST_LOG=debug|info shows everything). An executable whose tests need
// hardware this machine may lack defines mms_test_skip_all(): when it says
// so, running tests exits 77, which ctest reports as skipped (listing them
// still works, so ctest discovers them).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/log.h"

extern "C" bool mms_test_skip_all() __attribute__((weak));

int main(int argc, char** argv) {
  mms::Logger::Options o;
  o.level = mms::LogLevel::kWarn;
  if (const char* l = std::getenv("MMS_TEST_LOG"))
    if (auto parsed = mms::ParseLogLevel(l); parsed.ok()) o.level = *parsed;
  (void)mms::Logger::Global().Configure(o);
  bool listing = false;
  for (int i = 1; i < argc; ++i)
    listing = listing || std::strstr(argv[i], "list-test") != nullptr || std::strcmp(argv[i], "-ltc") == 0;
  if (!listing && mms_test_skip_all && mms_test_skip_all()) {
    std::printf("skipped: this machine lacks what these tests need (a CUDA build and a GPU)\n");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
