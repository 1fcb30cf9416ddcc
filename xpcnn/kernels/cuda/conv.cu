// Convolution gathers for CuPy float32 arrays: im2col and col2im (deterministic, no atomics).
//
// Column layout, channel-major rows: col: (C*KH*KW, N*OH*OW) with row k = (c*KH + i)*KW + j for channel c
// and kernel tap (i, j), column q = n*OH*OW + oh*OW + ow.  Channel-major rows match W: (F, C, KH, KW)
// reshaped to (F, C*KH*KW) without a copy, so a convolution is ONE 2-D GEMM:
//     Y2 = W2 @ col : (F, N*OH*OW), i.e. the output in (F, N, OH, OW) memory order.
// Every kernel is a grid-stride loop over its outputs with one thread per output element (no shared
// memory, no __syncthreads, no atomics), so the CPU shim runs it exactly as the GPU does.
// Sums use __fadd_rn (no contraction) in a fixed order: results are identical run to run.

// x: (N, C, H, W) read through element strides (sn, sc, sh, sw) (any permuted layout works).
extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ col,
                                      int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                      int PH, int PW, int DH, int DW, int OH, int OW,
                                      long long sn, long long sc, long long sh, long long sw)
{
    const long long L = (long long)OH * OW, NL = (long long)N * L;
    const long long total = (long long)C * KH * KW * NL;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long k = e / NL, q = e - k * NL;
        const long long n = q / L, l = q - n * L;
        const int oh = (int)(l / OW), ow = (int)(l - (long long)oh * OW);
        const int j = (int)(k % KW), i = (int)((k / KW) % KH), c = (int)(k / ((long long)KW * KH));
        const int h = oh * SH - PH + i * DH, w = ow * SW - PW + j * DW;
        col[e] = (h >= 0 && h < H && w >= 0 && w < W) ? x[n * sn + c * sc + h * sh + w * sw] : 0.0f;
    }
}

// col2im as a gather: dx[n, c, h, w] (C-contiguous (N, C, H, W)) sums the dcol entries of every tap
// (i, j) whose window reads (h, w), taps in row-major order (the order of the reference's slice-adds).
// dcol: (C*KH*KW, N*OH*OW) in im2col's layout.
extern "C" __global__ void col2im_f32(const float* __restrict__ dcol, float* __restrict__ dx,
                                      int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                      int PH, int PW, int DH, int DW, int OH, int OW)
{
    const long long L = (long long)OH * OW, NL = (long long)N * L;
    const long long total = (long long)N * C * H * W;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int w = (int)(e % W), h = (int)((e / W) % H), c = (int)((e / ((long long)W * H)) % C);
        const long long n = e / ((long long)W * H * C);
        float acc = 0.0f;
        for (int i = 0; i < KH; ++i) {
            const int hh = h + PH - i * DH;
            if (hh < 0 || hh % SH != 0 || hh / SH >= OH) continue;
            const int oh = hh / SH;
            for (int j = 0; j < KW; ++j) {
                const int ww = w + PW - j * DW;
                if (ww < 0 || ww % SW != 0 || ww / SW >= OW) continue;
                const int ow = ww / SW;
                const long long k = ((long long)c * KH + i) * KW + j;
                acc = __fadd_rn(acc, dcol[k * NL + n * L + (long long)oh * OW + ow]);
            }
        }
        dx[e] = acc;
    }
}
