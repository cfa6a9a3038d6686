/* The table that stable_audio_rt.kernels.aot generates: one entry per kernel x dtype x arch. */
#ifndef SA_KERNELS_VARIANTS_H
#define SA_KERNELS_VARIANTS_H

#include "sa_kernels.h"

typedef struct {
  const char *kernel;         /* spec name: rope_self_attention, gqa_cross_attention, snake */
  sa_dtype_t dtype;
  int arch;                   /* compute capability, e.g. 90 */
  const unsigned char *cubin;
  unsigned int cubin_size;
  const char *entry;          /* PTX entry point */
  unsigned int shared_bytes;
  unsigned int threads;       /* num_warps x 32 */
  int block;                  /* query rows (attention) or samples (Snake) per program */
} sa_variant;

extern const sa_variant sa_variants[];
extern const int sa_num_variants;
extern const int sa_head_dim;
extern const int sa_rope_half;

#endif
