// The one schema file of slotvlm._C: every op's signature is declared here, once.
// Implementations live in one file per backend (csrc/cpu/*.cpp, csrc/cuda/*.cu) and register
// themselves with TORCH_LIBRARY_IMPL. Python calls them as torch.ops.slotvlm.<name>.
#include <torch/library.h>

TORCH_LIBRARY(slotvlm, m) {
  // ---- frame-index sampling (csrc/cpu/sampling.cpp) ----
  // Indices of the frames to keep when sampling a video of `num_frames` frames decoded at
  // `native_fps` at `target_fps` frames per second: one frame at each t = i / target_fps that lies
  // inside the clip. If max_frames > 0 and more would be kept, keeps max_frames of them uniformly.
  m.def("sample_fps_indices(int num_frames, float native_fps, float target_fps, int max_frames=-1) -> Tensor");
  // k indices spread uniformly over [0, num_frames - 1], first and last included.
  m.def("uniform_indices(int num_frames, int k, bool allow_repeat=False) -> Tensor");
  // The middle frame of each of k equal segments of [0, num_frames).
  m.def("segment_midpoints(int num_frames, int k, bool allow_repeat=False) -> Tensor");
}
