// mmfree: the loops the strip kernels without AVX-512 run for several tokens. The buffered ones
// (AVX2, NEON with DotProd): each strip's digit planes unpacked once into a buffer, then register
// tiles of tokens over them, the widest first. The direct ones (avx2-direct, avx-vnni,
// neon-dotprod-direct): tokens in blocks, each strip under evenly sized tiles that decode its
// chunks in registers. The ISA-specific parts come in as callables (called per strip, not inlined
// across target attributes: their cost is per strip, the tiles' loops are inside them).
#pragma once

#include <algorithm>
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

// f(std::integral_constant<int, n>{}) for n in [T, Max] (n past Max: Max).
template <int T, int Max, class F>
inline void with_tile_size(int64_t n, F&& f) {
  if constexpr (T >= Max) f(std::integral_constant<int, Max>{});
  else if (n <= T) f(std::integral_constant<int, T>{});
  else with_tile_size<T + 1, Max>(n, f);
}

// Tokens [0, n) in blocks of `block` (their activations stay in L2 while the strips stream under
// them); each strip of rows [r0, r1) under tiles of at most `most` <= Max tokens, evenly sized (5
// tokens in tiles of 4 run as 3 + 2, not 4 + 1: a 1-token tile is latency-bound):
// tile(std::integral_constant<int, T>{}, s, t) multiplies strip s against tokens [t, t + T).
template <int Max, class Tile>
inline void strips_by_even_tiles(int64_t n, int64_t block, int64_t most, int64_t r0, int64_t r1, Tile&& tile) {
  for (int64_t b = 0; b < n; b += block) {
    const int64_t bn = std::min(block, n - b), tiles = (bn + most - 1) / most;
    for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s)
      for (int64_t k = 0, t = b; k < tiles; ++k) {
        const int64_t tn = bn / tiles + (k < bn % tiles ? 1 : 0);
        with_tile_size<1, Max>(tn, [&](auto T) { tile(T, s, t); });
        t += tn;
      }
  }
}

}  // namespace mmfree::kernels
