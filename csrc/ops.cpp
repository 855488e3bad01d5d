// clipkern's C++/CUDA extension: the op schemas (one TORCH_LIBRARY for the namespace `clipkern`),
// two build-information ops, and the Python module entry point, so that `import clipkern._C`
// loads the shared library and thereby registers every op.
//
// Implementations are registered elsewhere, per dispatch key:
//   csrc/cpu/*.cpp   TORCH_LIBRARY_IMPL(clipkern, CPU, m)   plain C++ (always built)
//   csrc/cuda/*.cu   TORCH_LIBRARY_IMPL(clipkern, CUDA, m)  CUDA kernels (built with CLIPKERN_WITH_CUDA)
//   csrc/composite/*.cpp  TORCH_LIBRARY_IMPL(clipkern, CompositeExplicitAutograd, m)  every device: ops
//                    built from the per-device ops above plus O(B·D) ATen work
// The math of every op is written in csrc/README.md and at the top of each implementation file.
// The Triton custom ops of the Python package live in the same namespace as FRAGMENTs, under the
// names clipkern::triton_*; the names below deliberately differ from them.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define CLIPKERN_CAT2(a, b) a##b
#define CLIPKERN_CAT(a, b) CLIPKERN_CAT2(a, b)
#define CLIPKERN_STR2(a) #a
#define CLIPKERN_STR(a) CLIPKERN_STR2(a)

namespace {

// The torch version (major.minor.patch) whose headers this library was compiled against; the
// Python loader compares it with torch.__version__ and refuses a mismatched build.
std::string torch_version() { return TORCH_VERSION; }

// Whether the CUDA kernels (csrc/cuda/*.cu) were compiled into this library.
bool has_cuda() {
#ifdef CLIPKERN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(clipkern, m) {
  m.def("contrastive_fwd(Tensor x, Tensor y, Tensor scale) -> "
        "(Tensor row_max, Tensor row_logsum, Tensor col_max, Tensor col_logsum)");
  m.def("contrastive_bwd(Tensor x, Tensor y, Tensor scale, Tensor row_max, Tensor row_logsum, "
        "Tensor col_max, Tensor col_logsum, Tensor g_row, Tensor g_col, Tensor? pos_grad=None) -> "
        "(Tensor dx, Tensor dy, Tensor dscale)");
  m.def("contrastive_loss_fwd(Tensor x, Tensor y, Tensor scale, Tensor? labels, bool symmetric) -> "
        "(Tensor loss, Tensor row_max, Tensor row_logsum, Tensor col_max, Tensor col_logsum, Tensor raw_pos_sum)");
  m.def("contrastive_loss_bwd(Tensor x, Tensor y, Tensor scale, Tensor? labels, Tensor row_max, Tensor row_logsum, "
        "Tensor col_max, Tensor col_logsum, Tensor raw_pos_sum, Tensor g, bool symmetric) -> "
        "(Tensor dx, Tensor dy, Tensor dscale)");
  m.def("pairdiff_fwd(Tensor a, Tensor r, Tensor scale) -> (Tensor lse_max, Tensor lse_logsum)");
  m.def("pairdiff_bwd(Tensor a, Tensor r, Tensor scale, Tensor lse_max, Tensor lse_logsum, Tensor g) -> "
        "(Tensor u, Tensor t)");
  m.def("listmle_fwd(Tensor scores, Tensor targets, bool decay_log) -> Tensor");
  m.def("listmle_bwd(Tensor scores, Tensor targets, Tensor g, bool decay_log) -> Tensor");
  m.def("sigmoid_fwd(Tensor x, Tensor y, Tensor scale, Tensor? bias, Tensor? labels, bool with_grad) -> "
        "(Tensor loss, Tensor dx, Tensor dy, Tensor dscale_dbias)");
  m.def("torch_version() -> str", &torch_version);
  m.def("has_cuda() -> bool", &has_cuda);
}

// A minimal Python module (no pybind11): importing it is what loads the library and runs the
// registrations above. TORCH_EXTENSION_NAME is set by torch.utils.cpp_extension (setup.py: _C).
static struct PyModuleDef clipkern_module = {
    PyModuleDef_HEAD_INIT, CLIPKERN_STR(TORCH_EXTENSION_NAME),
    "clipkern's C++/CUDA ops; they are used through torch.ops.clipkern.*", -1, nullptr};

PyMODINIT_FUNC CLIPKERN_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&clipkern_module); }
