// Test main: doctest, with the library's logging quietened to warnings
// (MMS_TEST_LOG=debug|info shows everything).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdlib>

#include "core/log.h"

int main(int argc, char** argv) {
  mms::Logger::Options o;
  o.level = mms::LogLevel::kWarn;
  if (const char* l = std::getenv("MMS_TEST_LOG"))
    if (auto parsed = mms::ParseLogLevel(l); parsed.ok()) o.level = *parsed;
  (void)mms::Logger::Global().Configure(o);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
