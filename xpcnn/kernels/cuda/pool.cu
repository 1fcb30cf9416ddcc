// Bias + ReLU + max pooling epilogue, the fused pool + ReLU backward, and ReLU on CuPy float32 arrays.
//
// One thread per output element, grid-stride loops, no shared memory, no atomics: the CPU shim runs
// these exactly as the GPU does.  Pooling semantics are the reference's (xpcnn.functional.pool):
// padding and ceil_mode overhang read as -inf, each window's index is the FIRST maximum in row-major
// tap order (t = i*PKW + j), and the backward sends each window's gradient to that index.

// z: (N, F, H, W) read through element strides (zn, zf, zh, zw); b: (F,) or null; relu: 0/1.
// y: (N, F, PH, PW) written through strides (yn, yf, yh, yw); argmax: C-contiguous (N, F, PH, PW) or null.
// v = relu(z + b) per tap, then max over the (PKH, PKW) window at stride (PSH, PSW), padding (PPH, PPW).
// With a 1x1 window this is the plain conv epilogue (bias, optional ReLU, layout change).
extern "C" __global__ void bias_relu_maxpool_f32(const float* z, const float* __restrict__ b,
                                                 float* y, int* __restrict__ argmax,
                                                 int N, int F, int H, int W,
                                                 int PKH, int PKW, int PSH, int PSW, int PPH, int PPW,
                                                 int PH, int PW, int relu,
                                                 long long zn, long long zf, long long zh, long long zw,
                                                 long long yn, long long yf, long long yh, long long yw)
{
    const long long total = (long long)N * F * PH * PW;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int pw = (int)(e % PW), ph = (int)((e / PW) % PH), f = (int)((e / ((long long)PW * PH)) % F);
        const long long n = e / ((long long)PW * PH * F);
        const float bias = b ? b[f] : 0.0f;
        float best = -__int_as_float(0x7f800000);  // -inf
        int arg = 0;
        for (int i = 0; i < PKH; ++i) {
            const int h = ph * PSH - PPH + i;
            for (int j = 0; j < PKW; ++j) {
                const int w = pw * PSW - PPW + j;
                float v = -__int_as_float(0x7f800000);
                if (h >= 0 && h < H && w >= 0 && w < W) {
                    v = z[n * zn + f * zf + h * zh + w * zw];
                    if (b) v = __fadd_rn(v, bias);
                    if (relu) v = v < 0.0f ? 0.0f : v;  // NaN passes through, as in maximum(x, 0)
                }
                const int t = i * PKW + j;
                if (t == 0 || v > best) { best = v; arg = t; }
            }
        }
        // written after every read: with a 1x1 window y may alias z (an in-place epilogue)
        y[n * yn + f * yf + (long long)ph * yh + (long long)pw * yw] = best;
        if (argmax) argmax[e] = arg;
    }
}

// dx[n, c, h, w] = sum of dout over the windows whose first maximum is (h, w), taps in row-major order.
// The fused pool + ReLU backward: when ypool (the pooled ReLU output) is given, a window contributes only
// where ypool > 0.  That equals the reference's relu_backward(pool_backward(dout), relu_out): every window
// that selects (h, w) has ypool = relu_out[h, w], so [relu_out > 0] is the same for all of them.
// dout, argmax, ypool: C-contiguous (N, C, PH, PW); dx: (N, C, H, W) through strides (sn, sc, sh, sw).
extern "C" __global__ void maxpool_relu_backward_f32(const float* __restrict__ dout, const int* __restrict__ argmax,
                                                     const float* __restrict__ ypool, float* __restrict__ dx,
                                                     int N, int C, int H, int W,
                                                     int PKH, int PKW, int PSH, int PSW, int PPH, int PPW,
                                                     int PH, int PW,
                                                     long long sn, long long sc, long long sh, long long sw)
{
    const long long total = (long long)N * C * H * W;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int w = (int)(e % W), h = (int)((e / W) % H), c = (int)((e / ((long long)W * H)) % C);
        const long long n = e / ((long long)W * H * C);
        const long long plane = (n * C + c) * (long long)PH * PW;
        float acc = 0.0f;
        for (int i = 0; i < PKH; ++i) {
            const int hh = h + PPH - i;
            if (hh < 0 || hh % PSH != 0 || hh / PSH >= PH) continue;
            const int ph = hh / PSH;
            for (int j = 0; j < PKW; ++j) {
                const int ww = w + PPW - j;
                if (ww < 0 || ww % PSW != 0 || ww / PSW >= PW) continue;
                const long long o = plane + (long long)ph * PW + ww / PSW;
                if (argmax[o] == i * PKW + j && (!ypool || ypool[o] > 0.0f)) acc = __fadd_rn(acc, dout[o]);
            }
        }
        dx[n * sn + c * sc + h * sh + w * sw] = acc;
    }
}

// Elementwise over memory (any layout, as long as x and y share it): y = max(x, 0).
extern "C" __global__ void relu_f32(const float* __restrict__ x, float* __restrict__ y, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)blockDim.x * gridDim.x)
        y[e] = x[e] < 0.0f ? 0.0f : x[e];  // NaN passes through, as in maximum(x, 0)
}

// dx = dout * [y > 0] over memory (dout, y, dx share one layout).
extern "C" __global__ void relu_backward_f32(const float* __restrict__ dout, const float* __restrict__ y,
                                             float* __restrict__ dx, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)blockDim.x * gridDim.x)
        dx[e] = __fmul_rn(dout[e], y[e] > 0.0f ? 1.0f : 0.0f);
}
