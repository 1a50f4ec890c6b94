// doctest for test files that include libtorch: libtorch pulls in glog,
// whose CHECK macros collide with doctest's. Include this after the torch and
// project headers, instead of <doctest/doctest.h>.
#pragma once

#include <torch/script.h>

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LE
#undef CHECK_LT
#undef CHECK_GE
#undef CHECK_GT
#undef CHECK_NOTNULL
#include <doctest/doctest.h>
