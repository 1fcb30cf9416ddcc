// Dense (fully connected) layer for small CuPy float32 problems: one launch forward, one launch backward.
//
// x: (N, K), W: (K, M), b: (M,) or null, all C-contiguous.  One thread per output element with a
// sequential fused multiply-add over the reduction axis (fmaf is correctly rounded on the GPU and in
// the C library, so the CPU shim computes the same bits).  No shared memory: meant for the small
// matrices of MNIST-sized nets, where a launch costs more than the arithmetic; the Python side
// sends large problems to cuBLAS instead.

// y[i, j] = (sum_k x[i, k] * W[k, j]) + b[j]
extern "C" __global__ void dense_forward_f32(const float* __restrict__ x, const float* __restrict__ Wt,
                                             const float* __restrict__ b, float* __restrict__ y,
                                             int N, int K, int M)
{
    const long long total = (long long)N * M;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long i = e / M;
        const int j = (int)(e - i * M);
        float acc = 0.0f;
        for (int k = 0; k < K; ++k) acc = fmaf(x[i * K + k], Wt[(long long)k * M + j], acc);
        y[e] = b ? __fadd_rn(acc, b[j]) : acc;
    }
}

// One launch, three regions of the index space:
//   [0, N*K)            dx[i, k] = sum_j dout[i, j] * W[k, j]      (skipped when dx is null)
//   [.., + K*M)         dW[k, j] = sum_i x[i, k] * dout[i, j]
//   [.., + M)           db[j]    = sum_i dout[i, j]                (skipped when db is null)
extern "C" __global__ void dense_backward_f32(const float* __restrict__ x, const float* __restrict__ Wt,
                                              const float* __restrict__ dout, float* __restrict__ dx,
                                              float* __restrict__ dW, float* __restrict__ db,
                                              int N, int K, int M)
{
    const long long nx = dx ? (long long)N * K : 0, nw = (long long)K * M, nb = db ? M : 0;
    const long long total = nx + nw + nb;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        if (e < nx) {
            const long long i = e / K;
            const int k = (int)(e - i * K);
            float acc = 0.0f;
            for (int j = 0; j < M; ++j) acc = fmaf(dout[i * M + j], Wt[(long long)k * M + j], acc);
            dx[e] = acc;
        } else if (e < nx + nw) {
            const long long r = e - nx;
            const long long k = r / M;
            const int j = (int)(r - k * M);
            float acc = 0.0f;
            for (int i = 0; i < N; ++i) acc = fmaf(x[(long long)i * K + k], dout[(long long)i * M + j], acc);
            dW[r] = acc;
        } else {
            const int j = (int)(e - nx - nw);
            float acc = 0.0f;
            for (int i = 0; i < N; ++i) acc = __fadd_rn(acc, dout[(long long)i * M + j]);
            db[j] = acc;
        }
    }
}
