// Ternary layouts: the strips the kernels read, and the layouts files carry. Bits pinned down,
// round trips on odd shapes, and every kind of bad file data refused.
#include <gtest/gtest.h>
#include <gmock/gmock.h>

#include <random>

#include "mmfree/file_ternary.hpp"
#include "mmfree/ternary_format.hpp"
#include "mmfree/kernels/repack.hpp"
#include "test_util.hpp"

namespace tests_formats {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using mmfree::test::error_of;
using mmfree::test::random_ternary;
using ::testing::HasSubstr;

namespace {


const TernaryFormat kFormats[] = {TernaryFormat::TQ2, TernaryFormat::TQ1};


}  // namespace

TEST(Formats, Geometry) {
  auto m = TernaryMatrix::shape(TernaryFormat::TQ1, 33, 2560);
  EXPECT_EQ(m.strips, 3);
  EXPECT_EQ(m.chunks, 128);
  EXPECT_EQ(m.strip_bytes(), 128 * 64);
  EXPECT_EQ(double(m.strip_bytes()) * 8 / (16.0 * 2560), 1.6);  // exactly 1.6 bits per weight
  auto t = TernaryMatrix::shape(TernaryFormat::TQ2, 16, 2560);
  EXPECT_EQ(double(t.nbytes()) * 8 / (16.0 * 2560), 2.0);
  EXPECT_EQ(TernaryMatrix::shape(TernaryFormat::TQ2, 1, 17).padded_cols(), 32);
  EXPECT_EQ(TernaryMatrix::shape(TernaryFormat::TQ1, 1, 21).padded_cols(), 40);
  EXPECT_EQ(activation_cols(1), 1280);
  EXPECT_EQ(activation_cols(1280), 1280);
  EXPECT_EQ(activation_cols(1281), 2560);
}

// Known bit patterns, so the layouts documented in ternary_format.hpp are pinned down.
TEST(Formats, Tq2StripLayoutIsAsDocumented) {
  std::vector<int8_t> t(2 * 32, 0);  // rows 0-1 of 32 columns: 2 chunks
  t[0] = 1;        // row 0, column 0: chunk 0, byte m=0, plane p=0 -> bits 0-1 = 2
  t[5] = -1;       // row 0, column 5: p=1, m=1 -> byte 1 bits 2-3 = 0
  t[32 + 31] = 1;  // row 1, column 31: chunk 1 (column 15 of it): p=3, m=3 -> byte 3 bits 6-7 = 2
  auto m = pack_ternary(t.data(), 2, 32, TernaryFormat::TQ2);
  const uint8_t* c0 = m.strip(0);
  EXPECT_EQ(c0[0], 0b01010110);  // row 0, byte 0: p0 = 2, p1..p3 = 1
  EXPECT_EQ(c0[1], 0b01010001);  // row 0, byte 1: p1 = 0
  EXPECT_EQ(c0[2], 0b01010101);
  EXPECT_EQ(c0[4 * 1 + 0], 0b01010101);  // row 1, chunk 0: all zeros (digit 1)
  EXPECT_EQ(m.strip(0)[64 + 4 * 1 + 3], 0b10010101);  // row 1, chunk 1, byte 3
  EXPECT_EQ(c0[4 * 2], 0b01010101);  // padding row 2: w = 0
}

TEST(Formats, Tq1StripLayoutIsAsDocumented) {
  std::vector<int8_t> t(20, 0);
  t[0] = 1;    // column 0 = 20c + 4p + m with p=0, m=0: digit 2 in the 81s place of byte 0
  t[19] = -1;  // column 19: p=4, m=3: digit 0 in the 1s place of byte 3
  auto m = pack_ternary(t.data(), 1, 20, TernaryFormat::TQ1);
  EXPECT_EQ(m.strip(0)[0], 2 * 81 + 27 + 9 + 3 + 1);
  EXPECT_EQ(m.strip(0)[3], 81 + 27 + 9 + 3 + 0);
  EXPECT_EQ(m.strip(0)[1], 121);  // all digits 1
  for (int v = 0; v < 243; ++v)
    for (int p = 0; p < 5; ++p) {
      static const int pw[5] = {81, 27, 9, 3, 1};
      ASSERT_EQ(tq1_digit(uint8_t(v), p), v / pw[p] % 3);
    }
}

TEST(Formats, PackRoundTripOddShapes) {
  std::mt19937 rng(1);
  for (auto f : kFormats)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {17, 19}, {5, 255}, {2, 257}, {33, 161}, {1, 1000}}) {
      auto t = random_ternary(rng, size_t(rows * cols));
      auto m = pack_ternary(t.data(), rows, cols, f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(ternary_at(m, r, c), t[size_t(r * cols + c)]);
      std::vector<int8_t> row(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        unpack_row(m, r, row.data());
        ASSERT_TRUE(std::equal(row.begin(), row.end(), t.begin() + r * cols)) << format_name(f) << " row " << r;
      }
      // Into the other format and back: lossless.
      const TernaryFormat g = f == TernaryFormat::TQ2 ? TernaryFormat::TQ1 : TernaryFormat::TQ2;
      auto back = convert_format(convert_format(m, g), f);
      ASSERT_EQ(std::memcmp(back.data, m.data, m.nbytes()), 0) << format_name(f) << " " << rows << "x" << cols;
    }
}

