// The benchmarks' ceilings (read bandwidth, int8 peak) are the library's own: mmfree/roofline.hpp,
// so that mmfree-cli bench and bench/ measure them the same way.
#pragma once

#include "mmfree/roofline.hpp"

namespace mmfree::bench {
using namespace roofline;
}
