// common.cuh: what every kernel file shares. fp32 throughout.
// Activation codes index numpy_ref.ACTIVATIONS: 0 identity, 1 leaky_relu, 2 relu, 3 tanh, 4 sigmoid.
#pragma once

#define ACT_IDENTITY 0
#define ACT_LEAKY_RELU 1
#define ACT_RELU 2
#define ACT_TANH 3
#define ACT_SIGMOID 4

// Division by a divisor d fixed for a launch (1 <= d < 2^31), for any x < 2^31, as a multiply-high, an add and a
// shift in place of the some 20 instructions of a division by a run-time value (Granlund and Montgomery, "Division
// by invariant integers using multiplication", 1994): x / d = (umulhi(x, m) + x) >> s, with s = ceil(log2 d) and
// m = floor(2^32 (2^s - d) / d) + 1 (the add cannot overflow below 2^31). Made once a thread (one 64-bit division),
// before the loop that divides. Divisor(0) is made for an empty extent and never divides.
struct Divisor {
    unsigned d, m, s;
    __device__ explicit Divisor(int divisor)
        : d((unsigned)divisor), m(0), s(divisor > 0 ? 32 - __clz(divisor - 1) : 0) {
        if (divisor > 0) m = (unsigned)((((1ull << s) - d) << 32) / d + 1);
    }
    __device__ __forceinline__ unsigned div(unsigned x) const { return (__umulhi(x, m) + x) >> s; }
    // x / d, and x % d in rem.
    __device__ __forceinline__ unsigned divmod(unsigned x, unsigned& rem) const {
        const unsigned q = div(x);
        rem = x - q * d;
        return q;
    }
};

// Index of value i (0 <= i < N P: image i / P, pixel i % P) of channel c in an image batch (N, C, P), N C P < 2^31.
__device__ __forceinline__ int channel_value(int i, int c, int channels, const Divisor& pixels) {
    unsigned p;
    const unsigned n = pixels.divmod((unsigned)i, p);
    return (int)((n * channels + c) * pixels.d + p);
}

// The activation of a pre-activation z.
__device__ __forceinline__ float act_forward(float z, int act, float alpha) {
    switch (act) {
        case ACT_LEAKY_RELU: return z > 0.f ? z : alpha * z;
        case ACT_RELU: return z > 0.f || z != z ? z : 0.f;  // NaN stays NaN, as np.maximum keeps it
        case ACT_TANH: return tanhf(z);
        case ACT_SIGMOID: {
            float e = __expf(-fabsf(z));
            return z >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
        }
        default: return z;
    }
}

// d loss / d pre-activation from the activation's output y and d loss / d y.
__device__ __forceinline__ float act_backward(float y, float dy, int act, float alpha) {
    switch (act) {
        case ACT_LEAKY_RELU: return y > 0.f ? dy : alpha * dy;
        case ACT_RELU: return y > 0.f ? dy : dy * 0.f;  // as dy * (y > 0): NaN for an infinite dy
        case ACT_TANH: return dy * (1.f - y * y);
        case ACT_SIGMOID: return dy * y * (1.f - y);
        default: return dy;
    }
}
