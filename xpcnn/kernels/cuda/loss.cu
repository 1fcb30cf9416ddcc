// Softmax cross-entropy fused with its gradient and the loss/accuracy tallies: ONE launch of ONE block.
//
// logits z: (N, C) C-contiguous float32; labels t: (N,) integers (int64, int32 or uint8 entry points).
// Writes  loss[0] = mean_n (logsumexp(z_n) - z_n[t_n]),
//         dz = (softmax(z) - onehot(t)) / N                 (the gradient for an upstream gradient of 1),
// and adds to the device tallies (float64): [0] += sum of the row losses, [1] += rows whose first
// arg-max equals the label, [2] += N, [3] += labels outside [0, C) (their rows' loss is NaN).
// The tallies stay on the device; the training loop reads them once per epoch (no per-step sync).
//
// BLOCK COOPERATION: the row losses and hits are summed with a shared-memory tree reduction between
// __syncthreads() barriers, in a fixed order (deterministic run to run).  Launch with one block of
// XENT_THREADS threads.  The row math is plain per-thread code; the CPU shim runs the whole kernel
// with one OS thread per CUDA thread and a barrier for __syncthreads().

#define XENT_THREADS 256

template <typename Label>
__device__ void softmax_xent(const float* __restrict__ z, const Label* __restrict__ t, float* __restrict__ dz,
                             float* __restrict__ loss, double* __restrict__ tallies, int N, int C)
{
    __shared__ float s_loss[XENT_THREADS];
    __shared__ float s_hit[XENT_THREADS];
    __shared__ float s_bad[XENT_THREADS];
    const int tid = threadIdx.x;
    const float inv_n = 1.0f / (float)N;
    float my_loss = 0.0f, my_hit = 0.0f, my_bad = 0.0f;
    for (int r = tid; r < N; r += blockDim.x) {
        const float* row = z + (long long)r * C;
        float m = row[0];
        int arg = 0;
        for (int c = 1; c < C; ++c)
            if (row[c] > m) { m = row[c]; arg = c; }
        float s = 0.0f;
        for (int c = 0; c < C; ++c) s += expf(row[c] - m);
        const float lse = m + logf(s);
        const long long label = (long long)t[r];
        const bool ok = label >= 0 && label < C;
        my_loss += ok ? lse - row[label] : __int_as_float(0x7fc00000);  // NaN
        my_hit += (ok && arg == label) ? 1.0f : 0.0f;
        my_bad += ok ? 0.0f : 1.0f;
        for (int c = 0; c < C; ++c) {
            const float p = expf(row[c] - lse);
            dz[(long long)r * C + c] = ((c == label ? p - 1.0f : p)) * inv_n;
        }
    }
    s_loss[tid] = my_loss;
    s_hit[tid] = my_hit;
    s_bad[tid] = my_bad;
    __syncthreads();
    for (int half = XENT_THREADS / 2; half > 0; half /= 2) {
        if (tid < half) {
            s_loss[tid] += s_loss[tid + half];
            s_hit[tid] += s_hit[tid + half];
            s_bad[tid] += s_bad[tid + half];
        }
        __syncthreads();
    }
    if (tid == 0) {
        loss[0] = s_loss[0] * inv_n;
        tallies[0] += (double)s_loss[0];
        tallies[1] += (double)s_hit[0];
        tallies[2] += (double)N;
        tallies[3] += (double)s_bad[0];
    }
}

extern "C" __global__ void __launch_bounds__(XENT_THREADS)
softmax_xent_i64_f32(const float* __restrict__ z, const long long* __restrict__ t, float* __restrict__ dz,
                     float* __restrict__ loss, double* __restrict__ tallies, int N, int C)
{
    softmax_xent<long long>(z, t, dz, loss, tallies, N, C);
}

extern "C" __global__ void __launch_bounds__(XENT_THREADS)
softmax_xent_i32_f32(const float* __restrict__ z, const int* __restrict__ t, float* __restrict__ dz,
                     float* __restrict__ loss, double* __restrict__ tallies, int N, int C)
{
    softmax_xent<int>(z, t, dz, loss, tallies, N, C);
}

extern "C" __global__ void __launch_bounds__(XENT_THREADS)
softmax_xent_u8_f32(const float* __restrict__ z, const unsigned char* __restrict__ t, float* __restrict__ dz,
                    float* __restrict__ loss, double* __restrict__ tallies, int N, int C)
{
    softmax_xent<unsigned char>(z, t, dz, loss, tallies, N, C);
}
