// Python module init of slotvlm._C. Importing it loads this library, whose static initialisers
// register the ops declared in ops.cpp and implemented in cpu/*.cpp (and cuda/*.cu). No Python
// functions are bound here; everything is called as torch.ops.slotvlm.<name>. The init then
// imports slotvlm._register, which registers the ops' Python parts (the backward of slowfast_pool,
// fake kernels), so that they exist whenever the ops do.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  PyObject* python_kernels = PyImport_ImportModule("slotvlm._register");
  if (python_kernels == nullptr) {
    Py_DECREF(module);
    return nullptr;
  }
  Py_DECREF(python_kernels);
  return module;
}