TEST(Formats, TernarizeAbsmean) {
  // mean|W| = 0.5, so s_w = 2: 0.2 -> round(0.4) = 0, 0.3 -> round(0.6) = 1, -2 -> -1.
  std::vector<float> w = {0.2f, 0.3f, -2.0f, 0.0f, -0.3f, 0.2f};
  auto m = quantize_ternary(w.data(), 2, 3, TernaryFormat::TQ2);
  EXPECT_FLOAT_EQ(m.scale, 0.5f);
  const int expect[6] = {0, 1, -1, 0, -1, 0};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ternary_at(m, i / 3, i % 3), expect[i]) << i;
  // All-zero weights: the scale clamps to 1e-5 rather than dividing by zero.
  std::vector<float> z(10, 0.0f);
  EXPECT_FLOAT_EQ(quantize_ternary(z.data(), 1, 10, TernaryFormat::TQ1).scale, 1e-5f);
}

// ---- file layouts ----------------------------------------------------------------------------

const TernaryFileType kFileTypes[] = {TernaryFileType::I8, TernaryFileType::TQ2_0, TernaryFileType::TQ1_0};

TEST(FileTernary, RoundTripEveryWrittenType) {
  std::mt19937 rng(3);
  for (auto t : kFileTypes)
    for (int64_t cols : {256, 512, 2560, 6912}) {
      std::vector<uint8_t> d(static_cast<size_t>(cols)), back(static_cast<size_t>(cols));
      for (auto& x : d) x = uint8_t(rng() % 3);
      std::vector<uint8_t> row(static_cast<size_t>(file_row_bytes(t, cols)));
      encode_file_row(t, d.data(), cols, row.data());
      decode_file_row(t, row.data(), cols, back.data(), "test", 0);
      ASSERT_EQ(back, d) << uint32_t(t) << " cols=" << cols;
    }
  EXPECT_EQ(file_row_bytes(TernaryFileType::TQ2_0, 2560), 10 * 66);
  EXPECT_EQ(file_row_bytes(TernaryFileType::TQ1_0, 2560), 10 * 54);
  EXPECT_EQ(file_row_bytes(TernaryFileType::TQ1_0, 384), -1);  // not whole blocks
  EXPECT_EQ(file_type_for(TernaryFormat::TQ1, 384), TernaryFileType::I8);
  EXPECT_EQ(file_type_for(TernaryFormat::TQ1, 512), TernaryFileType::TQ1_0);
}

