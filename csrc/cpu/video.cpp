// Video-frame ops on the CPU: CLIP pre-processing of uint8 frames and slow/fast feature pooling.
//
// clip_preprocess reproduces, in one fused multithreaded pass, what transformers'
// CLIPImageProcessor does with PIL: resize the shortest side to `size` with PIL's antialiased
// bicubic filter (a = -0.5, support widened by the downscale factor, two separable passes in
// 22-bit fixed point with rounding and clipping to uint8 after each pass), centre crop, rescale
// and normalise. Only the pixels inside the crop are ever computed: the horizontal pass runs over
// the crop's columns and the input rows that the crop's output rows read, the vertical pass over
// the crop's rows; the final uint8 -> float step repeats transformers' float arithmetic (a table per
// channel, or the same IEEE operations in vectors). Each pass has an AVX2 kernel, chosen at run
// time, and a portable one; both give the same bytes.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace slotvlm {
namespace {

// ---------------------------------------------------------------------------------------------
// PIL-compatible resampling coefficients (Pillow's libImaging/Resample.c, re-derived here).
// ---------------------------------------------------------------------------------------------
constexpr int kPrecisionBits = 32 - 8 - 2;  // fixed-point bits used by PIL for 8-bit images
constexpr double kBicubicA = -0.5;
constexpr double kBicubicSupport = 2.0;

inline double bicubic(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((kBicubicA + 2.0) * x - (kBicubicA + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * kBicubicA;
  return 0.0;
}

// Filter taps of output positions [out0, out0 + count) of a resize from in_size to out_size.
struct Taps {
  int64_t ksize = 0;
  std::vector<int64_t> first;  // first input index read by each output position
  std::vector<int64_t> len;    // number of taps actually used
  std::vector<int32_t> w;      // [count, ksize] fixed-point weights
};

Taps make_taps(int64_t in_size, int64_t out_size, int64_t out0, int64_t count) {
  Taps t;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = kBicubicSupport * filterscale;
  t.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  t.first.resize(count);
  t.len.resize(count);
  t.w.assign(static_cast<size_t>(count * t.ksize), 0);
  std::vector<double> k(static_cast<size_t>(t.ksize));
  const double ss = 1.0 / filterscale;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t xx = out0 + i;
    const double center = (static_cast<double>(xx) + 0.5) * scale;
    // C-style truncation, as PIL does, then clamping to the image.
    int64_t xmin = static_cast<int64_t>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int64_t xmax = static_cast<int64_t>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int64_t x = 0; x < xmax; ++x) {
      k[x] = bicubic((static_cast<double>(x + xmin) - center + 0.5) * ss);
      ww += k[x];
    }
    int32_t* wi = t.w.data() + i * t.ksize;
    for (int64_t x = 0; x < xmax; ++x) {
      const double v = (ww != 0.0 ? k[x] / ww : k[x]) * static_cast<double>(1 << kPrecisionBits);
      wi[x] = static_cast<int32_t>(v < 0 ? -0.5 + v : 0.5 + v);
    }
    t.first[i] = xmin;
    t.len[i] = xmax;
  }
  return t;
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline uint8_t clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// The resized size of the shortest-edge rule used by transformers: the short side becomes `size`,
// the long side int(size * long / short) (truncated, computed in double like Python's `/`).
std::pair<int64_t, int64_t> shortest_edge_size(int64_t h, int64_t w, int64_t size) {
  const bool portrait = w <= h;
  const int64_t s = portrait ? w : h;
  const int64_t l = portrait ? h : w;
  const int64_t nl = static_cast<int64_t>(static_cast<double>(size) * static_cast<double>(l) / static_cast<double>(s));
  return portrait ? std::make_pair(nl, size) : std::make_pair(size, nl);
}

// ---- the two resampling passes, each with a portable version and an AVX2 one ----------------
// Both versions give identical bytes (the same integer arithmetic). tmp rows are planar [3][C].

// Horizontal pass of one input row (interleaved RGB) into a planar row out[3][C].
void hpass_row_scalar(const uint8_t* line, const Taps& th, int64_t C, uint8_t* out) {
  for (int64_t x = 0; x < C; ++x) {
    const int32_t* k = th.w.data() + x * th.ksize;
    const uint8_t* p = line + th.first[x] * 3;
    int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
    for (int64_t i = 0, n = th.len[x]; i < n; ++i) {
      s0 += p[3 * i + 0] * k[i];
      s1 += p[3 * i + 1] * k[i];
      s2 += p[3 * i + 2] * k[i];
    }
    out[x] = clip8(s0);
    out[C + x] = clip8(s1);
    out[2 * C + x] = clip8(s2);
  }
}

// Vertical pass of one output row: out_row[c][x] = table[c][clip8(sum_i k[i] * rows[i][c][x])].
template <typename scalar_t>
void vpass_row_scalar(const uint8_t* base, int64_t n, const int32_t* k, int64_t C, const scalar_t* table,
                      scalar_t* out, int64_t plane) {
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t x = 0; x < C; ++x) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int64_t i = 0; i < n; ++i) s += base[i * 3 * C + c * C + x] * k[i];
      out[c * plane + x] = table[c * 256 + clip8(s)];
    }
  }
}

