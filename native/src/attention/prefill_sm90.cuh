// Hopper (sm_90a) prefill attention kernel on wgmma, part of prefill_kernels.cuh (included
// there, after the FA2-style kernel whose variant hooks and epilogue conventions it shares).
//
// One CTA of 2 warpgroups (256 threads) computes 128 packed query rows of one work item for one
// KV head; each warpgroup owns 64 rows. Per 128-key tile: S = Q K^T with wgmma m64n128k16 (Q and
// K from shared memory through matrix descriptors), mask and online softmax in registers (log2
// domain, the same code shape as the mma.sync kernel with one 16-row m tile and eight 16-key
// blocks: the wgmma accumulator of a warp has the m16n8 layout repeated along N), then O += P V
// with P as the register A operand and V read N-major from shared memory (transposed B).
//
// Shared tiles use the 128-byte swizzle of wgmma: a tile of R rows x D columns is stored as D / 64
// column blocks of R rows x 128 bytes, 16-byte chunk c of row r at chunk c ^ (r % 8), every
// block 1024-byte aligned. K/V tiles are copied with cp.async by all threads (one page lookup per
// key row, so paged caches cost nothing extra), three stages deep with one barrier per tile.
//
// Serves q and kv of the same 16-bit dtype, head dims (64, 64) and (128, 128), plan tiles of 128
// rows, every mask and logit variant but RoPE (prefill_launch falls back to the mma.sync kernel
// for the rest). The body exists only in the sm_90a image; prefill_sm90_usable checks at run
// time that the image the device loads has it.

// Other images (sm_80, and a plain sm_90 pass, which nvcc's -arch=sm_90a shorthand also runs)
// compile an empty body.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FI_PREFILL_SM90_BODY 1
#endif

template <int D>
struct Sm90Shape {
  static constexpr int kThreads = 256;
  static constexpr int kRows = 128, kKvTile = 128;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kStages = 3;
  static constexpr int kQBytes = kRows * D * 2, kKBytes = kKvTile * D * 2, kVBytes = kKvTile * D * 2;
  static constexpr size_t kSmemBytes = size_t(kQBytes) + kStages * size_t(kKBytes + kVBytes) + 1024;  // + alignment slack
  static_assert(D % 64 == 0, "128-byte swizzle blocks of 64 columns");
};

// Element offset of chunk `chunk` of row `row` in a swizzled tile of ROWS rows (layout above).
template <int ROWS>
__device__ __forceinline__ int sw128(int row, int chunk) {
  return (chunk >> 3) * ROWS * 64 + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride
// byte offsets (all >> 4), layout type 1 in bits 62-63.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFFu) >> 4) | (uint64_t((lbo >> 4) & 0x3FFFu) << 16) | (uint64_t((sbo >> 4) & 0x3FFFu) << 32) |
         (1ull << 62);
}

template <typename DT, int N>
struct Wgmma {
  // d (+)= A B, A and B K-major in shared memory; accumulate = 0 overwrites d.
  static __device__ __forceinline__ void ss(float (&d)[N / 2], uint64_t a, uint64_t b, int accumulate);
  // d += A B, A (m64k16) in registers, B N-major in shared memory.
  static __device__ __forceinline__ void rs_tb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);
};

#ifdef FI_PREFILL_SM90_BODY
// Generated operand lists (64 or 32 accumulators per thread).
template <>
__device__ __forceinline__ void Wgmma<__nv_bfloat16, 128>::ss(float (&d)[64], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(accumulate));
}
template <>
__device__ __forceinline__ void Wgmma<__nv_bfloat16, 128>::rs_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<__nv_bfloat16, 64>::ss(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(accumulate));
}
template <>
__device__ __forceinline__ void Wgmma<__nv_bfloat16, 64>::rs_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<__half, 128>::ss(float (&d)[64], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(accumulate));
}
template <>
__device__ __forceinline__ void Wgmma<__half, 128>::rs_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<__half, 64>::ss(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(accumulate));
}
template <>
__device__ __forceinline__ void Wgmma<__half, 64>::rs_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// cp.async writes are generic-proxy writes; wgmma reads through the async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the accumulators in registers across the asynchronous wgmma (no reordering around it).
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif

