// mmfree: the loop the buffered kernels (AVX2, NEON with DotProd) run for several tokens: each
// strip's digit planes unpacked once into a buffer, then register tiles of tokens over them, the
// widest first. The ISA-specific parts come in as callables (called per strip, not inlined across
// target attributes: their cost is per strip, the tiles' loops are inside them).
#pragma once

#include <cstdint>
#include <type_traits>

#include "mmfree/ternary_format.hpp"

namespace mmfree::kernels {

// unpack(s) fills the buffer with strip s's planes; tile(std::integral_constant<int, T>, s, t)
// multiplies them against tokens [t, t + T). Tiles of Wide tokens, then Narrow, then 1.
template <int Wide, int Narrow, class Unpack, class Tile>
inline void strips_by_token_tiles(int64_t n, int64_t r0, int64_t r1, Unpack&& unpack, Tile&& tile) {
  static_assert(Wide > Narrow && Narrow >= 1);
  for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s) {
    unpack(s);
    int64_t t = 0;
    for (; t + Wide <= n; t += Wide) tile(std::integral_constant<int, Wide>{}, s, t);
    if constexpr (Narrow > 1)
      for (; t + Narrow <= n; t += Narrow) tile(std::integral_constant<int, Narrow>{}, s, t);
    for (; t < n; ++t) tile(std::integral_constant<int, 1>{}, s, t);
  }
}

}  // namespace mmfree::kernels