// ggml's bit orders, pinned: TQ2_0 byte 32h + m, bits 2n = weight 128h + 32n + m; TQ1_0 byte m
// = ceil(v * 256 / 243) of the digits of weights m + 32n, first most significant.
TEST(FileTernary, GgmlLayoutsAreAsDocumented) {
  std::vector<uint8_t> d(256, 1), row(66);
  d[0] = 2;              // h=0, n=0, m=0: byte 0 bits 0-1
  d[128 + 32 * 3 + 5] = 0;  // h=1, n=3, m=5: byte 37 bits 6-7
  encode_file_row(TernaryFileType::TQ2_0, d.data(), 256, row.data());
  EXPECT_EQ(row[0], 0b01010110);
  EXPECT_EQ(row[37], 0b00010101);
  EXPECT_EQ(row[64], 0x00);  // f16 1.0 = 0x3C00, little-endian
  EXPECT_EQ(row[65], 0x3C);

  std::vector<uint8_t> q(54);
  std::fill(d.begin(), d.end(), 1);
  d[0] = 2;  // byte 0: digits (2,1,1,1,1) = 202
  d[240 + 1 + 4 * 2] = 0;  // qh[1]: digits (1,1,0,1) then a 0: v = ((1*3+1)*3+0)*3+1)*3 = 111
  encode_file_row(TernaryFileType::TQ1_0, d.data(), 256, q.data());
  EXPECT_EQ(q[0], (202 * 256 + 242) / 243);
  EXPECT_EQ(q[48 + 1], (111 * 256 + 242) / 243);
  EXPECT_EQ(q[52], 0x00);
  EXPECT_EQ(q[53], 0x3C);
}

// mmfree's first file layouts (types 1024 / 1025) are still read.
TEST(FileTernary, ReadsTheFirstReleaseLayouts) {
  // 1024: byte j, bits 2k = digit of column 64k + j.
  std::vector<uint8_t> row(64, 0b01010101), d(100);
  row[3] = 0b01010110;   // column 3 = 2
  row[1] = 0b00010101;   // column 192 + 1 would be 0, but the row has 100 columns
  row[2] = 0b01000101;   // column 64 * 2 + 2 = 130: outside too
  row[10] = 0b01010001;  // column 64 + 10 = 74 -> 0
  decode_file_row(TernaryFileType::MMFREE_TQ2, row.data(), 100, d.data(), "t", 0);
  for (int c = 0; c < 100; ++c) ASSERT_EQ(d[size_t(c)], c == 3 ? 2 : c == 74 ? 0 : 1) << c;
  // 1025: byte j = digits of columns 32k + j as in TQ1_0.
  std::vector<uint8_t> q(32, uint8_t((121 * 256 + 242) / 243)), e(160);
  q[7] = uint8_t((202 * 256 + 242) / 243);  // column 7 = 2
  decode_file_row(TernaryFileType::MMFREE_TQ1, q.data(), 160, e.data(), "t", 0);
  for (int c = 0; c < 160; ++c) ASSERT_EQ(e[size_t(c)], c == 7 ? 2 : 1) << c;
}

TEST(FileTernary, RefusesWhatIsNotExactlyTernary) {
  std::vector<uint8_t> d(256, 1), row(66), out(256);
  encode_file_row(TernaryFileType::TQ2_0, d.data(), 256, row.data());
  row[64] = 0x00, row[65] = 0x40;  // block scale 2.0
  EXPECT_THAT(error_of([&] { decode_file_row(TernaryFileType::TQ2_0, row.data(), 256, out.data(), "f.gguf: tensor 'w'", 7); }),
              HasSubstr("f.gguf: tensor 'w', row 7: TQ2_0 block 0 has scale 2"));
  encode_file_row(TernaryFileType::TQ2_0, d.data(), 256, row.data());
  row[40] = 0xFF;  // 2-bit fields of value 3
  EXPECT_THAT(error_of([&] { decode_file_row(TernaryFileType::TQ2_0, row.data(), 256, out.data(), "w", 0); }),
              HasSubstr("invalid 2-bit value 3"));
  std::vector<uint8_t> q(54);
  encode_file_row(TernaryFileType::TQ1_0, d.data(), 256, q.data());
  q[53] = 0xBC;  // scale -1.0
  EXPECT_THAT(error_of([&] { decode_file_row(TernaryFileType::TQ1_0, q.data(), 256, out.data(), "w", 0); }),
              HasSubstr("TQ1_0 block 0 has scale -1"));
  std::vector<uint8_t> i8(5, 0);
  i8[4] = uint8_t(int8_t(-2));
  EXPECT_THAT(error_of([&] { decode_file_row(TernaryFileType::I8, i8.data(), 5, out.data(), "w", 3); }),
              HasSubstr("w, row 3: I8 value -2 at column 4 is not -1, 0 or 1"));
  std::vector<uint8_t> legacy(64, 0xFF);
  EXPECT_THAT(error_of([&] { decode_file_row(TernaryFileType::MMFREE_TQ2, legacy.data(), 256, out.data(), "w", 0); }),
              HasSubstr("invalid 2-bit value 3"));
}