constexpr int64_t kLanes = 16;  // input rows handled together by the AVX2 horizontal pass

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SLOTVLM_HAVE_AVX2_KERNELS 1
// Narrows two vectors of 8 fixed-point sums to 16 bytes, in order.
// clip8 == saturate(v >> 22): negative -> 0, >= 255 << 22 -> 255.
__attribute__((target("avx2"))) inline __m128i narrow_avx2(__m256i a0, __m256i a1) {
  __m256i w16 = _mm256_packs_epi32(_mm256_srai_epi32(a0, kPrecisionBits), _mm256_srai_epi32(a1, kPrecisionBits));
  w16 = _mm256_permute4x64_epi64(w16, 0xD8);
  return _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
}

// Horizontal pass of kLanes input rows at once. The needed columns are first transposed into
// buf[NJ][kLanes] of 32-bit RGBX pixels (8x8 int32 transposes), so that one output column of all
// kLanes rows is a sum over taps of two vectors per channel.
__attribute__((target("avx2"))) void hpass_block_avx2(const uint8_t* const* lines, int64_t nr, const Taps& th, int64_t C,
                                                      int64_t j0, int64_t NJ, int64_t W, uint32_t* buf,
                                                      uint8_t* const* outs) {
  const __m128i rgbx = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
  // Columns j with (j0 + j + 8) * 3 + 4 <= W * 3 can be read 16 bytes at a time inside the row.
  int64_t nvec = 0;
  while (nvec + 8 <= NJ && (j0 + nvec + 8) * 3 + 4 <= W * 3) nvec += 8;
  for (int64_t g = 0; g < kLanes / 8; ++g) {
    const uint8_t* rows[8];
    for (int64_t l = 0; l < 8; ++l) rows[l] = lines[std::min(g * 8 + l, nr - 1)] + j0 * 3;
    for (int64_t j = 0; j < nvec; j += 8) {
      __m256i r[8];
      for (int l = 0; l < 8; ++l) {
        const uint8_t* q = rows[l] + j * 3;
        const __m128i lo = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)), rgbx);
        const __m128i hi = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 12)), rgbx);
        r[l] = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
      }
      const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
      const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
      const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
      const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
      const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
      const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
      const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
      const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
      const __m256i cols[8] = {
          _mm256_permute2x128_si256(u0, u4, 0x20), _mm256_permute2x128_si256(u1, u5, 0x20),
          _mm256_permute2x128_si256(u2, u6, 0x20), _mm256_permute2x128_si256(u3, u7, 0x20),
          _mm256_permute2x128_si256(u0, u4, 0x31), _mm256_permute2x128_si256(u1, u5, 0x31),
          _mm256_permute2x128_si256(u2, u6, 0x31), _mm256_permute2x128_si256(u3, u7, 0x31)};
      uint32_t* b = buf + j * kLanes + g * 8;
      for (int k = 0; k < 8; ++k) _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + k * kLanes), cols[k]);
    }
    for (int64_t l = 0; l < 8; ++l) {
      for (int64_t j = nvec; j < NJ; ++j) {
        const uint8_t* q = rows[l] + j * 3;
        buf[j * kLanes + g * 8 + l] = uint32_t(q[0]) | (uint32_t(q[1]) << 8) | (uint32_t(q[2]) << 16);
      }
    }
  }
  const __m256i round = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  const __m256i m8 = _mm256_set1_epi32(0xFF);
  alignas(16) uint8_t res[3][kLanes];
  for (int64_t x = 0; x < C; ++x) {
    const int32_t* k = th.w.data() + x * th.ksize;
    const uint32_t* p = buf + (th.first[x] - j0) * kLanes;
    __m256i r0 = round, r1 = round, g0 = round, g1 = round, b0 = round, b1 = round;
    for (int64_t i = 0, n = th.len[x]; i < n; ++i) {
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * kLanes));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * kLanes + 8));
      const __m256i kk = _mm256_set1_epi32(k[i]);
      r0 = _mm256_add_epi32(r0, _mm256_mullo_epi32(_mm256_and_si256(v0, m8), kk));
      r1 = _mm256_add_epi32(r1, _mm256_mullo_epi32(_mm256_and_si256(v1, m8), kk));
      g0 = _mm256_add_epi32(g0, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(v0, 8), m8), kk));
      g1 = _mm256_add_epi32(g1, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(v1, 8), m8), kk));
      b0 = _mm256_add_epi32(b0, _mm256_mullo_epi32(_mm256_srli_epi32(v0, 16), kk));
      b1 = _mm256_add_epi32(b1, _mm256_mullo_epi32(_mm256_srli_epi32(v1, 16), kk));
    }
    _mm_store_si128(reinterpret_cast<__m128i*>(res[0]), narrow_avx2(r0, r1));
    _mm_store_si128(reinterpret_cast<__m128i*>(res[1]), narrow_avx2(g0, g1));
    _mm_store_si128(reinterpret_cast<__m128i*>(res[2]), narrow_avx2(b0, b1));
    for (int64_t l = 0; l < nr; ++l) {
      outs[l][x] = res[0][l];
      outs[l][C + x] = res[1][l];
      outs[l][2 * C + x] = res[2][l];
    }
  }
}

