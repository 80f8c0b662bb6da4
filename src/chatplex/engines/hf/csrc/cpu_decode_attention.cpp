// Decode attention over the paged KV cache on an AVX-512 CPU with bfloat16 dot products (AVX512_BF16), as the op
// chatplex::cpu_decode_attention; built and loaded at start by cpu_decode_kernel.py, which says why and when.
//
// One task per (sequence, KV head): its query heads' scores over the context 16 positions at a time (a vector of
// partial dot products per position, then one transpose-and-add for all 16, instead of a horizontal sum per
// score), a float32 softmax, and the values summed in float32 registers. Each sequence reads only its own context,
// so its result does not depend on the rest of the batch.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace {

using at::BFloat16;
using fVec = at::vec::Vectorized<float>;

// Calls so far (tests: a compiled step calls the op from C++, where no profiler sees it).
std::atomic<int64_t> calls{0};

constexpr int kPositions = 16;  // positions scored together: one float32 vector of scores

// 16 vectors of partial sums -> one vector whose lane i is the total of v[i].
inline __m512 sum16(const __m512* v) {
  __m512 x[8], z[4];
  for (int i = 0; i < 8; ++i)
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    z[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xEE));
  const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xDD));
  const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(z[2], z[3], 0x88), _mm512_shuffle_f32x4(z[2], z[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xDD));
}

inline __m512 widen(const BFloat16* p) {  // 16 bfloat16 -> float32 (exact)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

struct Task {
  const BFloat16* q;  // the group's first query head
  int64_t q_head_stride;
  int64_t group;  // query heads per KV head
  const BFloat16* k;  // the KV head's row in slot 0
  const BFloat16* v;
  int64_t slot_stride;
  const int32_t* blocks;  // the sequence's block-table row
  int64_t block_size;  // a multiple of kPositions, so a group of 16 positions never leaves its block
  int64_t first, len;  // attend to positions [first, len)
  float scale;
  BFloat16* out;  // [group, D]
};

inline int64_t slot_of(const Task& t, int64_t pos) {
  return int64_t(t.blocks[pos / t.block_size]) * t.block_size + pos % t.block_size;
}

// Scores of one query head over [start, end) in groups of 16 (positions outside [first, len) -> -inf), then their
// softmax, in place.
template <int D>
void softmax_scores(const Task& t, const BFloat16* q, int64_t start, int64_t end, float* s) {
  constexpr int C = D / 32;
  __m512bh qv[C];
  for (int c = 0; c < C; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q + 32 * c);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t p = start; p < end; p += kPositions) {
    // Positions past `len` in the last block are read and then hidden: the cache holds whatever (even NaN) there,
    // and each lane's sum is its own position's.
    const BFloat16* k = t.k + slot_of(t, p) * t.slot_stride;
    __m512 part[kPositions];
    for (int i = 0; i < kPositions; ++i) {
      __m512 a = _mm512_setzero_ps();
      for (int c = 0; c < C; ++c)
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(k + i * t.slot_stride + 32 * c), qv[c]);
      part[i] = a;
    }
    const __m512i pos = _mm512_add_epi32(_mm512_set1_epi32(int(p)), lanes);
    const __mmask16 seen = _mm512_cmplt_epi32_mask(pos, _mm512_set1_epi32(int(t.len))) &
                           _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32(int(t.first)));
    const __m512 scores = _mm512_mask_blend_ps(seen, _mm512_set1_ps(-INFINITY),
                                               _mm512_mul_ps(sum16(part), _mm512_set1_ps(t.scale)));
    _mm512_storeu_ps(s + (p - start), scores);
    top = _mm512_max_ps(top, scores);
  }
  const fVec most(_mm512_reduce_max_ps(top));
  fVec total(0.f);
  for (int64_t i = 0; i < end - start; i += kPositions) {
    const fVec e = (fVec::loadu(s + i) - most).exp_u20();
    e.store(s + i);
    total = total + e;
  }
  const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(total));
  for (int64_t i = 0; i < end - start; i += kPositions)
    _mm512_storeu_ps(s + i, _mm512_mul_ps(_mm512_loadu_ps(s + i), inv));
}

