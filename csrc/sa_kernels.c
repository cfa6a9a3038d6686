/* Launchers for the AOT-compiled Triton kernels; see sa_kernels.h. */
#include "sa_kernels.h"

#include <stdlib.h>
#include <string.h>

#include "sa_kernels_variants.h"

/* Triton kernels take two hidden trailing pointers (global and profile scratch); ours need
 * neither (checked at generation), so they are passed as null. */
#define SA_HIDDEN_ARGS 2
#define SA_MAX_ARGS 32

typedef struct {
  CUcontext context;
  CUmodule module;
  CUfunction function;
} sa_loaded;

static sa_loaded *loaded;

static CUresult device_arch(int *arch) {
  CUdevice device;
  int major, minor;
  CUresult status = cuCtxGetDevice(&device);
  if (status != CUDA_SUCCESS) return status;
  status = cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
  if (status != CUDA_SUCCESS) return status;
  status = cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
  *arch = major * 10 + minor;
  return status;
}

/* A cubin runs on its own major version at an equal or higher minor; sm_90 cubins are built
 * for sm_90a and run on 9.0 only. Take the newest that fits. */
static int pick_variant(const char *kernel, sa_dtype_t dtype, int arch) {
  int best = -1;
  for (int i = 0; i < sa_num_variants; ++i) {
    const sa_variant *v = &sa_variants[i];
    if (strcmp(v->kernel, kernel) != 0 || v->dtype != dtype) continue;
    if (v->arch / 10 != arch / 10 || v->arch > arch) continue;
    if (v->arch == 90 && arch != 90) continue;
    if (best < 0 || v->arch > sa_variants[best].arch) best = i;
  }
  return best;
}