// Vertical pass of one output row, 16 columns per step. For float32 output the normalisation is
// computed in vectors with the same IEEE operations as the table (double multiply, rounding to
// float, float subtract and divide), so the values are identical; other dtypes use the table.
template <typename scalar_t>
__attribute__((target("avx2"))) void vpass_row_avx2(const uint8_t* base, int64_t n, const int32_t* k, int64_t C,
                                                    const scalar_t* table, scalar_t* out, int64_t plane,
                                                    const float* mean, const float* stdv, double scale) {
  const __m256i round = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  const __m256i zero = _mm256_setzero_si256(), v255 = _mm256_set1_epi32(255);
  const __m256d sc = _mm256_set1_pd(scale);
  alignas(32) int32_t res[16];
  for (int64_t c = 0; c < 3; ++c) {
    const scalar_t* tab = table + c * 256;
    const __m256 m = _mm256_set1_ps(mean[c]), sd = _mm256_set1_ps(stdv[c]);
    scalar_t* oc = out + c * plane;
    int64_t x = 0;
    for (; x + 16 <= C; x += 16) {
      __m256i a0 = round, a1 = round;
      const uint8_t* p = base + c * C + x;
      for (int64_t i = 0; i < n; ++i) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i * 3 * C));
        const __m256i kk = _mm256_set1_epi32(k[i]);
        a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(v), kk));
        a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)), kk));
      }
      if constexpr (std::is_same_v<scalar_t, float>) {
        const __m256i q[2] = {a0, a1};
        for (int h = 0; h < 2; ++h) {
          // clip8 == clamp(v >> 22, 0, 255)
          const __m256i u = _mm256_min_epi32(_mm256_max_epi32(_mm256_srai_epi32(q[h], kPrecisionBits), zero), v255);
          const __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(u)), sc));
          const __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(u, 1)), sc));
          const __m256 f = _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
          _mm256_storeu_ps(oc + x + 8 * h, _mm256_div_ps(_mm256_sub_ps(f, m), sd));
        }
      } else {
        _mm256_store_si256(reinterpret_cast<__m256i*>(res), a0);
        _mm256_store_si256(reinterpret_cast<__m256i*>(res + 8), a1);
        for (int l = 0; l < 16; ++l) oc[x + l] = tab[clip8(res[l])];
      }
    }
    for (; x < C; ++x) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int64_t i = 0; i < n; ++i) s += base[i * 3 * C + c * C + x] * k[i];
      oc[x] = tab[clip8(s)];
    }
  }
}
#endif

// Runs fn(begin, end) over [0, n) in pieces of `piece` handed out dynamically from an atomic
// counter: when a thread is slow (e.g. descheduled on a busy machine) the others take its share,
// instead of the whole op waiting for a static half of the work. `cost` is the work of one item
// (multiply-adds); each extra thread must get at least kMinThreadWork of it, because waking a
// thread costs far more than a small job on a loaded machine.
constexpr double kMinThreadWork = 4e6;

