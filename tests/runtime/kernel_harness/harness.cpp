// CPU harness for mdflow_ros/kernels/correlation.cu: runs the kernel's own per-element code
// (mdflow::correlation_store, index decomposition and offset table included) over the whole
// output grid, one loop iteration per GPU thread, so tests can compare it with PyTorch.
//
// Built by tests/runtime/kernel_harness (__init__.py) with a host C++ compiler; KERNEL_SOURCE names the
// rendered kernel text (trt_correlation_plugin.kernel_source()) to include.

#include KERNEL_SOURCE

namespace {

template <typename T>
void correlation_grid(const T* f1, const T* f2, int batch, int channels, int height, int width, T* out) {
    const int total = batch * mdflow::kNumOffsets * height * width;
    for (int i = 0; i < total; ++i) {
        mdflow::correlation_store(f1, f2, i, channels, height, width, out);
    }
}

}  // namespace

extern "C" {

int harness_num_offsets() { return mdflow::kNumOffsets; }

int harness_has_half() { return MDFLOW_HAS_HALF; }

// (dy, dx) of offset k as the kernel's index functions return them.
void harness_offset(int k, int* dy, int* dx) {
    *dy = mdflow::offset_dy(k);
    *dx = mdflow::offset_dx(k);
}

void harness_correlation_f32(const float* f1, const float* f2, int batch, int channels, int height, int width,
                             float* out) {
    correlation_grid(f1, f2, batch, channels, height, width, out);
}

#if MDFLOW_HAS_HALF
void harness_correlation_f16(const __half* f1, const __half* f2, int batch, int channels, int height, int width,
                             __half* out) {
    correlation_grid(f1, f2, batch, channels, height, width, out);
}
#endif

}  // extern "C"
