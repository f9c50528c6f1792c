// decinv_fast._C: the CUDA kernels of the fused update ops, registered with the dispatcher.
//
// The op schemas are defined in Python (decinv_fast/ops/_library.py) so that they, and their fake
// implementations for torch.compile, exist without this extension; importing this module adds
// the CUDA kernels to them. It exposes no Python functions: call torch.ops.decinv_fast.*.
#include <Python.h>

#include <torch/library.h>

#include "residual_step.h"

TORCH_LIBRARY_IMPL(decinv_fast, CUDA, m) {
  m.impl("adam_residual_step", &decinv::adam_residual_step_cuda);
  m.impl("fsm_residual_step", &decinv::fsm_residual_step_cuda);
  m.impl("km_residual_step", &decinv::km_residual_step_cuda);
}

namespace {

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "CUDA kernels of decinv_fast's fused update ops (registered as torch.ops.decinv_fast.*).",
    -1,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
