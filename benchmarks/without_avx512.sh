#!/bin/sh
# Run a dpo_np command as if this CPU had AVX2 but no AVX-512: each library's AVX-512 code is
# switched off before it loads, so an AVX-512 machine stands in for one without it. The GEMM
# kernels and NumPy's loops are then those an AVX2 CPU runs; the cores, caches and clock stay
# this machine's. `bench all` reports which kernels ran.
#
#   sh benchmarks/without_avx512.sh bench all --json figures/bench_without_avx512.json
#   PYTHON=/path/to/venv/bin/python sh benchmarks/without_avx512.sh bench all   # another interpreter
set -eu
export OPENBLAS_CORETYPE=Haswell                                # OpenBLAS: the AVX2 GEMM kernels
export NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"  # NumPy: dispatch up to AVX2 (X86_V3)
export ATEN_CPU_CAPABILITY=avx2                                 # PyTorch's own kernels
export MKL_ENABLE_INSTRUCTIONS=AVX2                             # PyTorch's GEMMs (MKL)
export ONEDNN_MAX_CPU_ISA=AVX2                                  # PyTorch's oneDNN kernels
exec "${PYTHON:-python}" -m dpo_np "$@"
