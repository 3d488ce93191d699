// Python module init of slotvlm._C. Importing it loads this library, whose static initialisers
// register the ops declared in ops.cpp and implemented in cpu/*.cpp (and cuda/*.cu). No Python
// functions are bound here; everything is called as torch.ops.slotvlm.<name>.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
