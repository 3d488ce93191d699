// C++ unit tests of the ops, called through the dispatcher exactly as Python calls them.
// Built and run by CMake (ctest); the Python test suite builds and runs it too.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

std::vector<int64_t> values(const at::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

void expect_value_error(const std::function<void()>& f, const std::string& needle, const std::string& what) {
  try {
    f();
    expect(false, what + ": no error raised");
  } catch (const c10::ValueError& e) {
    expect(std::string(e.what()).find(needle) != std::string::npos,
           what + ": message lacks '" + needle + "': " + e.what());
  }
}

}  // namespace

int main() {
  auto& d = c10::Dispatcher::singleton();
  auto uniform = d.findSchemaOrThrow("slotvlm::uniform_indices", "").typed<at::Tensor(int64_t, int64_t, bool)>();
  auto midpoints = d.findSchemaOrThrow("slotvlm::segment_midpoints", "").typed<at::Tensor(int64_t, int64_t, bool)>();
  auto fps = d.findSchemaOrThrow("slotvlm::sample_fps_indices", "")
                 .typed<at::Tensor(int64_t, double, double, int64_t)>();

  expect(values(uniform.call(9, 5, false)) == std::vector<int64_t>({0, 2, 4, 6, 8}), "uniform_indices(9, 5)");
  expect(values(uniform.call(3, 6, true)) == std::vector<int64_t>({0, 0, 1, 1, 2, 2}), "uniform_indices(3, 6, repeat)");
  expect(values(midpoints.call(8, 4, false)) == std::vector<int64_t>({1, 3, 5, 7}), "segment_midpoints(8, 4)");
  auto one_fps = values(fps.call(300, 25.0, 1.0, -1));
  expect(one_fps.size() == 12 && one_fps.front() == 0 && one_fps.back() == 275, "sample_fps_indices(300, 25, 1)");
  expect(values(fps.call(300, 25.0, 1.0, 4)).size() == 4, "sample_fps_indices max_frames=4");

  expect_value_error([&] { uniform.call(3, 8, false); }, "k=8", "uniform_indices k > num_frames");
  expect_value_error([&] { midpoints.call(0, 1, false); }, "num_frames", "segment_midpoints zero frames");
  expect_value_error([&] { fps.call(100, 25.0, 30.0, -1); }, "native rate", "fps above native");
  expect_value_error([&] { fps.call(0, 25.0, 1.0, -1); }, "num_frames", "zero-length video");

  if (failures == 0) std::printf("slotvlm C++ tests: all passed\n");
  return failures == 0 ? 0 : 1;
}
