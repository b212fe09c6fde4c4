// Building blocks against straightforward float (double) implementations, odd sizes.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "mmfree/mmfree.hpp"

namespace tests_blocks {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;

namespace {

std::vector<float> randn(std::mt19937& rng, size_t n, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double max_rel(const std::vector<double>& ref, const float* got, size_t n) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < n; ++i) {
    mx = std::max(mx, std::fabs(ref[i]));
    err = std::max(err, std::fabs(ref[i] - double(got[i])));
  }
  return err / std::max(mx, 1e-30);
}

// BitLinear written from SPEC in double: dequantised weights and activations, a real
// matrix product.
std::vector<double> bitlinear_ref(const std::vector<float>& W, const std::vector<float>& wn, const float* x,
                                  int64_t out, int64_t in) {
  double ss = 0;
  for (int64_t i = 0; i < in; ++i) ss += double(x[i]) * x[i];
  const double r = 1.0 / std::sqrt(ss / double(in) + 1e-6);
  std::vector<float> y(static_cast<size_t>(in));
  float amax = 0;
  for (int64_t i = 0; i < in; ++i) {
    y[size_t(i)] = float(x[i] * r) * wn[size_t(i)];
    amax = std::max(amax, std::fabs(y[size_t(i)]));
  }
  const float sx = 127.0f / std::max(amax, 1e-5f);
  double aw = 0;
  for (float w : W) aw += std::fabs(w);
  const float scale = std::max(float(aw / double(W.size())), 1e-5f);
  const float sw = 1.0f / scale;
  std::vector<double> o(static_cast<size_t>(out));
  for (int64_t r_ = 0; r_ < out; ++r_) {
    double acc = 0;
    for (int64_t i = 0; i < in; ++i) {
      const double q = std::clamp(std::round(y[size_t(i)] * sx), -128.0f, 127.0f);
      const double t = std::clamp(std::round(W[size_t(r_ * in + i)] * sw), -1.0f, 1.0f);
      acc += (q / sx) * (t * scale);
    }
    o[size_t(r_)] = acc;
  }
  return o;
}

}  // namespace