template <int D, typename DT, class Variant = DefaultVariant>
__global__ void __launch_bounds__(256, 1) prefill_sm90_kernel(const __grid_constant__ PrefillKernelParams p) {
#ifdef FI_PREFILL_SM90_BODY
  using S = Sm90Shape<D>;
  constexpr int C = S::kChunks, KVT = S::kKvTile, ROWS = S::kRows;
  constexpr int MKV = KVT / 16;  // 16-key blocks per tile
  constexpr int NVO = D / 8;     // 8-wide output column tiles
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);
  DT* q_smem = reinterpret_cast<DT*>(smem);
  DT* k_smem = reinterpret_cast<DT*>(smem + S::kQBytes);
  DT* v_smem = reinterpret_cast<DT*>(smem + S::kQBytes + S::kStages * S::kKBytes);

  const PrefillPlanView& plan = p.a.plan;
  const int w = int(gridDim.x) - 1 - int(blockIdx.x);  // long items first (see prefill_kernel)
  if (w >= plan.header[0]) return;
  const int kv_head = blockIdx.y;
  const int r = plan.work_request[w];
  const int G = p.group;
  const int qo_row0 = plan.qo_indptr[r];
  const int qo_len = plan.qo_indptr[r + 1] - qo_row0;
  const int kv_len = plan.kv_len[r];
  const int delta = kv_len - qo_len;
  const int row_begin = plan.work_qo_begin[w];
  const int tile_end = min(row_begin + p.a.cta_tile_q, qo_len * G);
  if (row_begin >= tile_end) return;
  const int rows = min(ROWS, tile_end - row_begin);
  const int tid = threadIdx.x, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wg = tid / 128, qrow_base = wg * 64 + ((tid / 32) % 4) * 16;  // this warp's first row

  // Q tile -> shared memory (rows past the tile are zero).
  {
    const DT* q = static_cast<const DT*>(p.a.q);
    for (int c = tid; c < ROWS * C; c += S::kThreads) {
      const int row = c / C, chunk = c % C;
      const int pr = row_begin + row;
      const bool valid = row < rows;
      const DT* src = q;
      if (valid) src += int64_t(qo_row0 + pr / G) * p.a.q_stride_n + int64_t(kv_head * G + pr % G) * p.a.q_stride_h + chunk * 8;
      cp_async_16(q_smem + sw128<ROWS>(row, chunk), src, valid);
    }
  }

  const int first_i = row_begin / G, last_i = (row_begin + rows - 1) / G;
  int kv_lo = plan.work_kv_begin[w], kv_hi = plan.work_kv_end[w];
  if (p.a.mask_mode == kMaskCausal) kv_hi = min(kv_hi, last_i + delta + 1);
  if (p.a.window_left >= 0) kv_lo = max(kv_lo, first_i + delta - p.a.window_left);
  const int num_tiles = kv_hi > kv_lo ? (kv_hi - kv_lo + KVT - 1) / KVT : 0;

  // K/V loads: two threads per key row, each 16-byte chunks part, part + 2, ...
  const int kv_base = plan.kv_indptr[r];
  auto load_tile = [&](int tile, int stage) {
    const int t_ = opaque(tid), load_row = t_ / 2, part = t_ % 2;
    const int key = kv_lo + tile * KVT + load_row;
    const bool valid = key < kv_hi;
    int64_t ko = 0, vo = 0;
    if (valid) {
      const int ps = p.a.page_size;
      if (ps > 0) {
        const int pi = (ps & (ps - 1)) == 0 ? key >> (__ffs(ps) - 1) : key / ps;
        const int64_t page = plan.indices[opaque(kv_base) + pi], pos = key - pi * ps;
        ko = page * p.a.k_stride_page + pos * p.a.k_stride_n;
        vo = page * p.a.v_stride_page + pos * p.a.v_stride_n;
      } else {
        const int64_t row = opaque(kv_base) + key;
        ko = row * p.a.k_stride_n;
        vo = row * p.a.v_stride_n;
      }
    }
    const int64_t kvh = opaque(kv_head);
    const DT* k_row = static_cast<const DT*>(p.a.k) + kvh * p.a.k_stride_h + ko;
    const DT* v_row = static_cast<const DT*>(p.a.v) + kvh * p.a.v_stride_h + vo;
    DT* kd = k_smem + stage * (S::kKBytes / 2);
    DT* vd = v_smem + stage * (S::kVBytes / 2);
#pragma unroll
    for (int i = 0; i < C / 2; ++i) {
      const int chunk = part + 2 * i;
      cp_async_16(kd + sw128<KVT>(load_row, chunk), k_row + chunk * 8, valid);
      cp_async_16(vd + sw128<KVT>(load_row, chunk), v_row + chunk * 8, valid);
    }
  };

  auto row_infos = [&](RowInfo (&ri)[1][2]) {
    const int base = opaque(row_begin) + qrow_base + g;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int pr = base + 8 * h;
      ri[0][h].qpos = pr / G + delta;
      ri[0][h].alibi =
          p.a.pos_encoding == FI_POS_ENCODING_ALIBI ? alibi_slope(kv_head * G + pr % G, p.a.num_qo_heads) * p.alibi_unit : 0.0f;
    }
  };
  const uint8_t* mask = p.a.mask_mode == kMaskCustom ? p.a.custom_mask + plan.mask_offset[r] : nullptr;

  float o[NVO * 4];
