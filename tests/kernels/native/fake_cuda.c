/* TEST STAND-IN for the CUDA driver API calls libsa_kernels makes, so its launchers run on a
 * machine without a GPU. It reports a device of compute capability SA_FAKE_ARCH (e.g. "90"),
 * checks every module is an ELF cubin and prints each launch as one JSON line: the entry, the
 * cubin's SM (from the ELF header), grid, block, shared memory and the decoded arguments. */
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const unsigned char *cubin;
  char entry[128];
} fake_function;

static fake_function functions[64];
static int n_functions;

CUresult cuCtxGetCurrent(CUcontext *context) {
  *context = (CUcontext)0x1;
  return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *device) {
  *device = 0;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attribute, CUdevice device) {
  int arch = atoi(getenv("SA_FAKE_ARCH"));
  (void)device;
  if (attribute == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) *value = arch / 10;
  else if (attribute == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR) *value = arch % 10;
  else return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}

CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  if (memcmp(image, "\x7f" "ELF", 4) != 0) return CUDA_ERROR_INVALID_IMAGE;
  *module = (CUmodule)image;
  return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction *function, CUmodule module, const char *name) {
  fake_function *f = &functions[n_functions++];
  f->cubin = (const unsigned char *)module;
  snprintf(f->entry, sizeof f->entry, "%s", name);
  *function = (CUfunction)f;
  return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute attribute, int value) {
  printf("{\"set_attribute\": %d, \"value\": %d, \"entry\": \"%s\"}\n", (int)attribute, value,
         ((fake_function *)function)->entry);
  return CUDA_SUCCESS;
}

/* SM of a CUDA ELF: e_flags low byte for ELF ABI version 7, the next byte for version 8
 * (as seen in the cubins of Triton/ptxas for sm_80, sm_89 and sm_90). */
static int cubin_sm(const unsigned char *elf) {
  uint32_t flags;
  memcpy(&flags, elf + 0x30, sizeof flags);
  return elf[8] >= 8 ? (int)((flags >> 8) & 0xff) : (int)(flags & 0xff);
}

/* Parameter kinds per kernel: p = device pointer (8 bytes), i = int32. */
static const char *kinds(const char *entry) {
  if (strstr(entry, "rope_self_attention")) return "pppppiiiiiiiiiiiiiippp";
  if (strstr(entry, "gqa_cross_attention")) return "pppiiiiiiiiiiiiiiiippp";
  if (strstr(entry, "snake")) return "pppiiippp";
  return NULL;
}

CUresult cuLaunchKernel(CUfunction function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUstream stream, void **args,
                        void **extra) {
  fake_function *f = (fake_function *)function;
  const char *k = kinds(f->entry);
  if (k == NULL || extra != NULL) return CUDA_ERROR_INVALID_VALUE;
  printf("{\"entry\": \"%s\", \"sm\": %d, \"grid\": [%u, %u, %u], \"block\": [%u, %u, %u], "
         "\"shared\": %u, \"stream\": %llu, \"args\": [",
         f->entry, cubin_sm(f->cubin), gx, gy, gz, bx, by, bz, shared,
         (unsigned long long)(uintptr_t)stream);
  for (size_t i = 0; i < strlen(k); ++i) {
    long long value = k[i] == 'p' ? (long long)*(CUdeviceptr *)args[i] : (long long)*(int32_t *)args[i];
    printf("%s%lld", i ? ", " : "", value);
  }
  printf("]}\n");
  return CUDA_SUCCESS;
}