// ---- the fast repack (kernels/repack.hpp) against the scalar codecs ---------------------------

TEST(Repack, FastDecodeEqualsScalarForEveryType) {
  std::mt19937 rng(9);
  for (auto t : {TernaryFileType::I8, TernaryFileType::TQ2_0, TernaryFileType::TQ1_0, TernaryFileType::MMFREE_TQ2,
                 TernaryFileType::MMFREE_TQ1})
    for (int64_t cols : {256, 1280, 2560, 6912, 2816, 320, 1000}) {
      const int64_t rb = file_row_bytes(t, cols);
      if (rb < 0) continue;
      std::vector<uint8_t> d(static_cast<size_t>(cols)), row(static_cast<size_t>(rb));
      for (auto& x : d) x = uint8_t(rng() % 3);
      encode_file_row(t, d.data(), cols, row.data());
      for (int64_t c0 = 0; c0 < cols; c0 += 1280) {  // whole rows and 1280-column ranges
        const int64_t c1 = std::min(cols, c0 + 1280);
        std::vector<uint8_t> got(static_cast<size_t>(c1 - c0), 7);
        kernels::decode_file_row_fast(t, row.data(), cols, c0, c1, got.data(), "w", 0);
        ASSERT_TRUE(std::equal(got.begin(), got.end(), d.begin() + c0)) << uint32_t(t) << " cols=" << cols << " c0=" << c0;
      }
    }
}

TEST(Repack, FastDecodeReportsTheScalarErrors) {
  std::vector<uint8_t> d(2560, 1), row(static_cast<size_t>(file_row_bytes(TernaryFileType::TQ2_0, 2560))), out(1280);
  encode_file_row(TernaryFileType::TQ2_0, d.data(), 2560, row.data());
  row[66 * 7 + 64] = 0x00, row[66 * 7 + 65] = 0x40;  // block 7 (in the second 1280-column range): scale 2
  EXPECT_THAT(error_of([&] { kernels::decode_file_row_fast(TernaryFileType::TQ2_0, row.data(), 2560, 1280, 2560, out.data(), "t", 3); }),
              HasSubstr("t, row 3: TQ2_0 block 7 has scale 2"));
  encode_file_row(TernaryFileType::TQ2_0, d.data(), 2560, row.data());
  row[66 * 2 + 10] = 0xFF;
  EXPECT_THAT(error_of([&] { kernels::decode_file_row_fast(TernaryFileType::TQ2_0, row.data(), 2560, 0, 1280, out.data(), "t", 0); }),
              HasSubstr("TQ2_0 block 2 holds the invalid 2-bit value 3"));
}

TEST(Repack, FastEncodeEqualsEncodeRow) {
  std::mt19937 rng(10);
  for (auto f : kFormats)
    for (int64_t chunks : {1, 7, 8, 9, 10, 11, 64, 80, 83}) {
      const int64_t ld = chunks * chunk_cols(f) + 4;
      std::vector<uint8_t> d(size_t(16 * ld));
      for (auto& x : d) x = uint8_t(rng() % 3);
      std::vector<uint8_t> want(size_t(chunks * 64)), got(size_t(chunks * 64), 0xAB);
      for (int i = 0; i < 16; ++i) encode_row(f, d.data() + i * ld, chunks, want.data(), i);
      kernels::encode_strip(f, d.data(), ld, chunks, got.data());
      ASSERT_EQ(got, want) << format_name(f) << " chunks=" << chunks;
    }
}

}  // namespace tests_formats
