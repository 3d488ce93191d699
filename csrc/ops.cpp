// The one schema file of slotvlm._C: every op's signature is declared here, once.
// Implementations live in one file per backend (csrc/cpu/*.cpp, csrc/cuda/*.cu) and register
// themselves with TORCH_LIBRARY_IMPL. Python calls them as torch.ops.slotvlm.<name>.
#include <Python.h>
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

  // ---- video frames and features (csrc/cpu/video.cpp) ----
  // uint8 frames [T, H, W, 3] -> [T, 3, crop_size, crop_size] of `dtype`: shortest side resized to
  // `size` with PIL's antialiased bicubic (as transformers' CLIPImageProcessor does), centre crop,
  // x * scale, then (x - mean) / std per channel. CPU only.
  m.def("clip_preprocess(Tensor frames, int size, int crop_size, float[] mean, float[] std, float scale, ScalarType dtype) -> Tensor");
  // features [B, T, H, W, D] -> (slow [B, num_slow, H, W, D]: frames uniform_indices(T, num_slow,
  // allow_repeat=True); fast [B, T, H/stride, W/stride, D]: stride x stride average pooling).
  m.def("slowfast_pool(Tensor features, int num_slow=8, int stride=4) -> (Tensor, Tensor)");
}

// Python module init: importing slotvlm._C loads this library, whose static initialisers register
// the ops above. No Python functions are bound here; everything goes through torch.ops.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