TEST(Ops, RmsNormMatchesDouble) {
  std::mt19937 rng(3);
  for (int64_t n : {1, 7, 96, 1001}) {
    auto x = randn(rng, size_t(n), 3.0f), w = randn(rng, size_t(n));
    std::vector<float> y(static_cast<size_t>(n));
    rmsnorm(x.data(), w.data(), n, 1e-6, y.data());
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    std::vector<double> ref(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ref[size_t(i)] = x[size_t(i)] / std::sqrt(ss / double(n) + 1e-6) * w[size_t(i)];
    EXPECT_LT(max_rel(ref, y.data(), size_t(n)), 1e-6) << n;
  }
}

TEST(Ops, QuantizeInt8) {
  std::vector<float> y = {0.5f, -1.0f, 0.25f, 0.0f, 1.0f / 254.0f};
  std::vector<int8_t> q(8, 99);
  const float s = quantize_int8(y.data(), 5, q.data(), 8);
  EXPECT_FLOAT_EQ(s, 127.0f);
  EXPECT_EQ(q[0], 64);   // 63.5 rounds half away from zero
  EXPECT_EQ(q[1], -127);
  EXPECT_EQ(q[2], 32);   // 31.75
  EXPECT_EQ(q[3], 0);
  EXPECT_EQ(q[4], 1);    // 0.5 -> 1
  EXPECT_EQ(q[5], 0);    // padding zeroed
  EXPECT_EQ(q[7], 0);
  // All zeros: scale clamps at 127 / 1e-5, codes are zero.
  std::vector<float> z(3, 0.0f);
  EXPECT_FLOAT_EQ(quantize_int8(z.data(), 3, q.data(), 3), 127.0f / 1e-5f);
  EXPECT_EQ(q[0], 0);
}

TEST(BitLinear, MatchesFloatDefinitionOnOddShapes) {
  std::mt19937 rng(4);
  for (auto f : {TernaryFormat::TQ2, TernaryFormat::TQ1})
    for (auto [out, in] : {std::pair<int64_t, int64_t>{1, 1}, {3, 5}, {17, 300}, {64, 257}, {5, 1600}}) {
      auto W = randn(rng, size_t(out * in), 0.05f), wn = randn(rng, size_t(in));
      BitLinear bl(quantize_ternary(W.data(), out, in, f), wn);
      const int64_t n = 3;
      auto x = randn(rng, size_t(n * in), 2.0f);
      std::vector<float> y(static_cast<size_t>(n * out));
      BitLinearScratch s;
      Exec ex;
      bl.forward(x.data(), n, y.data(), s, ex);
      for (int64_t t = 0; t < n; ++t) {
        auto ref = bitlinear_ref(W, wn, x.data() + t * in, out, in);
        EXPECT_LT(max_rel(ref, y.data() + t * out, size_t(out)), 2e-6) << format_name(f) << " " << out << "x" << in;
      }
    }
}

TEST(MLGRU, MatchesFloatRecurrence) {
  std::mt19937 rng(5);
  const int64_t H = 37, n = 6;
  MLGRU m;
  std::vector<std::vector<float>> latent;
  auto make = [&](int64_t o, int64_t i) {
    latent.push_back(randn(rng, size_t(o * i), 0.1f));
    return BitLinear(quantize_ternary(latent.back().data(), o, i, TernaryFormat::TQ2), randn(rng, size_t(i)));
  };
  m.i_proj = make(H, H);
  m.f_proj = make(H, H);
  m.g_proj = make(H, H);
  m.o_proj = make(H, H);
  m.g_norm = randn(rng, size_t(H));
  m.lower_bound.resize(size_t(H));
  for (auto& v : m.lower_bound) v = std::uniform_real_distribution<float>(0, 0.9f)(rng);
  auto x = randn(rng, size_t(n * H));
  std::vector<float> h(static_cast<size_t>(H), 0.0f), out(static_cast<size_t>(n * H));
  Activations act;
  m.forward(x.data(), n, h.data(), out.data(), 1e-6, act, Exec{});

  // Reference: each BitLinear by itself (already tested), element-wise math in double.
  std::vector<double> hr(static_cast<size_t>(H), 0.0);
  BitLinearScratch s2;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> fp(static_cast<size_t>(H)), ip(static_cast<size_t>(H)), gp(static_cast<size_t>(H)), o(static_cast<size_t>(H)), ref(static_cast<size_t>(H));
    m.f_proj.forward(x.data() + t * H, 1, fp.data(), s2, Exec{});
    m.i_proj.forward(x.data() + t * H, 1, ip.data(), s2, Exec{});
    m.g_proj.forward(x.data() + t * H, 1, gp.data(), s2, Exec{});
    double ss = 0;
    for (float g : gp) ss += double(g) * g;
    for (int64_t c = 0; c < H; ++c) {
      double f = 1.0 / (1.0 + std::exp(-double(fp[size_t(c)])));
      f = m.lower_bound[size_t(c)] + (1 - m.lower_bound[size_t(c)]) * f;
      const double i = ip[size_t(c)] / (1.0 + std::exp(-double(ip[size_t(c)])));
      hr[size_t(c)] = f * hr[size_t(c)] + i * (1 - f);
      const double sh = hr[size_t(c)] / (1.0 + std::exp(-hr[size_t(c)]));
      o[size_t(c)] = float(gp[size_t(c)] / std::sqrt(ss / double(H) + 1e-6) * m.g_norm[size_t(c)] * sh);
    }
    m.o_proj.forward(o.data(), 1, ref.data(), s2, Exec{});
    // o_proj requantises its input, so compare the recurrent state tightly and the
    // output in the statistical sense that quantisation allows.
    double err = 0, mx = 0;
    for (int64_t c = 0; c < H; ++c) {
      err = std::max(err, std::fabs(double(out[size_t(t * H + c)]) - double(ref[size_t(c)])));
      mx = std::max(mx, std::fabs(double(ref[size_t(c)])));
    }
    EXPECT_LT(err / mx, 2e-2) << "t=" << t;
  }
  for (int64_t c = 0; c < H; ++c) EXPECT_NEAR(h[size_t(c)], hr[size_t(c)], 1e-5 * (1 + std::fabs(hr[size_t(c)])));
}

TEST(GLU, MatchesFloatDefinition) {
  std::mt19937 rng(6);
  const int64_t H = 33, I = 70, n = 2;
  auto Wg = randn(rng, size_t(2 * I * H), 0.1f), Wd = randn(rng, size_t(H * I), 0.1f);
  GLU g;
  g.gate_proj = BitLinear(quantize_ternary(Wg.data(), 2 * I, H, TernaryFormat::TQ1), randn(rng, size_t(H)));
  g.down_proj = BitLinear(quantize_ternary(Wd.data(), H, I, TernaryFormat::TQ1), randn(rng, size_t(I)));
  auto x = randn(rng, size_t(n * H));
  std::vector<float> out(static_cast<size_t>(n * H));
  Activations act;
  BitLinearScratch bs;
  g.forward(x.data(), n, out.data(), act, Exec{});
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> gu(static_cast<size_t>(2 * I)), a(static_cast<size_t>(I)), ref(static_cast<size_t>(H));
    g.gate_proj.forward(x.data() + t * H, 1, gu.data(), bs, Exec{});
    for (int64_t c = 0; c < I; ++c)
      a[size_t(c)] = float(gu[size_t(c)] / (1.0 + std::exp(-double(gu[size_t(c)]))) * gu[size_t(I + c)]);
    g.down_proj.forward(a.data(), 1, ref.data(), bs, Exec{});
    for (int64_t c = 0; c < H; ++c) EXPECT_NEAR(out[size_t(t * H + c)], ref[size_t(c)], 1e-5f * (1 + std::fabs(ref[size_t(c)])));
  }
}

