// The Verilated cores the hw programs and tests use, built once (hw/CMakeLists.txt).
#include "Vcore16.h"
#include "Vcore256.h"
#include "Vcore64.h"
#include "mmfree/error.hpp"
#include "rtl_accumulate.hpp"

namespace mmfree::hw {

std::unique_ptr<Core> make_core(int lanes) {
  switch (lanes) {
    case 16: return std::make_unique<VerilatedCore<Vcore16, 4>>();
    case 64: return std::make_unique<VerilatedCore<Vcore64, 16>>();
    case 256: return std::make_unique<VerilatedCore<Vcore256, 64>>();
    default: fail("--lanes " + std::to_string(lanes), "no such core build (16, 64 or 256)");
  }
}

}  // namespace mmfree::hw
