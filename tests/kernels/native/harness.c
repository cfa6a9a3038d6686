/* Calls each libsa_kernels launcher once with recognisable pointers and sizes (argv: dtype
 * 0 fp32, 1 fp16, 2 bf16) and prints each return code; fake_cuda.c prints the launches. */
#include <stdio.h>
#include <stdlib.h>

#include "sa_kernels.h"

int main(int argc, char **argv) {
  sa_dtype_t dtype = (sa_dtype_t)atoi(argv[1]);
  CUstream stream = (CUstream)0x77;
  const int32_t B = 2, H = 24, HKV = 12, T = 1025, S = 130, D = 64, C = 128, N = 70001;
  /* q, k, v as views of one (B, T, 3, H, D) projection; out as (B, T, H, D). */
  sa_attention_strides self = {{3 * T * H * D, D, 3 * H * D}, {3 * T * H * D, D, 3 * H * D},
                               {3 * T * H * D, D, 3 * H * D}, {T * H * D, D, H * D}};
  sa_attention_strides cross = {{T * H * D, D, H * D}, {HKV * S * D, S * D, D},
                                {HKV * S * D, S * D, D}, {T * H * D, D, H * D}};
  printf("{\"call\": \"rope_self_attention\", \"status\": %d}\n",
         (int)sa_rope_self_attention(stream, dtype, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, B, H, T,
                                     &self, 0x6000));
  printf("{\"call\": \"gqa_cross_attention\", \"status\": %d}\n",
         (int)sa_gqa_cross_attention(stream, dtype, 0x1000, 0x2000, 0x3000, B, H, HKV, T, S, &cross,
                                     0x6000));
  printf("{\"call\": \"snake\", \"status\": %d}\n",
         (int)sa_snake(stream, dtype, 0x1000, 0x2000, 0x3000, B, C, N, 0x4000));
  printf("{\"call\": \"bad_heads\", \"status\": %d}\n",
         (int)sa_gqa_cross_attention(stream, dtype, 0x1000, 0x2000, 0x3000, B, H, 7, T, S, &cross, 0x6000));
  printf("{\"call\": \"geometry\", \"head_dim\": %d, \"rope_half\": %d}\n", sa_kernels_head_dim(),
         sa_kernels_rope_half());
  return 0;
}
