// FastFlowNet's 53-offset local correlation as one CUDA kernel (float and half entry points).
//
//   out[b, k, y, x] = (1 / C) * sum_c f1[b, c, y, x] * f2[b, c, y + dy_k, x + dx_k]
//
// with (dy_k, dx_k) the k-th offset of mdflow_ros.conventions.CDDC_OFFSETS and zero where
// (y + dy_k, x + dx_k) falls outside the image: the definition of
// mdflow_ros.models.correlation.correlation_reference. f1, f2 are (B, C, H, W) and out is
// (B, 53, H, W), all NCHW contiguous and of the same type; products are accumulated in fp32
// for half data too, and only the result is rounded to the output type.
//
// This file is not compiled as it stands: the offset table is generated from conventions.py.
// mdflow_ros.inference.trt_correlation_plugin.kernel_source() prepends
//   #define MDFLOW_NUM_OFFSETS 53
//   #define MDFLOW_CDDC_TABLE dy_0, dx_0, dy_1, dx_1, ...
// so conventions.py stays the one source of the pattern. The same text is compiled to PTX by nvcc
// (the TensorRT plugin) and, with a host C++ compiler, into the CPU test harness
// (tests/runtime/kernel_harness): everything that computes a value is a __host__ __device__
// function below, and only the thread-index line of the kernels is device-only.
//
// Thread mapping: one thread per output element, x fastest (the linear NCHW index of out).
// A warp then covers 32 consecutive x of one (b, k, y): its loads of f1[b, c, y, x..x+31]
// and f2[b, c, y+dy, x+dx..x+dx+31] are contiguous runs (coalesced) for every c, and its
// stores are one contiguous run. One thread per pixel looping over the 53 offsets would
// coalesce as well but has 53 times fewer threads: at the coarse pyramid levels (6 x 8 pixels
// at 1/64 of 384 x 512) that leaves almost the whole GPU idle, while the f1 re-reads that
// per-element threads cost are served by L1/L2. The op is memory-bound (about 46 M MACs per
// frame at 512 x 512), so parallelism and coalescing decide its speed, not arithmetic.
//
// Arithmetic is fmaf in channel order then one IEEE division by C, on the device and on the
// host alike, so the CPU harness reproduces the GPU's fp32 results bit for bit (nvcc's
// default -prec-div=true makes the device division correctly rounded).

#ifndef MDFLOW_CDDC_TABLE
#error "correlation.cu needs the generated offset table: compile trt_correlation_plugin.kernel_source()"
#endif

#include <math.h>

#if defined(__CUDACC__) || (defined(__has_include) && __has_include(<cuda_fp16.h>))
#include <cuda_fp16.h>
#define MDFLOW_HAS_HALF 1
#else
#define MDFLOW_HAS_HALF 0
#endif

#ifdef __CUDACC__
#define MDFLOW_HD __host__ __device__ __forceinline__
#else
#define MDFLOW_HD inline
#endif