template <typename F>
void parallel_dynamic(int64_t n, int64_t piece, double cost, const F& fn) {
  if (n <= 0) return;
  const double by_work = std::floor(static_cast<double>(n) * cost / kMinThreadWork);
  const int64_t workers = std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), (n + piece - 1) / piece,
                                             static_cast<int64_t>(std::min(by_work, 1e6))});
  if (workers <= 1 || at::in_parallel_region()) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(piece); b < n; b = next.fetch_add(piece)) fn(b, std::min(n, b + piece));
  });
}

// AVX2 kernels are used when the CPU has them, unless SLOTVLM_DISABLE_AVX2=1 (tests compare both).
bool use_avx2() {
#ifdef SLOTVLM_HAVE_AVX2_KERNELS
  static const bool cpu_has = __builtin_cpu_supports("avx2");
  const char* env = std::getenv("SLOTVLM_DISABLE_AVX2");
  return cpu_has && !(env != nullptr && env[0] == '1');
#else
  return false;
#endif
}

}  // namespace

at::Tensor clip_preprocess(const at::Tensor& frames, int64_t size, int64_t crop_size, at::ArrayRef<double> mean,
                           at::ArrayRef<double> std, double scale, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(frames.dim() == 4 && frames.size(3) == 3,
                    "clip_preprocess: frames must be a uint8 tensor of shape [T, H, W, 3], got shape ", frames.sizes());
  TORCH_CHECK_VALUE(frames.scalar_type() == at::kByte, "clip_preprocess: frames must have dtype uint8, got ",
                    frames.scalar_type());
  TORCH_CHECK_VALUE(frames.device().is_cpu(), "clip_preprocess: frames must be on the CPU, got ", frames.device());
  TORCH_CHECK_VALUE(frames.size(1) > 0 && frames.size(2) > 0, "clip_preprocess: frames must have H > 0 and W > 0, got shape ",
                    frames.sizes());
  TORCH_CHECK_VALUE(size > 0 && size <= 16384, "clip_preprocess: size must be in [1, 16384], got ", size);
  TORCH_CHECK_VALUE(crop_size > 0 && crop_size <= size, "clip_preprocess: crop_size must be in [1, size=", size, "], got ",
                    crop_size);
  TORCH_CHECK_VALUE(mean.size() == 3, "clip_preprocess: mean must have 3 values (R, G, B), got ", mean.size());
  TORCH_CHECK_VALUE(std.size() == 3, "clip_preprocess: std must have 3 values (R, G, B), got ", std.size());
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK_VALUE(std::isfinite(mean[c]), "clip_preprocess: mean must be finite, got mean[", c, "]=", mean[c]);
    TORCH_CHECK_VALUE(std::isfinite(std[c]) && std[c] != 0.0, "clip_preprocess: std must be finite and non-zero, got std[", c,
                      "]=", std[c]);
  }
  TORCH_CHECK_VALUE(std::isfinite(scale), "clip_preprocess: scale must be finite, got ", scale);
  TORCH_CHECK_VALUE(is_supported_float(dtype), "clip_preprocess: dtype must be float32, float64, float16 or bfloat16, got ",
                    dtype);

  const int64_t T = frames.size(0), H = frames.size(1), W = frames.size(2);
  const auto [rh, rw] = shortest_edge_size(H, W, size);
  TORCH_CHECK_VALUE(rh >= crop_size && rw >= crop_size, "clip_preprocess: frames of size ", H, "x", W,
                    " resize to ", rh, "x", rw, ", smaller than crop_size=", crop_size);
  auto out = at::empty({T, 3, crop_size, crop_size}, frames.options().dtype(dtype));
  if (T == 0) return out;
  const auto in = frames.contiguous();
  const int64_t C = crop_size;
  const int64_t top = (rh - C) / 2, left = (rw - C) / 2;

  // Horizontal taps for the crop's columns, vertical taps for the crop's rows.
  const Taps th = make_taps(W, rw, left, C);
  const Taps tv = make_taps(H, rh, top, C);
  const int64_t row0 = tv.first[0];
  const int64_t row1 = tv.first[C - 1] + tv.len[C - 1];  // input rows [row0, row1) are read
  const int64_t R = row1 - row0;

  // The per-channel output table reproduces transformers' arithmetic: x * scale in double, cast
  // to float32, then (x - mean) / std in float32.
  std::vector<float> lut(3 * 256);
  const float meanf[3] = {static_cast<float>(mean[0]), static_cast<float>(mean[1]), static_cast<float>(mean[2])};
  const float stdf[3] = {static_cast<float>(std[0]), static_cast<float>(std[1]), static_cast<float>(std[2])};
  for (int c = 0; c < 3; ++c) {
    const float m = meanf[c], s = stdf[c];
    for (int v = 0; v < 256; ++v) lut[c * 256 + v] = (static_cast<float>(static_cast<double>(v) * scale) - m) / s;
  }
  const uint8_t* src = in.data_ptr<uint8_t>();
  const bool avx2 = use_avx2();
  const int64_t j0 = th.first[0];
  const int64_t NJ = th.first[C - 1] + th.len[C - 1] - j0;  // input columns [j0, j0 + NJ) are read
  const int64_t nblk = (R + kLanes - 1) / kLanes;            // blocks of input rows of the H pass
  const double hcost = static_cast<double>(kLanes * C * 3 * th.ksize);  // multiply-adds per block
  const double vcost = static_cast<double>(C * 3 * tv.ksize);           // multiply-adds per output row
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "clip_preprocess", [&] {
    std::vector<scalar_t> table(lut.begin(), lut.end());
    scalar_t* dst = out.data_ptr<scalar_t>();
    // Pass 1 (horizontal) of frame t, row blocks [b0, b1): tmp[r] = the crop's columns of input
    // row row0 + r, planar [3][C]. buf: the AVX2 kernel's scratch.
    auto hpass = [&](int64_t t, int64_t b0, int64_t b1, uint8_t* tmp, uint32_t* buf) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * kLanes, nr = std::min(kLanes, R - r0);
        const uint8_t* lines[kLanes];
        uint8_t* outs[kLanes];
        for (int64_t l = 0; l < nr; ++l) {
          lines[l] = src + ((t * H) + row0 + r0 + l) * W * 3;
          outs[l] = tmp + (r0 + l) * 3 * C;
        }
#ifdef SLOTVLM_HAVE_AVX2_KERNELS
        if (avx2) {
          hpass_block_avx2(lines, nr, th, C, j0, NJ, W, buf, outs);
          continue;
        }
#endif
        for (int64_t l = 0; l < nr; ++l) hpass_row_scalar(lines[l], th, C, outs[l]);
      }
    };
    // Pass 2 (vertical) of frame t, output rows [y0, y1), then rescale + normalise, into [T, 3, C, C].
    auto vpass = [&](int64_t t, int64_t y0, int64_t y1, const uint8_t* tmp) {
      for (int64_t y = y0; y < y1; ++y) {
        const int32_t* k = tv.w.data() + y * tv.ksize;
        const uint8_t* base = tmp + (tv.first[y] - row0) * 3 * C;
        scalar_t* o = dst + (t * 3 * C + y) * C;
#ifdef SLOTVLM_HAVE_AVX2_KERNELS
        if (avx2) {
          vpass_row_avx2<scalar_t>(base, tv.len[y], k, C, table.data(), o, C * C, meanf, stdf, scale);
          continue;
        }
#endif
        vpass_row_scalar<scalar_t>(base, tv.len[y], k, C, table.data(), o, C * C);
      }
    };
    const int64_t threads = at::get_num_threads();
    if (T >= 2 * threads) {
      // Many frames: each thread resizes whole frames, its intermediate image stays in cache.
      parallel_dynamic(T, 1, nblk * hcost + C * vcost, [&](int64_t begin, int64_t end) {
        std::vector<uint8_t> tmp(static_cast<size_t>(R * 3 * C));
        std::vector<uint32_t> buf(avx2 ? static_cast<size_t>(NJ * kLanes) : 0);
        for (int64_t t = begin; t < end; ++t) {
          hpass(t, 0, nblk, tmp.data(), buf.data());
          vpass(t, 0, C, tmp.data());
        }
      });
    } else {
      // Few (large) frames: the threads share each frame's rows.
      std::vector<uint8_t> tmp(static_cast<size_t>(R * 3 * C));
      for (int64_t t = 0; t < T; ++t) {
        parallel_dynamic(nblk, 2, hcost, [&](int64_t begin, int64_t end) {
          std::vector<uint32_t> buf(avx2 ? static_cast<size_t>(NJ * kLanes) : 0);
          hpass(t, begin, end, tmp.data(), buf.data());
        });
        parallel_dynamic(C, 16, vcost, [&](int64_t begin, int64_t end) { vpass(t, begin, end, tmp.data()); });
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Slow/fast pooling of frame features [B, T, H, W, D].
// ---------------------------------------------------------------------------------------------
at::Tensor uniform_indices(int64_t num_frames, int64_t k, bool allow_repeat);  // sampling.cpp

std::tuple<at::Tensor, at::Tensor> slowfast_pool(const at::Tensor& features, int64_t num_slow, int64_t stride) {
  TORCH_CHECK_VALUE(features.dim() == 5, "slowfast_pool: features must have shape [B, T, H, W, D], got shape ",
                    features.sizes());
  TORCH_CHECK_VALUE(is_supported_float(features.scalar_type()),
                    "slowfast_pool: features must be floating point (float32, float64, bfloat16, float16), got ",
                    features.scalar_type());
  TORCH_CHECK_VALUE(num_slow > 0, "slowfast_pool: num_slow must be > 0, got ", num_slow);
  // t_d is 8 in Slot-VLM; a million slow frames is already far beyond any use.
  TORCH_CHECK_VALUE(num_slow <= (int64_t{1} << 20), "slowfast_pool: num_slow must be at most 2^20 = 1048576 frames, got ",
                    num_slow);
  TORCH_CHECK_VALUE(stride > 0, "slowfast_pool: stride must be > 0, got ", stride);
  const int64_t B = features.size(0), T = features.size(1), H = features.size(2), W = features.size(3),
                D = features.size(4);
  int64_t slow_numel = 0;
  TORCH_CHECK_VALUE(!__builtin_mul_overflow(B * H * W * D, num_slow, &slow_numel) &&
                        slow_numel <= (int64_t{1} << 40),
                    "slowfast_pool: num_slow=", num_slow, " gives a slow output of shape [", B, ", ", num_slow, ", ", H,
                    ", ", W, ", ", D, "], too large to allocate (over 2^40 elements)");
  TORCH_CHECK_VALUE(T > 0, "slowfast_pool: features must have T > 0 frames, got shape ", features.sizes());
  TORCH_CHECK_VALUE(H % stride == 0 && W % stride == 0 && H > 0 && W > 0, "slowfast_pool: H and W must be positive multiples of stride=",
                    stride, ", got H=", H, ", W=", W);
  const auto idx = uniform_indices(T, num_slow, true).to(features.device());
  at::Tensor slow;
  try {
    slow = features.index_select(1, idx).contiguous();
  } catch (const c10::Error& e) {  // the allocator's "can't allocate memory": name the argument
    TORCH_CHECK_VALUE(false, "slowfast_pool: num_slow=", num_slow, " gives a slow output of ", slow_numel,
                      " elements, which cannot be allocated: ", e.what_without_backtrace());
  }

  const int64_t Ho = H / stride, Wo = W / stride;
  auto fast = at::empty({B, T, Ho, Wo, D}, features.options().memory_format(at::MemoryFormat::Contiguous));
  if (fast.numel() == 0) return {slow, fast};
  const auto x = features.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "slowfast_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = fast.data_ptr<scalar_t>();
    const acc_t inv = acc_t(1) / static_cast<acc_t>(stride * stride);
    // Pieces of about 1M additions: waking threads for less costs more than it saves.
    const int64_t piece = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, D * stride * stride));
    parallel_dynamic(B * T * Ho * Wo, piece, static_cast<double>(D * stride * stride), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(static_cast<size_t>(D));
      for (int64_t o = begin; o < end; ++o) {
        const int64_t bt = o / (Ho * Wo), rem = o % (Ho * Wo), oy = rem / Wo, ox = rem % Wo;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t dy = 0; dy < stride; ++dy) {
          const scalar_t* row = src + ((bt * H + oy * stride + dy) * W + ox * stride) * D;
          for (int64_t dx = 0; dx < stride; ++dx) {
            const scalar_t* p = row + dx * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<acc_t>(p[d]);
          }
        }
        scalar_t* q = dst + o * D;
        for (int64_t d = 0; d < D; ++d) q[d] = static_cast<scalar_t>(acc[d] * inv);
      }
    });
  });
  return {slow, fast};
}

TORCH_LIBRARY_IMPL(slotvlm, CPU, m) {
  m.impl("clip_preprocess", &clip_preprocess);
  m.impl("slowfast_pool", &slowfast_pool);
}

}  // namespace slotvlm