TEST(LowerBounds, SoftmaxCumsum) {
  // Two layers, one channel: raw (0, 0) -> P = (0.5, 0.5), lb = (0, 0.5).
  auto lb = lower_bounds_from_raw({0.0f, 0.0f}, 2, 1);
  EXPECT_FLOAT_EQ(lb[0][0], 0.0f);
  EXPECT_FLOAT_EQ(lb[1][0], 0.5f);
  auto lb3 = lower_bounds_from_raw({0.0f, std::log(2.0f), std::log(3.0f)}, 3, 1);  // P = 1/6, 2/6, 3/6
  EXPECT_NEAR(lb3[1][0], 2.0 / 6, 1e-7);
  EXPECT_NEAR(lb3[2][0], 5.0 / 6, 1e-7);
}

// exp_approx against the correctly rounded e^x (from double): within 2 ulp on the whole
// range the model meets, exact at 0, and clamped (finite, monotone) outside it.
TEST(Ops, ExpApproxWithinTwoUlp) {
  int worst = 0;
  for (float x = -87.0f; x <= 88.0f; x = std::nextafter(x, 100.0f) + 0.000731f) {
    const float want = float(std::exp(double(x)));
    const float got = exp_approx(x);
    int32_t a, b;
    std::memcpy(&a, &want, 4);
    std::memcpy(&b, &got, 4);
    worst = std::max(worst, std::abs(a - b));
  }
  EXPECT_LE(worst, 2);
  EXPECT_EQ(exp_approx(0.0f), 1.0f);
  EXPECT_EQ(exp_approx(-1000.0f), exp_approx(-87.0f));
  EXPECT_EQ(exp_approx(1000.0f), exp_approx(88.0f));
  EXPECT_TRUE(std::isfinite(exp_approx(1000.0f)));
  EXPECT_NEAR(sigmoid(0.0f), 0.5f, 0.0f);
  EXPECT_NEAR(silu(-200.0f), 0.0f, 1e-30f);
  EXPECT_NEAR(silu(3.0f), 3.0 / (1.0 + std::exp(-3.0)), 3e-7);
}

// The element-wise loops run as AVX-512, AVX2 or baseline clones (whichever this CPU takes) and
// must give the bits of one element at a time: no fused multiply-adds in one clone and not in
// another (the AVX-512 clones of silu and the recurrence contracted once, so results moved with
// the CPU). Odd sizes: the groups of 16 and 8, the recurrence's blocks of 64, their remainders, one
// element.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
namespace {
void mlgru_reference(const float* f, const float* i, const float* lb, int64_t d, float* h, float* o) {
  for (int64_t c = 0; c < d; ++c) mlgru_step_one(f[c], i[c], lb ? lb[c] : 0.0f, h[c], o[c]);
}
void silu_mul_reference(const float* g, const float* u, int64_t n, float* a) {
  for (int64_t c = 0; c < n; ++c) a[c] = silu(g[c]) * u[c];
}
}  // namespace
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

TEST(Ops, ElementwiseLoopsGiveOneElementsBits) {
  std::mt19937 rng(11);
  for (int64_t n : {1, 7, 8, 15, 16, 17, 33, 63, 64, 65, 80, 95, 129, 2563}) {
    const auto f = randn(rng, size_t(n), 3.0f), i = randn(rng, size_t(n), 3.0f), h0 = randn(rng, size_t(n));
    std::vector<float> lb(static_cast<size_t>(n));
    for (auto& x : lb) x = std::uniform_real_distribution<float>(0.0f, 0.9f)(rng);
    for (const float* l : {static_cast<const float*>(nullptr), static_cast<const float*>(lb.data())}) {
      std::vector<float> h = h0, o(static_cast<size_t>(n)), h_ref = h0, o_ref(static_cast<size_t>(n));
      mlgru_step(f.data(), i.data(), l, n, h.data(), o.data());
      mlgru_reference(f.data(), i.data(), l, n, h_ref.data(), o_ref.data());
      EXPECT_EQ(0, std::memcmp(h.data(), h_ref.data(), size_t(n) * 4)) << "n = " << n;
      EXPECT_EQ(0, std::memcmp(o.data(), o_ref.data(), size_t(n) * 4)) << "n = " << n;
    }
    std::vector<float> a(static_cast<size_t>(n)), a_ref(static_cast<size_t>(n));
    silu_mul(f.data(), i.data(), n, a.data());
    silu_mul_reference(f.data(), i.data(), n, a_ref.data());
    EXPECT_EQ(0, std::memcmp(a.data(), a_ref.data(), size_t(n) * 4)) << "n = " << n;

    std::vector<int32_t> acc(static_cast<size_t>(n));
    for (auto& v : acc) v = std::uniform_int_distribution<int32_t>(-(1 << 26), 1 << 26)(rng);
    std::vector<float> s(static_cast<size_t>(n)), x = f, y = f;
    scale_ints(acc.data(), 0.37f, n, s.data());
    add_into(x.data(), i.data(), n);
    mul_into(y.data(), i.data(), n);
    for (int64_t c = 0; c < n; ++c) {
      ASSERT_EQ(s[size_t(c)], float(acc[size_t(c)]) * 0.37f);
      ASSERT_EQ(x[size_t(c)], f[size_t(c)] + i[size_t(c)]);
      ASSERT_EQ(y[size_t(c)], f[size_t(c)] * i[size_t(c)]);
    }
  }
}

}  // namespace tests_blocks