#pragma unroll
  for (int i = 0; i < NVO * 4; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, dsum[2] = {0.0f, 0.0f};

  // Q and tile 0 in one commit group, tile 1 in the next (empty groups past the last tile keep
  // the wait counts below valid).
  if (num_tiles > 0) load_tile(0, 0);
  cp_async_commit();
  if (num_tiles > 1) load_tile(1, 1);
  cp_async_commit();

  const bool elementwise_always = p.a.mask_mode == kMaskCustom || p.a.window_left >= 0;
  const int full_hi = p.a.mask_mode == kMaskCausal ? min(kv_hi, first_i + delta + 1) : kv_hi;
  // This warpgroup's 64 Q rows: column block b at q_addr + b * ROWS * 128.
  const uint32_t q_addr = smem_addr(q_smem) + wg * 64 * 128;
  const uint32_t k_addr0 = smem_addr(k_smem), v_addr0 = smem_addr(v_smem);

  int stage = 0, load_stage = 2;
#pragma unroll 1
  for (int tile = 0; tile < num_tiles; ++tile) {
    const int key0 = kv_lo + tile * KVT;
    cp_async_wait<1>();  // this tile (and Q) landed for this thread's copies
    fence_proxy_async();
    __syncthreads();     // ... for everyone's; the stage loaded next was last read a tile ago
    if (tile + 2 < num_tiles) load_tile(tile + 2, load_stage);
    cp_async_commit();
    const uint32_t k_addr = k_addr0 + stage * S::kKBytes, v_addr = v_addr0 + stage * S::kVBytes;
    stage = stage == 2 ? 0 : stage + 1;
    load_stage = load_stage == 2 ? 0 : load_stage + 1;

    // S = Q K^T: D / 16 k steps of 32 bytes, 4 per 128-byte swizzle block.
    float s[MKV * 8];
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t kb = (ks / 4) * 128u, off = (ks % 4) * 32u;
      const uint64_t da = sw128_desc(q_addr + kb * ROWS + off, 16, 1024);
      const uint64_t db = sw128_desc(k_addr + kb * KVT + off, 16, 1024);
      Wgmma<DT, KVT>::ss(s, da, db, ks > 0);
    }
    wgmma_commit();
    wgmma_wait0();
    reg_fence(s);

    // Masks and online softmax: s[8 * mk + e] is element e of 16-key block mk in the
    // mma.sync kernel's numbering (rows g / g + 8, keys mk * 16 + (e / 4) * 8 + 2 t + (e & 1)).
    const bool elementwise = elementwise_always || key0 + KVT > full_hi;
    const bool plain = !elementwise && Variant::plain_logits(p);
    RowInfo ri[1][2];
    if (!plain) row_infos(ri);
    uint32_t vis[2] = {~0u, ~0u};
    if (elementwise) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t bits = 0;
#pragma unroll 1
        for (int b = 0; b < 4 * MKV; ++b) {
          const int key = key0 + (b / 4) * 16 + ((b / 2) % 2) * 8 + 2 * t + (b & 1);
          const bool ok = key < kv_hi && Variant::visible(p, mask, kv_len, ri[0][h].qpos - delta, ri[0][h].qpos, key);
          bits |= uint32_t(ok) << b;
        }
        vis[h] = bits;
      }
    }
    if (plain) {
#pragma unroll
      for (int i = 0; i < MKV * 8; ++i) s[i] *= p.q_scale;
    } else {
#pragma unroll
      for (int mk = 0; mk < MKV; ++mk)
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int h = (e % 4) / 2;
          const int key = key0 + mk * 16 + (e / 4) * 8 + 2 * t + (e & 1);
          float x = Variant::logit(p, s[mk * 8 + e], ri[0][h], key);
          if (elementwise && !((vis[h] >> (mk * 4 + (e / 4) * 2 + (e & 1))) & 1u)) x = -INFINITY;
          s[mk * 8 + e] = x;
        }
    }
    float rescale[2];
    bool grew = false;
    {
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int i = 0; i < MKV * 8; ++i) tile_max[(i % 4) / 2] = fmaxf(tile_max[(i % 4) / 2], s[i]);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
        const float m_new = fmaxf(m[h], tile_max[h]);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        rescale[h] = exp2f(m[h] - m_use);
        grew = grew || m_new > m[h];
        m[h] = m_new;
        dsum[h] *= rescale[h];
