// Selection of critical blocks (docs/methods.md) on hand-made block scores: the
// cumulative-p rule, the top-k floor, how the text column counts, the tie-break, neighbours, text
// blocks, the first-frame square, the band and the local selector, and the CSR mask built from
// crit(i).
#include <gtest/gtest.h>

#include "spaattn/error.hpp"
#include "spaattn/stages.hpp"
#include "cpu/reference.hpp"

namespace spaattn::test {
namespace {

// A call with nv video blocks of 64 tokens and nt text tokens (one text block when nt > 0); the
// tensor contents do not matter to the selection.
void make_call(Problem& p, int64_t nv, int64_t nt, int64_t heads = 1) {
  Layout L;
  L.num_video = nv * 64;
  L.num_text = nt;
  L.block_size = 64;
  make_problem(p, DType::f32, 1, heads, 64, L, 3);
}

// Scores whose every row (all heads) is `row` (nv + 1 values, the text column last).
BlockScores scores_of(int64_t heads, const std::vector<float>& row) {
  BlockScores s;
  s.batch = 1;
  s.heads = heads;
  s.blocks = static_cast<int64_t>(row.size()) - 1;
  for (int64_t r = 0; r < heads * s.blocks; ++r) s.P.insert(s.P.end(), row.begin(), row.end());
  return s;
}

Config ipar_config(double sparsity, double p) {
  Config cfg;
  cfg.select.selector = Selector::ipar;
  cfg.select.sparsity = sparsity;
  cfg.select.p = p;
  return cfg;
}

// crit(i) of head h as a list of video block indices.
std::vector<int32_t> crit_of(const Selection& sel, int64_t nv, int64_t h, int64_t i) {
  std::vector<int32_t> out;
  for (int64_t j = 0; j < nv; ++j)
    if (sel.critical[(h * nv + i) * nv + j]) out.push_back(static_cast<int32_t>(j));
  return out;
}

using Blocks = std::vector<int32_t>;

TEST(Select, KeptVideoBlocksIsTheIntendedFloor) {
  EXPECT_EQ(kept_video_blocks(0.9, 10), 1);  // (1 - 0.9) * 10 = 0.9999999999999998 in doubles
  EXPECT_EQ(kept_video_blocks(0.75, 7), 1);
  EXPECT_EQ(kept_video_blocks(0.0, 5), 5);
  EXPECT_EQ(kept_video_blocks(0.8895, 300), 33);
}

TEST(Select, KeepsTheCumulativePrefixPlusOne) {
  Problem p;
  make_call(p, 5, 0);
  const BlockScores s = scores_of(1, {0.05f, 0.5f, 0.1f, 0.15f, 0.2f, 0.f});
  // Sorted: 1 (0.5), 4 (0.2), 3 (0.15), 2 (0.1), 0 (0.05); k = floor(0.01 * 5) = 0.
  EXPECT_EQ(crit_of(cpu::select_blocks(p.args, ipar_config(0.99, 0.3), &s, nullptr), 5, 0, 0),
            (Blocks{1}));
  EXPECT_EQ(crit_of(cpu::select_blocks(p.args, ipar_config(0.99, 0.6), &s, nullptr), 5, 0, 0),
            (Blocks{1, 4}));
  EXPECT_EQ(crit_of(cpu::select_blocks(p.args, ipar_config(0.99, 0.8), &s, nullptr), 5, 0, 0),
            (Blocks{1, 3, 4}));
  EXPECT_EQ(crit_of(cpu::select_blocks(p.args, ipar_config(0.99, 1.0), &s, nullptr), 5, 0, 0),
            (Blocks{0, 1, 2, 3, 4}));
}

TEST(Select, NeverKeepsFewerThanKVideoBlocks) {
  Problem p;
  make_call(p, 5, 0);
  const BlockScores s = scores_of(1, {0.05f, 0.5f, 0.1f, 0.15f, 0.2f, 0.f});
  // k = floor(0.6 * 5) = 3 > the 1 entry that p = 0.3 keeps: the next ones in sorted order.
  EXPECT_EQ(crit_of(cpu::select_blocks(p.args, ipar_config(0.4, 0.3), &s, nullptr), 5, 0, 0),
            (Blocks{1, 3, 4}));
}

TEST(Select, TextColumnTakesAPlaceInThePrefixButNotInK) {
  Problem p;
  make_call(p, 5, 20);
  const BlockScores s = scores_of(1, {0.1f, 0.05f, 0.05f, 0.05f, 0.05f, 0.7f});
  // The text column alone exceeds p: the kept prefix is {text}, no video block (k = 0) ...
  Selection sel = cpu::select_blocks(p.args, ipar_config(0.99, 0.3), &s, nullptr);
  EXPECT_EQ(crit_of(sel, 5, 0, 0), Blocks{});
  // ... and the mask row still lists the text block (logical id 5).
  EXPECT_EQ(sel.mask.row_offsets[1] - sel.mask.row_offsets[0], 1);
  EXPECT_EQ(sel.mask.col_indices[0], 5);
  // k = 2 counts video blocks only: block 0, then the lowest index among the tied 0.05s.
  sel = cpu::select_blocks(p.args, ipar_config(0.6, 0.3), &s, nullptr);
  EXPECT_EQ(crit_of(sel, 5, 0, 0), (Blocks{0, 1}));
}

TEST(Select, TiesGoToTheLowerBlockIndex) {
  Problem p;
  make_call(p, 5, 10);
  const float sixth = 1.f / 6.f;
  const BlockScores s = scores_of(1, std::vector<float>(6, sixth));
  // cumsum 1/6 <= 0.3 < 2/6: two entries, the two lowest indices.
  EXPECT_EQ(crit_of(cpu::select_blocks(p.args, ipar_config(0.99, 0.3), &s, nullptr), 5, 0, 3),
            (Blocks{0, 1}));
  // With every entry kept the text column (index 5) comes last, after all five video blocks.
  EXPECT_EQ(crit_of(cpu::select_blocks(p.args, ipar_config(0.99, 0.7), &s, nullptr), 5, 0, 3),
            (Blocks{0, 1, 2, 3, 4}));
}

TEST(Select, EachHeadSelectsOnItsOwnScores) {
  Problem p;
  make_call(p, 4, 0, 2);
  BlockScores s = scores_of(2, {0.7f, 0.1f, 0.1f, 0.1f, 0.f});
  for (int64_t i = 0; i < 4; ++i) {
    float* P = s.P.data() + s.row(0, 1, i);
    std::swap(P[0], P[3]);
  }
  const Selection sel = cpu::select_blocks(p.args, ipar_config(0.99, 0.3), &s, nullptr);
  EXPECT_EQ(crit_of(sel, 4, 0, 2), Blocks{0});
  EXPECT_EQ(crit_of(sel, 4, 1, 2), Blocks{3});
}

TEST(Select, AddsNeighboursTextBlocksAndTheFirstFrameSquare) {
  Problem p;
  make_call(p, 6, 100);  // text blocks 6 and 7
  const BlockScores s = scores_of(1, {0.9f, 0.02f, 0.02f, 0.02f, 0.02f, 0.02f, 0.f});
  const std::vector<std::vector<int32_t>> neighbours = {{0, 1},    {0, 1, 2}, {2, 3},
                                                        {2, 3, 4}, {3, 4, 5}, {4, 5}};
  Config cfg = ipar_config(0.99, 0.3);
  cfg.select.neighbours = false;
  EXPECT_EQ(crit_of(cpu::select_blocks(p.args, cfg, &s, &neighbours), 6, 0, 3), Blocks{0});
  cfg.select.neighbours = true;
  cfg.select.first_frame_blocks = 2;
  const Selection sel = cpu::select_blocks(p.args, cfg, &s, &neighbours);
  EXPECT_EQ(crit_of(sel, 6, 0, 3), (Blocks{0, 2, 3, 4}));
  EXPECT_EQ(crit_of(sel, 6, 0, 1), (Blocks{0, 1, 2}));  // square rows i < F see j < F
  EXPECT_EQ(crit_of(sel, 6, 0, 2), (Blocks{0, 2, 3}));  // no square for i >= F
  EXPECT_EQ(crit_of(sel, 6, 0, 5), (Blocks{0, 4, 5}));
  // The mask: crit(i) then both text blocks for video rows, everything for text rows.
  const std::vector<uint8_t> dense = sel.mask.to_dense();
  ASSERT_EQ(sel.mask.num_q_blocks, 8);
  for (int64_t i = 0; i < 8; ++i)
    for (int64_t j = 0; j < 8; ++j) {
      const bool want = i >= 6 || j >= 6 || sel.critical[i * 6 + j];
      EXPECT_EQ(dense[i * 8 + j] != 0, want) << i << " " << j;
    }
}

TEST(Select, BandKeepsHalfOfKOnEachSide) {
  Problem p;
  make_call(p, 10, 30);
  Config cfg;
  cfg.method = Method::rettention;  // automatic selector: band
  cfg.select.neighbours = false;
  cfg.select.sparsity = 0.5;  // k = 5, half width 2
  Selection sel = cpu::select_blocks(p.args, cfg, nullptr, nullptr);
  for (int64_t i = 0; i < 10; ++i)
    for (int64_t j = 0; j < 10; ++j)
      EXPECT_EQ(sel.critical[i * 10 + j], std::abs(i - j) <= 2 ? 1 : 0) << i << " " << j;
  cfg.select.sparsity = 0.95;  // k = 0: the diagonal alone
  sel = cpu::select_blocks(p.args, cfg, nullptr, nullptr);
  for (int64_t i = 0; i < 10; ++i)
    EXPECT_EQ(crit_of(sel, 10, 0, i), Blocks{static_cast<int32_t>(i)});
}

TEST(Select, LocalIsTheNeighbourMapAlone) {
  Problem p;
  make_call(p, 4, 0);
  Config cfg;
  cfg.select.selector = Selector::local;
  cfg.select.neighbours = false;  // local uses the map regardless
  cfg.order.grid = Grid{1, 16, 16};
  const std::vector<std::vector<int32_t>> neighbours = {{0, 2}, {1}, {0, 2, 3}, {1, 3}};
  const Selection sel = cpu::select_blocks(p.args, cfg, nullptr, &neighbours);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(crit_of(sel, 4, 0, i), neighbours[i]);
  EXPECT_THROW(cpu::select_blocks(p.args, cfg, nullptr, nullptr), Error);
}

TEST(Select, RejectsMissingOrMismatchedInputs) {
  Problem p;
  make_call(p, 4, 0);
  EXPECT_THROW(cpu::select_blocks(p.args, ipar_config(0.5, 0.3), nullptr, nullptr), Error);
  const BlockScores wrong = scores_of(1, {0.2f, 0.2f, 0.2f, 0.4f});  // 3 blocks, not 4
  EXPECT_THROW(cpu::select_blocks(p.args, ipar_config(0.5, 0.3), &wrong, nullptr), Error);
  const BlockScores s = scores_of(1, {0.2f, 0.2f, 0.2f, 0.2f, 0.2f});
  const std::vector<std::vector<int32_t>> short_map = {{0}, {1}};
  EXPECT_THROW(cpu::select_blocks(p.args, ipar_config(0.5, 0.3), &s, &short_map), Error);
}

}  // namespace
}  // namespace spaattn::test