static CUresult load_variant(int index) {
  CUcontext context;
  CUresult status = cuCtxGetCurrent(&context);
  if (status != CUDA_SUCCESS) return status;
  if (loaded == NULL) {
    loaded = (sa_loaded *)calloc((size_t)sa_num_variants, sizeof(sa_loaded));
    if (loaded == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  }
  sa_loaded *slot = &loaded[index];
  if (slot->function != NULL && slot->context == context) return CUDA_SUCCESS;
  const sa_variant *v = &sa_variants[index];
  status = cuModuleLoadData(&slot->module, v->cubin);
  if (status != CUDA_SUCCESS) return status;
  status = cuModuleGetFunction(&slot->function, slot->module, v->entry);
  if (status != CUDA_SUCCESS) return status;
  if (v->shared_bytes > 48 * 1024) {
    /* Above 48 KB a kernel must opt in to its dynamic shared memory. */
    status = cuFuncSetAttribute(slot->function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                (int)v->shared_bytes);
    if (status != CUDA_SUCCESS) return status;
  }
  slot->context = context;
  return CUDA_SUCCESS;
}

/* The loaded variant of `kernel` for this GPU and dtype, in *index. */
static CUresult resolve(const char *kernel, sa_dtype_t dtype, int *index) {
  int arch;
  CUresult status = device_arch(&arch);
  if (status != CUDA_SUCCESS) return status;
  *index = pick_variant(kernel, dtype, arch);
  if (*index < 0) return CUDA_ERROR_NOT_FOUND;
  return load_variant(*index);
}

static unsigned int blocks_of(int32_t n, int block) {
  return ((unsigned int)n + (unsigned int)block - 1u) / (unsigned int)block;
}

static CUresult launch(int index, CUstream stream, unsigned int grid_x, unsigned int grid_y, void **args) {
  const sa_variant *v = &sa_variants[index];
  if (grid_x == 0 || grid_y == 0) return CUDA_SUCCESS;
  return cuLaunchKernel(loaded[index].function, grid_x, grid_y, 1, v->threads, 1, 1, v->shared_bytes,
                        stream, args, NULL);
}

/* Attention grids: (blocks of query rows, batch x heads). */
static CUresult launch_attention(const char *kernel, sa_dtype_t dtype, CUstream stream, int32_t q_len,
                                 int32_t batch_heads, void **args) {
  int index;
  CUresult status = resolve(kernel, dtype, &index);
  if (status != CUDA_SUCCESS) return status;
  return launch(index, stream, blocks_of(q_len, sa_variants[index].block), (unsigned int)batch_heads, args);
}

CUresult sa_kernels_load(void) {
  int arch;
  CUresult status = device_arch(&arch);
  for (int i = 0; status == CUDA_SUCCESS && i < sa_num_variants; ++i) {
    if (pick_variant(sa_variants[i].kernel, sa_variants[i].dtype, arch) == i) status = load_variant(i);
  }
  return status;
}

CUresult sa_rope_self_attention(CUstream stream, sa_dtype_t dtype, CUdeviceptr q, CUdeviceptr k,
                                CUdeviceptr v, CUdeviceptr cos, CUdeviceptr sin, int32_t batch,
                                int32_t heads, int32_t seq_len, const sa_attention_strides *strides,
                                CUdeviceptr out) {
  if (strides == NULL || batch < 0 || heads <= 0 || seq_len < 0) return CUDA_ERROR_INVALID_VALUE;
  sa_attention_strides s = *strides;
  CUdeviceptr scratch = 0;
  void *args[SA_MAX_ARGS] = {&q, &k, &v, &cos, &sin, &heads, &seq_len,
                             &s.q[0], &s.q[1], &s.q[2], &s.k[0], &s.k[1], &s.k[2],
                             &s.v[0], &s.v[1], &s.v[2], &s.out[0], &s.out[1], &s.out[2],
                             &out, &scratch, &scratch};
  return launch_attention("rope_self_attention", dtype, stream, seq_len, batch * heads, args);
}

CUresult sa_gqa_cross_attention(CUstream stream, sa_dtype_t dtype, CUdeviceptr q, CUdeviceptr k,
                                CUdeviceptr v, int32_t batch, int32_t heads, int32_t kv_heads,
                                int32_t q_len, int32_t kv_len, const sa_attention_strides *strides,
                                CUdeviceptr out) {
  if (strides == NULL || batch < 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 ||
      q_len < 0 || kv_len <= 0)
    return CUDA_ERROR_INVALID_VALUE;
  sa_attention_strides s = *strides;
  CUdeviceptr scratch = 0;
  void *args[SA_MAX_ARGS] = {&q, &k, &v, &heads, &kv_heads, &q_len, &kv_len,
                             &s.q[0], &s.q[1], &s.q[2], &s.k[0], &s.k[1], &s.k[2],
                             &s.v[0], &s.v[1], &s.v[2], &s.out[0], &s.out[1], &s.out[2],
                             &out, &scratch, &scratch};
  return launch_attention("gqa_cross_attention", dtype, stream, q_len, batch * heads, args);
}

CUresult sa_snake(CUstream stream, sa_dtype_t dtype, CUdeviceptr x, CUdeviceptr alpha,
                  CUdeviceptr inv_beta, int32_t batch, int32_t channels, int32_t length,
                  CUdeviceptr y) {
  if (batch < 0 || channels <= 0 || length < 0) return CUDA_ERROR_INVALID_VALUE;
  int32_t rows = batch * channels;
  CUdeviceptr scratch = 0;
  void *args[SA_MAX_ARGS] = {&x, &alpha, &inv_beta, &rows, &channels, &length, &y, &scratch, &scratch};
  /* Snake's grid: (batch x channels rows, blocks of samples). */
  int index;
  CUresult status = resolve("snake", dtype, &index);
  if (status != CUDA_SUCCESS) return status;
  return launch(index, stream, (unsigned int)rows, blocks_of(length, sa_variants[index].block), args);
}

int sa_kernels_head_dim(void) { return sa_head_dim; }
int sa_kernels_rope_half(void) { return sa_rope_half; }