#pragma unroll
        for (int i = 0; i < MKV * 8; ++i) {
          if ((i % 4) / 2 != h) continue;
          s[i] = exp2f(s[i] - m_use);
          dsum[h] += s[i];
        }
      }
    }
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
      for (int n = 0; n < NVO; ++n) {
        o[4 * n + 0] *= rescale[0];
        o[4 * n + 1] *= rescale[0];
        o[4 * n + 2] *= rescale[1];
        o[4 * n + 3] *= rescale[1];
      }
    }

    // O += P V: per 16-key block, P's A fragment is the S accumulator block packed to 16 bits;
    // V's k step advances 16 key rows (2048 bytes); its two 64-column blocks are LBO apart.
    uint32_t pa[MKV][4];
#pragma unroll
    for (int mk = 0; mk < MKV; ++mk) {
      pa[mk][0] = pack2<DT>(s[mk * 8 + 0], s[mk * 8 + 1]);
      pa[mk][1] = pack2<DT>(s[mk * 8 + 2], s[mk * 8 + 3]);
      pa[mk][2] = pack2<DT>(s[mk * 8 + 4], s[mk * 8 + 5]);
      pa[mk][3] = pack2<DT>(s[mk * 8 + 6], s[mk * 8 + 7]);
    }
    wgmma_fence();
#pragma unroll
    for (int mk = 0; mk < MKV; ++mk) {
      const uint64_t db = sw128_desc(v_addr + mk * 16 * 128, KVT * 128, 1024);
      Wgmma<DT, D>::rs_tb(o, pa[mk], db);
    }
    wgmma_commit();
    wgmma_wait0();
    reg_fence(o);
  }
  cp_async_wait<0>();

  // Finish (as prefill_kernel): row sums across the quad, normalize, write out or a partial.
  const int chunk = plan.work_chunk[w];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = dsum[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int local = qrow_base + g + 8 * h;
    if (local >= rows) continue;
    const float scale = sum > 0.0f ? p.a.v_scale / sum : 0.0f;
    const float lse2 = sum > 0.0f ? m[h] + log2f(sum) : -INFINITY;
    const int pr = row_begin + local;
    const int n_global = qo_row0 + pr / G, head = kv_head * G + pr % G;
    if (chunk < 0) {
      DT* out = static_cast<DT*>(p.a.out) + int64_t(n_global) * p.a.out_stride_n + int64_t(head) * p.a.out_stride_h + 2 * t;
#pragma unroll
      for (int n = 0; n < NVO; ++n)
        *reinterpret_cast<uint32_t*>(out + n * 8) = pack2<DT>(o[4 * n + 2 * h] * scale, o[4 * n + 2 * h + 1] * scale);
      if (p.a.lse != nullptr && t == 0) p.a.lse[int64_t(n_global) * p.a.lse_stride_n + int64_t(head) * p.a.lse_stride_h] = lse2 * kLn2;
    } else {
      const int64_t slot = plan.merge_indptr[n_global] + chunk;
      float* po = p.a.partial_o + (slot * p.a.num_qo_heads + head) * D + 2 * t;
#pragma unroll
      for (int n = 0; n < NVO; ++n)
        *reinterpret_cast<float2*>(po + n * 8) = make_float2(o[4 * n + 2 * h] * scale, o[4 * n + 2 * h + 1] * scale);
      if (t == 0) p.a.partial_lse[slot * p.a.num_qo_heads + head] = lse2;
    }
  }
#endif
}
