// Frame-index sampling. These ops take only scalars, so they are registered as
// CompositeExplicitAutograd (device-independent) and always return CPU int64 tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace slotvlm {

// Limits that keep every op's work and memory proportional to its output, and every value exact.
// Up to 2^48 frames, the double arithmetic of uniform_indices and sample_fps_indices errs by less
// than 1/16 of a frame, so every index is the one exact arithmetic gives; no op returns more than
// 2^27 indices (1 GiB of int64).
constexpr int64_t kMaxFrames = int64_t{1} << 48;
constexpr int64_t kMaxIndices = int64_t{1} << 27;

namespace {

at::Tensor to_tensor(const std::vector<int64_t>& v) {
  auto out = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  auto* p = out.data_ptr<int64_t>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = v[i];
  return out;
}

void check_num_frames(int64_t num_frames, const char* op) {
  TORCH_CHECK_VALUE(num_frames > 0, op, ": num_frames must be > 0 (a video with no frames), got ", num_frames);
  TORCH_CHECK_VALUE(num_frames <= kMaxFrames, op, ": num_frames must be at most 2^48 = ", kMaxFrames,
                    " (beyond, frame indices are not exact in the sampling arithmetic), got ", num_frames);
}

void check_k(int64_t num_frames, int64_t k, bool allow_repeat, const char* op) {
  check_num_frames(num_frames, op);
  TORCH_CHECK_VALUE(k > 0, op, ": k must be > 0, got ", k);
  TORCH_CHECK_VALUE(k <= kMaxIndices, op, ": k must be at most 2^27 = ", kMaxIndices, " indices, got ", k);
  TORCH_CHECK_VALUE(allow_repeat || k <= num_frames, op, ": cannot pick k=", k, " distinct frames out of num_frames=",
              num_frames, " (pass allow_repeat=True to repeat frames)");
}

}  // namespace

at::Tensor uniform_indices(int64_t num_frames, int64_t k, bool allow_repeat) {
  check_k(num_frames, k, allow_repeat, "uniform_indices");
  std::vector<int64_t> idx(k);
  if (k == 1) {
    idx[0] = (num_frames - 1) / 2;
  } else {
    const double step = static_cast<double>(num_frames - 1) / static_cast<double>(k - 1);
    for (int64_t i = 0; i < k; ++i)
      idx[i] = std::min(num_frames - 1, static_cast<int64_t>(std::llround(step * static_cast<double>(i))));
  }
  return to_tensor(idx);
}

at::Tensor segment_midpoints(int64_t num_frames, int64_t k, bool allow_repeat) {
  check_k(num_frames, k, allow_repeat, "segment_midpoints");
  std::vector<int64_t> idx(k);
  // floor((2i + 1) * T / (2k)) in exact integer arithmetic (128-bit: (2i + 1) * T overflows int64
  // for large T).
  for (int64_t i = 0; i < k; ++i)
    idx[i] = static_cast<int64_t>((static_cast<__int128>(2 * i + 1) * num_frames) / (2 * static_cast<__int128>(k)));
  return to_tensor(idx);
}

namespace {

// The frame nearest to time i / target_fps (before removing collisions).
inline int64_t fps_candidate(int64_t i, int64_t num_frames, double native_fps, double target_fps) {
  const double t = static_cast<double>(i) / target_fps;
  const int64_t f = static_cast<int64_t>(std::llround(t * native_fps));
  return f >= num_frames ? num_frames - 1 : f;
}

// The number of times i / target_fps (i = 0, 1, ...) inside the clip, i.e. the smallest n with
// n / target_fps >= duration - 1e-9: computed in O(1), with the same comparison as the sampling.
int64_t fps_count(double duration, double target_fps) {
  const double limit = duration - 1e-9;
  auto inside = [&](int64_t i) { return static_cast<double>(i) / target_fps < limit; };
  int64_t n = static_cast<int64_t>(std::max(0.0, std::ceil(limit * target_fps)));
  while (n > 0 && !inside(n - 1)) --n;
  while (inside(n)) ++n;
  return n;
}

}  // namespace

at::Tensor sample_fps_indices(int64_t num_frames, double native_fps, double target_fps, int64_t max_frames) {
  check_num_frames(num_frames, "sample_fps_indices");
  TORCH_CHECK_VALUE(std::isfinite(native_fps) && native_fps > 0, "sample_fps_indices: native_fps must be a positive number, got ",
              native_fps);
  TORCH_CHECK_VALUE(std::isfinite(target_fps) && target_fps > 0, "sample_fps_indices: target_fps must be a positive number, got ",
              target_fps);
  // A small tolerance: 30000/1001 fps videos asked for at 29.97 must not be refused.
  TORCH_CHECK_VALUE(target_fps <= native_fps * (1.0 + 1e-6), "sample_fps_indices: target_fps=", target_fps,
              " is above the video's native rate native_fps=", native_fps);
  TORCH_CHECK_VALUE(max_frames == -1 || max_frames > 0, "sample_fps_indices: max_frames must be -1 (no limit) or > 0, got ",
              max_frames);
  TORCH_CHECK_VALUE(max_frames <= kMaxIndices, "sample_fps_indices: max_frames must be at most 2^27 = ", kMaxIndices,
                    ", got ", max_frames);
  const double duration = static_cast<double>(num_frames) / native_fps;
  const int64_t n = fps_count(duration, target_fps);
  if (max_frames > 0 && n > max_frames && native_fps >= 2.0 * target_fps) {
    // Sample times at least two frames apart: the candidates are strictly increasing (no collision
    // to remove), so the kept ones are computed directly, in O(max_frames).
    auto pick = uniform_indices(n, max_frames, false);
    auto* p = pick.data_ptr<int64_t>();
    for (int64_t j = 0; j < max_frames; ++j) p[j] = fps_candidate(p[j], num_frames, native_fps, target_fps);
    return pick;
  }
  // Otherwise every candidate is visited: without max_frames n is the output size; with it, the
  // sample times are under two frames apart and collisions may drop some, so the kept ones are
  // chosen from the full list (n <= about num_frames, bounded below).
  TORCH_CHECK_VALUE(n <= kMaxIndices, "sample_fps_indices: num_frames=", num_frames, " at native_fps=", native_fps,
                    " sampled at target_fps=", target_fps, " gives ", n, " frames, more than 2^27 = ", kMaxIndices,
                    (max_frames > 0 ? "; lower num_frames" : "; pass max_frames"));
  std::vector<int64_t> idx;
  idx.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = fps_candidate(i, num_frames, native_fps, target_fps);
    if (!idx.empty() && f <= idx.back()) continue;  // rounding collision; keep indices strictly increasing
    idx.push_back(f);
  }
  if (max_frames > 0 && static_cast<int64_t>(idx.size()) > max_frames) {
    auto pick = uniform_indices(static_cast<int64_t>(idx.size()), max_frames, false);
    std::vector<int64_t> kept(max_frames);
    const auto* p = pick.data_ptr<int64_t>();
    for (int64_t i = 0; i < max_frames; ++i) kept[i] = idx[p[i]];
    idx.swap(kept);
  }
  return to_tensor(idx);
}

TORCH_LIBRARY_IMPL(slotvlm, CompositeExplicitAutograd, m) {
  m.impl("sample_fps_indices", &sample_fps_indices);
  m.impl("uniform_indices", &uniform_indices);
  m.impl("segment_midpoints", &segment_midpoints);
}

}  // namespace slotvlm
