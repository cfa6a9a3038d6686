/* stable-audio-rt native kernels: the Triton kernels of stable_audio_rt/kernels, compiled ahead
 * of time to cubins (sm_80, sm_89, sm_90) and launched through the CUDA driver API.
 *
 * All tensors are device pointers in the current CUDA context. Attention tensors are
 * (B, H, T, Dh) with the head dim contiguous and the other strides given in elements; cos and
 * sin are fp32 (T, rope_half) tables; Snake's x and y are contiguous (B, C, T) and alpha,
 * inv_beta fp32 (C,). The head dim and RoPE width are fixed at build time (sa_head_dim,
 * sa_rope_half). Every call returns CUDA_SUCCESS or the driver's error; CUDA_ERROR_NOT_FOUND
 * when no cubin matches this GPU and dtype. */
#ifndef SA_KERNELS_H
#define SA_KERNELS_H

#include <cuda.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SA_DTYPE_FP32 = 0, SA_DTYPE_FP16 = 1, SA_DTYPE_BF16 = 2 } sa_dtype_t;

/* Element strides (batch, head, token) of q, k, v and out, in that order. */
typedef struct {
  int32_t q[3], k[3], v[3], out[3];
} sa_attention_strides;

/* Loads every cubin that runs on the current context's device. Optional (launches load what
 * they need), but call it once from one thread before launching from several. */
CUresult sa_kernels_load(void);

CUresult sa_rope_self_attention(CUstream stream, sa_dtype_t dtype, CUdeviceptr q, CUdeviceptr k,
                                CUdeviceptr v, CUdeviceptr cos, CUdeviceptr sin, int32_t batch,
                                int32_t heads, int32_t seq_len, const sa_attention_strides *strides,
                                CUdeviceptr out);

CUresult sa_gqa_cross_attention(CUstream stream, sa_dtype_t dtype, CUdeviceptr q, CUdeviceptr k,
                                CUdeviceptr v, int32_t batch, int32_t heads, int32_t kv_heads,
                                int32_t q_len, int32_t kv_len, const sa_attention_strides *strides,
                                CUdeviceptr out);

CUresult sa_snake(CUstream stream, sa_dtype_t dtype, CUdeviceptr x, CUdeviceptr alpha,
                  CUdeviceptr inv_beta, int32_t batch, int32_t channels, int32_t length,
                  CUdeviceptr y);

/* The build-time geometry of the attention kernels. */
int sa_kernels_head_dim(void);
int sa_kernels_rope_half(void);

#ifdef __cplusplus
}
#endif

#endif
