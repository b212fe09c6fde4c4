// mmfree: what every SIMD kernel header shares: the warnings it silences, and the target
// attribute of the AVX2 code (the kernels, the quantiser and the repacker).
//
// GCC 12 warns inside its own intrinsic headers (reduce_add, zext, unpack: "may be used
// uninitialized") and about the vector ABI of target-attributed functions (-Wpsabi); both
// are false alarms for code that only calls intrinsics. Wrap a header's body in
// MMFREE_SIMD_WARNINGS_PUSH ... MMFREE_SIMD_WARNINGS_POP.
#pragma once

#if defined(__clang__)
#define MMFREE_SIMD_MAYBE_UNINITIALIZED  // clang has no -Wmaybe-uninitialized
#else
#define MMFREE_SIMD_MAYBE_UNINITIALIZED _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#endif

#define MMFREE_SIMD_WARNINGS_PUSH                         \
  _Pragma("GCC diagnostic push")                          \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")   \
  _Pragma("GCC diagnostic ignored \"-Wpsabi\"")           \
  MMFREE_SIMD_MAYBE_UNINITIALIZED

#define MMFREE_SIMD_WARNINGS_POP _Pragma("GCC diagnostic pop")

// Functions compiled for AVX2 + FMA inside a baseline build (runtime dispatch picks them).
#define MMFREE_TARGET_AVX2 __attribute__((target("avx2,fma")))