namespace mdflow {

constexpr int kNumOffsets = MDFLOW_NUM_OFFSETS;

// The (dy, dx) pairs in channel order: constant memory on the device (the threads of a warp
// share k unless a row is narrower than the warp, so reads are mostly one broadcast), a plain
// array for the host harness.
#ifdef __CUDACC__
__constant__ int kOffsetsDevice[2 * kNumOffsets] = {MDFLOW_CDDC_TABLE};
#endif
static const int kOffsetsHost[2 * kNumOffsets] = {MDFLOW_CDDC_TABLE};

MDFLOW_HD int offset_dy(int k) {
#ifdef __CUDA_ARCH__
    return kOffsetsDevice[2 * k];
#else
    return kOffsetsHost[2 * k];
#endif
}

MDFLOW_HD int offset_dx(int k) {
#ifdef __CUDA_ARCH__
    return kOffsetsDevice[2 * k + 1];
#else
    return kOffsetsHost[2 * k + 1];
#endif
}

// Position of one output element: batch b, offset channel k, row y, column x.
struct OutIndex {
    int b, k, y, x;
};

// Linear index of out (B, 53, H, W) -> (b, k, y, x). 32-bit: B * 53 * H * W < 2^31 (the plugin
// passes it as an int32), and 64-bit division is many instructions on a GPU.
MDFLOW_HD OutIndex decompose(int i, int height, int width) {
    OutIndex e;
    e.x = i % width;
    i /= width;
    e.y = i % height;
    i /= height;
    e.k = i % kNumOffsets;
    e.b = i / kNumOffsets;
    return e;
}

// Linear index of element (b, c, y, x) of an NCHW tensor with C channels of H x W.
MDFLOW_HD long long nchw(int b, int c, int y, int x, int channels, int height, int width) {
    return ((static_cast<long long>(b) * channels + c) * height + y) * width + x;
}

MDFLOW_HD bool inside(int y, int x, int height, int width) {
    return y >= 0 && y < height && x >= 0 && x < width;
}

MDFLOW_HD float to_float(float v) { return v; }
template <typename T> MDFLOW_HD T from_float(float v);
template <> MDFLOW_HD float from_float<float>(float v) { return v; }
#if MDFLOW_HAS_HALF
MDFLOW_HD float to_float(__half v) { return __half2float(v); }
template <> MDFLOW_HD __half from_float<__half>(float v) { return __float2half_rn(v); }
#endif

// out[i] in fp32: the channel mean of f1 at (b, y, x) times f2 at the k-th offset, 0 outside.
template <typename T>
MDFLOW_HD float correlation_value(const T* f1, const T* f2, int i, int channels, int height, int width) {
    const OutIndex e = decompose(i, height, width);
    const int y2 = e.y + offset_dy(e.k);
    const int x2 = e.x + offset_dx(e.k);
    if (!inside(y2, x2, height, width)) {
        return 0.0f;
    }
    const long long plane = static_cast<long long>(height) * width;
    long long p1 = nchw(e.b, 0, e.y, e.x, channels, height, width);
    long long p2 = nchw(e.b, 0, y2, x2, channels, height, width);
    float acc = 0.0f;
    for (int c = 0; c < channels; ++c, p1 += plane, p2 += plane) {
        acc = fmaf(to_float(f1[p1]), to_float(f2[p2]), acc);
    }
    return acc / static_cast<float>(channels);
}

// Compute and store out[i]; the kernels and the host harness both call exactly this.
template <typename T>
MDFLOW_HD void correlation_store(const T* f1, const T* f2, int i, int channels, int height, int width, T* out) {
    out[i] = from_float<T>(correlation_value(f1, f2, i, channels, height, width));
}

#ifdef __CUDACC__
template <typename T>
__device__ __forceinline__ void correlation_thread(const T* __restrict__ f1, const T* __restrict__ f2, int channels,
                                                  int height, int width, int total, T* __restrict__ out) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < total) {
        correlation_store(f1, f2, static_cast<int>(i), channels, height, width, out);
    }
}
#endif

}  // namespace mdflow

#ifdef __CUDACC__
// Entry points. Argument order is TensorRT's for ahead-of-time Python plugins: input
// pointers, then the int32 scalars, then output pointers. total = B * 53 * H * W; launch a
// 1-D grid of ceil(total / blockDim.x) blocks.
extern "C" __global__ void mdflow_correlation53_f32(const float* __restrict__ f1, const float* __restrict__ f2,
                                                    int channels, int height, int width, int total,
                                                    float* __restrict__ out) {
    mdflow::correlation_thread(f1, f2, channels, height, width, total, out);
}

extern "C" __global__ void mdflow_correlation53_f16(const __half* __restrict__ f1, const __half* __restrict__ f2,
                                                    int channels, int height, int width, int total,
                                                    __half* __restrict__ out) {
    mdflow::correlation_thread(f1, f2, channels, height, width, total, out);
}
#endif
