// Frame-index sampling. These ops take only scalars, so they are registered as
// CompositeExplicitAutograd (device-independent) and always return CPU int64 tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace slotvlm {
namespace {

at::Tensor to_tensor(const std::vector<int64_t>& v) {
  auto out = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  auto* p = out.data_ptr<int64_t>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = v[i];
  return out;
}

void check_k(int64_t num_frames, int64_t k, bool allow_repeat, const char* op) {
  TORCH_CHECK_VALUE(num_frames > 0, op, ": num_frames must be > 0 (a video with no frames), got ", num_frames);
  TORCH_CHECK_VALUE(k > 0, op, ": k must be > 0, got ", k);
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
    for (int64_t i = 0; i < k; ++i) idx[i] = static_cast<int64_t>(std::llround(step * static_cast<double>(i)));
  }
  return to_tensor(idx);
}

at::Tensor segment_midpoints(int64_t num_frames, int64_t k, bool allow_repeat) {
  check_k(num_frames, k, allow_repeat, "segment_midpoints");
  std::vector<int64_t> idx(k);
  // floor((2i + 1) * T / (2k)) in exact integer arithmetic.
  for (int64_t i = 0; i < k; ++i) idx[i] = ((2 * i + 1) * num_frames) / (2 * k);
  return to_tensor(idx);
}

at::Tensor sample_fps_indices(int64_t num_frames, double native_fps, double target_fps, int64_t max_frames) {
  TORCH_CHECK_VALUE(num_frames > 0, "sample_fps_indices: num_frames must be > 0 (a video with no frames), got ", num_frames);
  TORCH_CHECK_VALUE(std::isfinite(native_fps) && native_fps > 0, "sample_fps_indices: native_fps must be a positive number, got ",
              native_fps);
  TORCH_CHECK_VALUE(std::isfinite(target_fps) && target_fps > 0, "sample_fps_indices: target_fps must be a positive number, got ",
              target_fps);
  // A small tolerance: 30000/1001 fps videos asked for at 29.97 must not be refused.
  TORCH_CHECK_VALUE(target_fps <= native_fps * (1.0 + 1e-6), "sample_fps_indices: target_fps=", target_fps,
              " is above the video's native rate native_fps=", native_fps);
  TORCH_CHECK_VALUE(max_frames == -1 || max_frames > 0, "sample_fps_indices: max_frames must be -1 (no limit) or > 0, got ",
              max_frames);
  const double duration = static_cast<double>(num_frames) / native_fps;
  std::vector<int64_t> idx;
  for (int64_t i = 0;; ++i) {
    const double t = static_cast<double>(i) / target_fps;
    if (t >= duration - 1e-9) break;
    int64_t f = static_cast<int64_t>(std::llround(t * native_fps));
    if (f >= num_frames) f = num_frames - 1;
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
