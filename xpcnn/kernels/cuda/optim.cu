// Multi-tensor optimizer updates over flat float32 buffers: one launch updates every element of
//   p (parameters), g (gradients), s1, s2 (the rule's state slots, null when unused)
// laid out in one order (parameter 0's elements, then parameter 1's, ...); n elements in all.
// The Python side passes the hyper-parameters as float32 values computed the way the reference
// (xpcnn.functional.updates) computes them, in Python double then rounded to float32 on use.
//
// Every operation is an explicitly rounded __fmul_rn/__fadd_rn/__fsub_rn/__fdiv_rn/__fsqrt_rn in the
// reference's order, so the result equals NumPy's float32 arithmetic bit for bit (no FMA contraction).
// has_wd: whether weight_decay != 0 (the reference skips the decay term entirely when it is 0).

#define FOR_EACH(n) for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < (n); \
                         e += (long long)blockDim.x * gridDim.x)

// g + wd * p (coupled L2), as the reference's _l2
__device__ __forceinline__ float l2(float g, float p, int has_wd, float wd)
{
    return has_wd ? __fadd_rn(g, __fmul_rn(wd, p)) : g;
}

// p - lr * g
extern "C" __global__ void sgd_f32(float* __restrict__ p, const float* __restrict__ g, long long n,
                                   float lr, int has_wd, float wd)
{
    FOR_EACH(n) {
        const float gg = l2(g[e], p[e], has_wd, wd);
        p[e] = __fsub_rn(p[e], __fmul_rn(lr, gg));
    }
}

// b = mu * b + g;  p - lr * b   (nesterov: p - lr * (g + mu * b))
extern "C" __global__ void momentum_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf,
                                        long long n, float lr, float mu, int nesterov, int has_wd, float wd)
{
    FOR_EACH(n) {
        const float gg = l2(g[e], p[e], has_wd, wd);
        const float b = __fadd_rn(__fmul_rn(mu, buf[e]), gg);
        buf[e] = b;
        const float step = nesterov ? __fadd_rn(gg, __fmul_rn(mu, b)) : b;
        p[e] = __fsub_rn(p[e], __fmul_rn(lr, step));
    }
}

// adagrad (alpha = 1, c = 1): h = h + g*g
// rmsprop:                    s = alpha * s + c * (g*g)     with c = float32(1 - alpha)
// then p - (lr * g) / (sqrt(s) + eps)
extern "C" __global__ void rms_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ sq,
                                   long long n, float lr, int adagrad, float alpha, float c, float eps,
                                   int has_wd, float wd)
{
    FOR_EACH(n) {
        const float gg = l2(g[e], p[e], has_wd, wd);
        const float g2 = __fmul_rn(gg, gg);
        const float s = adagrad ? __fadd_rn(sq[e], g2) : __fadd_rn(__fmul_rn(alpha, sq[e]), __fmul_rn(c, g2));
        sq[e] = s;
        p[e] = __fsub_rn(p[e], __fdiv_rn(__fmul_rn(lr, gg), __fadd_rn(__fsqrt_rn(s), eps)));
    }
}

// Adam / AdamW with bias corrections folded into step_size = float32(lr / (1 - beta1^t)) and
// bc2 = float32(sqrt(1 - beta2^t)):
//   adamw: p = p * decay   (decay = float32(1 - lr * wd), only when has_decay)
//   adam:  g = g + wd * p  (only when has_wd)
//   m = beta1 * m + c1 * g;  v = beta2 * v + c2 * (g*g);  p - (step_size * m) / (sqrt(v) / bc2 + eps)
extern "C" __global__ void adam_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m_,
                                    float* __restrict__ v_, long long n, float beta1, float c1, float beta2,
                                    float c2, float step_size, float bc2, float eps, int has_wd, float wd,
                                    int has_decay, float decay)
{
    FOR_EACH(n) {
        float pp = p[e];
        if (has_decay) pp = __fmul_rn(pp, decay);
        const float gg = l2(g[e], pp, has_wd, wd);
        const float m = __fadd_rn(__fmul_rn(beta1, m_[e]), __fmul_rn(c1, gg));
        const float v = __fadd_rn(__fmul_rn(beta2, v_[e]), __fmul_rn(c2, __fmul_rn(gg, gg)));
        m_[e] = m;
        v_[e] = v;
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2), eps);
        p[e] = __fsub_rn(pp, __fdiv_rn(__fmul_rn(step_size, m), denom));
    }
}