template <int D>
void attend(const Task& t, std::vector<float>& scores) {
  const int64_t start = t.first - t.first % kPositions;
  const int64_t end = (t.len + kPositions - 1) / kPositions * kPositions;
  const int64_t n = end - start;
  scores.resize(t.group * n);
  for (int64_t g = 0; g < t.group; ++g)
    softmax_scores<D>(t, t.q + g * t.q_head_stride, start, end, scores.data() + g * n);
  // The weighted sum of values, H query heads at a time: their D floats each, and a row of values, stay in the 32
  // vector registers (4 heads at D 64, 2 at 128, 1 at 256).
  constexpr int V = D / 16;
  constexpr int H = std::max(1, 256 / D);
  for (int64_t g0 = 0; g0 < t.group; g0 += H) {
    const int heads = int(std::min<int64_t>(H, t.group - g0));
    __m512 acc[H][V];
    for (int g = 0; g < H; ++g)
      for (int c = 0; c < V; ++c) acc[g][c] = _mm512_setzero_ps();
    for (int64_t p = t.first; p < t.len; ++p) {
      const BFloat16* v = t.v + slot_of(t, p) * t.slot_stride;
      __m512 row[V];
      for (int c = 0; c < V; ++c) row[c] = widen(v + 16 * c);
      for (int g = 0; g < heads; ++g) {
        const __m512 w = _mm512_set1_ps(scores[(g0 + g) * n + (p - start)]);
        for (int c = 0; c < V; ++c) acc[g][c] = _mm512_fmadd_ps(w, row[c], acc[g][c]);
      }
    }
    for (int g = 0; g < heads; ++g)
      for (int c = 0; c < V; ++c)  // round to nearest even, as torch's float -> bfloat16
        _mm256_storeu_si256((__m256i*)(t.out + (g0 + g) * D + 16 * c), (__m256i)_mm512_cvtneps_pbh(acc[g][c]));
  }
}

using AttendFn = void (*)(const Task&, std::vector<float>&);

AttendFn attend_for(int64_t head_dim) {
  switch (head_dim) {
    case 64: return attend<64>;
    case 96: return attend<96>;
    case 128: return attend<128>;
    case 256: return attend<256>;
    default: return nullptr;
  }
}

at::Tensor cpu_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale,
                                int64_t block_size, int64_t window) {
  // q [B, heads, D]; caches [slots, kv_heads, D]; block_tables [B, width] int32; seq_lens [B] int32
  calls.fetch_add(1, std::memory_order_relaxed);
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k_cache.scalar_type() == at::kBFloat16 &&
                  v_cache.scalar_type() == at::kBFloat16, "cpu_decode_attention: bfloat16 query and cache only");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && q.stride(2) == 1, "cpu_decode_attention: layout");
  TORCH_CHECK(block_size % kPositions == 0, "cpu_decode_attention: block size must be a multiple of 16");
  const int64_t batch = q.size(0), heads = q.size(1), head_dim = q.size(2), kv_heads = k_cache.size(1);
  const AttendFn fn = attend_for(head_dim);
  TORCH_CHECK(fn != nullptr, "cpu_decode_attention: head dim ", head_dim, " not built");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && k_cache.sizes() == v_cache.sizes() &&
                  k_cache.size(2) == head_dim && kv_heads > 0 && heads % kv_heads == 0,
              "cpu_decode_attention: q [B, heads, D], caches [slots, kv_heads, D], heads a multiple of kv_heads");
  const auto tables = block_tables.to(at::kInt).contiguous();
  const auto lens = seq_lens.to(at::kInt).contiguous();
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == batch && lens.numel() == batch,
              "cpu_decode_attention: a block-table row and a length per sequence");
  // Every position read (up to the next multiple of 16) must lie in a table column and a cache block: checked in
  // plain loops, as tensor ops would cost more dispatch than the attention of a short context.
  const int64_t blocks_in_cache = k_cache.size(0) / block_size;
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t len = lens.data_ptr<int32_t>()[b];
    TORCH_CHECK(len >= 0 && len <= tables.size(1) * block_size, "cpu_decode_attention: a context of ", len,
                " positions with ", tables.size(1), " table columns");
    for (int64_t c = 0; c < (len + block_size - 1) / block_size; ++c) {
      const int32_t id = tables.data_ptr<int32_t>()[b * tables.size(1) + c];
      TORCH_CHECK(id >= 0 && id < blocks_in_cache, "cpu_decode_attention: block id ", id, " outside the cache");
    }
  }
  auto out = at::empty({batch, heads, head_dim}, q.options());
  const int64_t group = heads / kv_heads, width = tables.size(1);
  const auto* qp = q.data_ptr<BFloat16>();
  const auto* kp = k_cache.data_ptr<BFloat16>();
  const auto* vp = v_cache.data_ptr<BFloat16>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  auto* op = out.data_ptr<BFloat16>();
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, h = task % kv_heads, len = lp[b];
      const Task t{qp + b * q.stride(0) + h * group * q.stride(1), q.stride(1), group, kp + h * head_dim,
                   vp + h * head_dim, kv_heads * head_dim, tp + b * width, block_size,
                   window > 0 ? std::max<int64_t>(0, len - window) : 0, len, float(scale),
                   op + (b * heads + h * group) * head_dim};
      fn(t, scores);
    }
  });
  return out;
}

int64_t cpu_decode_attention_calls() { return calls.load(std::memory_order_relaxed); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(chatplex, m) {
  m.def("cpu_decode_attention_calls() -> int", &cpu_decode_attention_calls);
  m.def(
      "cpu_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, "
      "float scale, int block_size, int window) -> Tensor");
}

TORCH_LIBRARY_IMPL(chatplex, CPU, m) { m.impl("cpu_decode_attention", &cpu_decode_attention); }
