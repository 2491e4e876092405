// Hopper (sm_90a) prefill attention kernel on wgmma, part of prefill_kernels.cuh (included
// there, after the FA2-style kernel whose variant hooks and epilogue conventions it shares).
//
// A persistent CTA of 3 warpgroups (384 threads) per SM loops over the plan's work items x KV
// heads. Warpgroup 0 loads; warpgroups 1 and 2 each own 64 of the item's 128 packed query rows.
// Per 128-key tile: S = Q K^T with wgmma m64n128k16 (Q and K from shared memory through matrix
// descriptors), mask and online softmax in registers (log2 domain, the same code shape as the
// mma.sync kernel with one 16-row m tile and eight 16-key blocks: the wgmma accumulator of a warp
// has the m16n8 layout repeated along N), then O += P V with P as the register A operand and V
// read N-major from shared memory (transposed B).
//
// Shared tiles use the 128-byte swizzle of wgmma: a tile of R rows x D columns is stored as D / 64
// column blocks of R rows x 128 bytes, 16-byte chunk c of row r at chunk c ^ (r % 8), every
// block 1024-byte aligned. The loader copies Q and K/V tiles by TMA where the tensor maps allow
// (cp.async otherwise, one page lookup per key row) into two Q buffers and K / V rings of two and
// three guarded by mbarriers; an item's first K/V tile goes before its Q, and the consumers chain
// items (an item's last P V and epilogue overlap the next item's first tile).
//
// Serves q and kv of the same 16-bit dtype, head dims (64, 64), (128, 128) and (256, 256: key
// tiles of 64), plan tiles of 128 rows, every mask and logit variant but RoPE (prefill_launch falls back to the mma.sync kernel
// for the rest), and generated variants (their hooks, and no-softmax weights). The body exists only in the sm_90a image; prefill_sm90_usable checks at run
// time that the image the device loads has it.

// Other images (sm_80, and a plain sm_90 pass, which nvcc's -arch=sm_90a shorthand also runs)
// compile an empty body.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FI_PREFILL_SM90_BODY 1
#endif

template <int D>
struct Sm90Shape {
  static constexpr int kThreads = 384;  // loader warpgroup + two consumer warpgroups
  // Head dim 256 takes key tiles of 64 (its 64 x 256 output tile is 128 accumulators a thread,
  // and a 128-key tile would not fit shared memory) and one Q buffer (two do not fit either).
  static constexpr int kRows = 128, kKvTile = D == 256 ? 64 : 128;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  // Q buffers 2 (1 for head dim 256), K ring 2, V ring 3 (V is read a tile after K: see the kernel).
  static constexpr int kQBuffers = D == 256 ? 1 : 2, kKStages = 2, kVStages = 3;
  static constexpr int kQBytes = kRows * D * 2, kKBytes = kKvTile * D * 2, kVBytes = kKvTile * D * 2;
  // Tiles, mbarriers (full / empty per buffer, two Q pairs always), 1024-byte alignment slack.
  static constexpr size_t kSmemBytes = kQBuffers * size_t(kQBytes) + kKStages * size_t(kKBytes) + kVStages * size_t(kVBytes) +
                                       8 * 2 * (2 + kKStages + kVStages) + 1024;
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
  // d += A B, A K-major and B N-major in shared memory (the MLA kernel's second warpgroup: P from
  // shared memory).
  static __device__ __forceinline__ void ss_tb(float (&d)[N / 2], uint64_t a, uint64_t b);
};

#ifdef FI_PREFILL_SM90_BODY
// Generated operand lists (128, 64 or 32 accumulators per thread).
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
// Head dim 256: P V as m64n256k16 (128 accumulators per thread).
template <>
__device__ __forceinline__ void Wgmma<__nv_bfloat16, 256>::rs_tb(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<__half, 256>::rs_tb(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<__nv_bfloat16, 256>::ss_tb(float (&d)[128], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<__half, 256>::ss_tb(float (&d)[128], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b), "r"(1));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// cp.async writes are generic-proxy writes; wgmma reads through the async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the accumulators in registers across the asynchronous wgmma (no reordering around it).
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// 2^x without the denormal fix-ups of exp2f: softmax weights below 2^-126 of the row maximum
// flush to 0 (they are far below the 16-bit P they feed); ex2(-inf) = 0.
__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_test(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Tensor-map (TMA) tile copies into shared memory, completing on an mbarrier's transaction count,
// with an L2 eviction policy (l2_policy).
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, uint32_t bar, uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3, uint32_t bar,
                                            uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, %3, %4, %5}], [%6], %7;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar), "l"(policy)
      : "memory");
}
// Keys read by one work item only (a request whose packed rows fit one tile: decode rows beside a
// prompt chunk) go evict-first, so that streaming them does not push out of L2 the keys that the
// many tiles of a long request read again and again; all others evict-normal.
__device__ __forceinline__ uint64_t l2_policy(bool read_once) {
  uint64_t policy;
  if (read_once) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  else asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// Named barriers over the two consumer warpgroups (256 threads); id 0 is __syncthreads.
__device__ __forceinline__ void named_sync(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void named_arrive(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }
#endif

// Tensor maps of K and V for TMA copies of whole tiles (the copy engine keeps far more bytes in
// flight per SM than cp.async: with cp.async alone this kernel measured no faster than the
// mma.sync one, 346 TFLOP/s on the single 8192 non-causal shape) (tma = 0: every tile goes through
// cp.async). Ragged: 3-d (dim, head, row); paged: 4-d (dim, head, slot, page), one box per page.
// Boxes are 64 columns (one 128-byte swizzle block) x 128 rows or x page_size slots.
// Q (tma_q): 4-d (dim, qo head within the group, kv head, token), box 64 x G x 1 x 128 / G, so that
// one box is the item's 128 packed rows in order (needs 128 % G == 0 and an item starting on a
// token; the kernel checks the latter per item and falls back to cp.async).
struct Sm90Maps {
  CUtensorMap k, v, q;
  int tma, tma_q;
};

// Fills the maps for this run, or sets tma = 0 when TMA does not fit it (page sizes that do not
// tile the key tile in multiples of 8, or strides the driver refuses). The row / page extents are
// unbounded: the kernel asks TMA only for tiles wholly inside the request's keys.
using TensorMapEncode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                     const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                     CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
// The driver's cuTensorMapEncodeTiled (nullptr where the driver has none).
inline TensorMapEncode tensor_map_encoder() {
  static const TensorMapEncode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<TensorMapEncode>(fn);
  }();
  return encode;
}

// A 16-bit tensor's map for tiles of 64 columns (one 128-byte swizzle block), `rank` dims of
// sizes `dims` with element strides `strides` (dims 1..), boxes `box`. False where the driver
// refuses it (strides not multiples of 16 bytes, say) or has no encoder.
inline bool make_tensor_map(CUtensorMap* map, int32_t dtype, const void* base, int rank, const cuuint64_t* dims,
                            const int64_t* strides, const cuuint32_t* box) {
  const TensorMapEncode encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  cuuint64_t bytes[4];
  for (int i = 0; i + 1 < rank; ++i) bytes[i] = cuuint64_t(strides[i]) * 2;
  const cuuint32_t elem[5] = {1, 1, 1, 1, 1};
  const CUtensorMapDataType type = dtype == FI_FLOAT16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return encode(map, type, cuuint32_t(rank), const_cast<void*>(base), dims, bytes, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// A paged cache's map, 4-d (dim, head, slot, page), one box per page: 64 columns x 1 head x
// page_size slots (the page extent is unbounded: kernels ask only for pages they own).
inline bool make_paged_tensor_map(CUtensorMap* map, int32_t dtype, const void* base, int D, int heads, int ps, int64_t s_page,
                                  int64_t s_n, int64_t s_h) {
  const cuuint64_t dims[4] = {cuuint64_t(D), cuuint64_t(heads), cuuint64_t(ps), cuuint64_t(1) << 31};
  const int64_t strides[3] = {s_h, s_n, s_page};
  const cuuint32_t box[4] = {64, 1, cuuint32_t(ps), 1};
  return make_tensor_map(map, dtype, base, 4, dims, strides, box);
}

inline void sm90_make_maps(const PrefillParams& a, int D, int kv_tile, Sm90Maps& m) {
  m.tma = 0;
  m.tma_q = 0;
  const int ps = a.page_size;
  if (ps > 0 && (ps % 8 != 0 || kv_tile % ps != 0)) return;
  auto make = [&](CUtensorMap* map, const void* base, int64_t s_page, int64_t s_n, int64_t s_h) {
    if (ps > 0) return make_paged_tensor_map(map, a.kv_dtype, base, D, a.num_kv_heads, ps, s_page, s_n, s_h);
    const cuuint64_t dims[3] = {cuuint64_t(D), cuuint64_t(a.num_kv_heads), cuuint64_t(1) << 31};
    const int64_t strides[2] = {s_h, s_n};
    const cuuint32_t box[3] = {64, 1, cuuint32_t(kv_tile)};
    return make_tensor_map(map, a.kv_dtype, base, 3, dims, strides, box);
  };
  if (make(&m.k, a.k, a.k_stride_page, a.k_stride_n, a.k_stride_h) && make(&m.v, a.v, a.v_stride_page, a.v_stride_n, a.v_stride_h))
    m.tma = 1;
  // Q by TMA, so that the next item's Q lands as soon as its buffer frees while the loader goes
  // on (out-of-range tokens read as zeros; rows past the item's own are never written out).
  const int G = a.num_kv_heads > 0 ? a.num_qo_heads / a.num_kv_heads : 0;
  if (G >= 1 && 128 % G == 0 && a.total_qo > 0) {
    const cuuint64_t dims[4] = {cuuint64_t(D), cuuint64_t(G), cuuint64_t(a.num_kv_heads), cuuint64_t(a.total_qo)};
    const int64_t strides[3] = {a.q_stride_h, a.q_stride_h * G, a.q_stride_n};
    const cuuint32_t box[4] = {64, cuuint32_t(G), 1, cuuint32_t(128 / G)};
    m.tma_q = make_tensor_map(&m.q, a.q_dtype, a.q, 4, dims, strides, box);
  }
}

// One work item of the persistent loop: plan item w for KV head kv_head (both roles derive it).
struct Sm90Item {
  int w, kv_head, r, qo_row0, qo_len, delta, row_begin, rows, kv_lo, kv_hi, num_tiles, kv_len, first_i;
};

// What an item's epilogue needs (the consumers keep it for an item whose epilogue runs during the
// next item's first tile).
struct Sm90Done {
  int chunk, rows, row_begin, qo_row0, kv_head, r, qo_len, kv_len;
};
__device__ __forceinline__ Sm90Done sm90_done(const PrefillPlanView& plan, const Sm90Item& it) {
  return {plan.work_chunk[it.w], it.rows, it.row_begin, it.qo_row0, it.kv_head, it.r, it.qo_len, it.kv_len};
}

// Items in the order the CTAs take them: longest first (the plan lists a request's tiles by
// ascending rows, longest last), heads of one plan item adjacent. False past the end.
// KVT: the kernel's key tile.
template <int KVT>
__device__ __forceinline__ bool sm90_item(const PrefillKernelParams& p, int item, Sm90Item& it) {
  const PrefillPlanView& plan = p.a.plan;
  const int H = p.a.num_kv_heads, n_work = plan.header[0];
  if (item >= n_work * H) return false;
  it.w = n_work - 1 - item / H;
  it.kv_head = item % H;
  const int G = p.group;
  it.r = plan.work_request[it.w];
  it.qo_row0 = plan.qo_indptr[it.r];
  it.qo_len = plan.qo_indptr[it.r + 1] - it.qo_row0;
  it.kv_len = plan.kv_len[it.r];
  it.delta = it.kv_len - it.qo_len;
  it.row_begin = plan.work_qo_begin[it.w];
  const int tile_end = min(it.row_begin + p.a.cta_tile_q, it.qo_len * G);
  it.rows = max(0, min(128, tile_end - it.row_begin));
  it.first_i = it.row_begin / G;
  const int last_i = (it.row_begin + max(it.rows, 1) - 1) / G;
  it.kv_lo = plan.work_kv_begin[it.w];
  it.kv_hi = plan.work_kv_end[it.w];
  if (p.a.mask_mode == kMaskCausal) it.kv_hi = min(it.kv_hi, last_i + it.delta + 1);
  if (p.a.window_left >= 0) it.kv_lo = max(it.kv_lo, it.first_i + it.delta - p.a.window_left);
  it.num_tiles = it.rows > 0 && it.kv_hi > it.kv_lo ? (it.kv_hi - it.kv_lo + KVT - 1) / KVT : 0;
  return true;
}

// Warp-specialized persistent kernel: warpgroup 0 loads (Q into two buffers, K and V tiles into
// rings of two and three, by TMA or cp.async; mbarriers "full" / "empty" per buffer), warpgroups 1
// and 2 compute 64 rows each. The two consumers take turns issuing their GEMMs (named barriers),
// so that one's softmax overlaps the other's tensor-core work; within a consumer, P V of the
// previous tile is issued together with Q K^T of this one and runs under this tile's softmax.
// That holds across items too: an item's last P V goes out with the next item's first Q K^T, and
// its epilogue (normalize, store) runs after the next item's first softmax, while the other
// consumer has the tensor cores, so an item boundary costs about what a tile boundary does (items
// of a few tiles, block-sparse rows and batches of short requests, were a third slower per tile
// than long ones). K frees as soon as its Q K^T completes and V only after its P V, a tile later,
// hence the shorter K ring; the second Q buffer lets the next item's Q land during this item.
// The grid is at most one CTA per SM, looping over the items; the loader runs ahead across items.
template <int D, typename DT, class Variant = DefaultVariant>
__global__ void __launch_bounds__(384, 1) prefill_sm90_kernel(const __grid_constant__ typename Variant::KernelParams p,
                                                                     const __grid_constant__ Sm90Maps maps) {
#ifdef FI_PREFILL_SM90_BODY
  using S = Sm90Shape<D>;
  constexpr int C = S::kChunks, KVT = S::kKvTile, ROWS = S::kRows, KS = S::kKStages, VS = S::kVStages, QB = S::kQBuffers;
  constexpr int MKV = KVT / 16;  // 16-key blocks per tile
  constexpr int NVO = D / 8;     // 8-wide output column tiles
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);
  DT* q_smem = reinterpret_cast<DT*>(smem);
  DT* k_smem = reinterpret_cast<DT*>(smem + QB * S::kQBytes);
  DT* v_smem = reinterpret_cast<DT*>(smem + QB * S::kQBytes + KS * S::kKBytes);
  const uint32_t bars = smem_addr(smem + QB * S::kQBytes + KS * S::kKBytes + VS * S::kVBytes);
  // mbarriers (8 bytes each): q_full[2], q_empty[2], k_full[KS], k_empty[KS], v_full[VS], v_empty[VS].
  auto q_full = [&](int b) { return bars + 8u * b; };
  auto q_empty = [&](int b) { return bars + 8u * (2 + b); };
  auto k_full = [&](int s) { return bars + 8u * (4 + s); };
  auto k_empty = [&](int s) { return bars + 8u * (4 + KS + s); };
  auto v_full = [&](int s) { return bars + 8u * (4 + 2 * KS + s); };
  auto v_empty = [&](int s) { return bars + 8u * (4 + 2 * KS + VS + s); };
  const int tid = threadIdx.x;
  if (tid == 0) {
    // Full barriers: the loader's 128 threads; empty ones: both consumers' 256.
    for (int b = 0; b < 2; ++b) {
      mbar_init(q_full(b), 128);
      mbar_init(q_empty(b), 256);
    }
    for (int s = 0; s < KS; ++s) {
      mbar_init(k_full(s), 128);
      mbar_init(k_empty(s), 256);
    }
    for (int s = 0; s < VS; ++s) {
      mbar_init(v_full(s), 128);
      mbar_init(v_empty(s), 256);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  const PrefillPlanView& plan = p.a.plan;
  const int G = p.group;

  if (tid < 128) {
    // ---- loader warpgroup: C threads (one per 16-byte chunk) share a row, so that each warp
    // instruction copies whole 128-byte lines (32 C / 128 rows per pass, C passes per tile).
    constexpr int kRowsPerPass = 128 / C;
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n");
    // Barriers to arrive on once this thread's last commit group lands (a gathered K/V tile is one
    // group for both full barriers).
    uint32_t pending = 0, pending2 = 0;
    auto flush = [&]() {
      if (pending != 0) {
        cp_async_wait<0>();
        fence_proxy_async();
        mbar_arrive(pending);
        if (pending2 != 0) mbar_arrive(pending2);
        pending = pending2 = 0;
      }
    };
    // After a new commit group: the previous one has landed once at most one is pending.
    auto signal_previous = [&](uint32_t next, uint32_t next2 = 0) {
      cp_async_wait<1>();
      fence_proxy_async();
      if (pending != 0) mbar_arrive(pending);
      if (pending2 != 0) mbar_arrive(pending2);
      pending = next;
      pending2 = next2;
    };
    // Waits for a free buffer; never blocks with an unsignaled group (the consumers may need it
    // to get there).
    auto wait_free = [&](uint32_t bar, uint32_t parity) {
      if (!mbar_test(bar, parity)) {
        flush();
        mbar_wait(bar, parity);
      }
    };
    // The item's Q into buffer cnt % QB, once the consumers' last Q K^T of item cnt - QB read it.
    auto load_q = [&](const Sm90Item& it, int cnt) {
      const int b = cnt % QB;
      wait_free(q_empty(b), ((cnt / QB) & 1) ^ 1);
      DT* qd = q_smem + b * (S::kQBytes / int(sizeof(DT)));
      if (maps.tma_q && it.row_begin % G == 0) {
        // One box per 64-column block: the 128 packed rows in order (the map's box is G heads x
        // 128 / G tokens).
        if (tid == 0) mbar_arrive_expect_tx(q_full(b), S::kQBytes);
        __syncwarp();
        if (tid < D / 64)
          tma_load_4d(smem_addr(qd) + tid * (ROWS * 128), &maps.q, tid * 64, 0, it.kv_head, it.qo_row0 + it.row_begin / G, q_full(b),
                      l2_policy(false));
        if (tid != 0) mbar_arrive(q_full(b));
        return;
      }
#pragma unroll 4
      for (int pass = 0; pass < C; ++pass) {
        const int row = pass * kRowsPerPass + tid / C, pr = it.row_begin + row;
        const bool valid = row < it.rows;
        const DT* src = static_cast<const DT*>(p.a.q);
        if (valid) src += int64_t(it.qo_row0 + pr / G) * p.a.q_stride_n + int64_t(it.kv_head * G + pr % G) * p.a.q_stride_h;
        cp_async_16(qd + sw128<ROWS>(row, tid % C), src + (tid % C) * 8, valid);
      }
      cp_async_commit();
      signal_previous(q_full(b));
      flush();  // the consumers start on it
    };
    int k = 0, cnt = 0;
    Sm90Item it;
    const int ps = p.a.page_size;
    const bool pow2_pages = (ps & (ps - 1)) == 0;
    // The page holding key `key` of a paged item (any page past kv_hi: never copied).
    auto page_of = [&](int kv_base, int kv_hi, int key) -> int32_t {
      if (ps == 0 || key >= kv_hi) return 0;
      return __ldg(plan.indices + kv_base + (pow2_pages ? key >> (__ffs(ps) - 1) : key / ps));
    };
    // Without TMA every tile is gathered: this thread's row of the next tile is read while the
    // current one is copied. (Reading the next item's first row during an item's last tile as
    // well spilled the loader's registers, for a read the item start issues right after the
    // last tile's copies anyway.)
    const bool gather_all = !maps.tma;
    int32_t ahead = 0;
    // Gathered tiles: each loader warp copies a quarter of the tile's rows; lane l of warp w looks
    // up the page of row w R + l (R = KVT / 4; lanes past R hold no row).
    constexpr int kRowsPerWarp = KVT / 4;
    static_assert(kRowsPerWarp <= 32 && (kRowsPerWarp * C) % 32 == 0, "gathered rows per loader warp");
    const int my_row = (tid % 32) < kRowsPerWarp ? (tid / 32) * kRowsPerWarp + tid % 32 : KVT;
    // Paged tiles by TMA: lane l of warp 0 holds the index of page l of the tile it copies next
    // (0 where the tile has no such page or starts inside a page, which TMA does not copy).
    static_assert(KVT / 8 <= 32, "a TMA tile's pages fit warp 0");
    const bool paged_tma = maps.tma && ps > 0 && tid < 32;
    int32_t tma_page = 0;
    auto tma_page_of = [&](int kv_base, int kv_hi, int key0) -> int32_t {
      const int npages = (min(KVT, kv_hi - key0) + ps - 1) / ps;
      return key0 < kv_hi && key0 % ps == 0 && tid < npages ? plan.indices[kv_base + key0 / ps + tid] : 0;
    };
    constexpr int CB = D / 64;  // 64-column blocks of a row
    for (int item = blockIdx.x; sm90_item<KVT>(p, item, it); item += gridDim.x, ++cnt) {
      const int kv_base = plan.kv_indptr[it.r];
      if (gather_all && it.num_tiles > 0) ahead = page_of(kv_base, it.kv_hi, it.kv_lo + my_row);
      if (paged_tma && it.num_tiles > 0) tma_page = tma_page_of(kv_base, it.kv_hi, it.kv_lo);
      if (it.num_tiles == 0) load_q(it, cnt);
      // The first K/V tile goes before Q: its buffers free earlier than the Q buffer, so that it
      // is in flight while the consumers finish.
      for (int tile = 0; tile < it.num_tiles; ++tile, ++k) {
        const int ks = k % KS, vs = k % VS;
        DT* kd = k_smem + ks * (S::kKBytes / int(sizeof(DT)));
        DT* vd = v_smem + vs * (S::kVBytes / int(sizeof(DT)));
        const int key0 = it.kv_lo + tile * KVT;
        // TMA also serves a partial tile when the rows it copies are the request's own keys
        // (rows past kv_hi are masked to -inf before softmax, so any finite V there is harmless):
        // ragged, the whole KVT-row box inside kv_len; paged, the pages holding used keys, and
        // the V rows after them zeroed (stale shared memory could hold NaN, and 0 x NaN = NaN).
        const int used = min(KVT, it.kv_hi - key0);
        const int npages = ps == 0 ? 0 : (used + ps - 1) / ps;
        const int rows_copied = ps == 0 ? KVT : npages * ps;
        const bool by_tma = maps.tma && (ps == 0 || key0 % ps == 0) && key0 + rows_copied <= it.kv_len;
        const uint64_t policy = l2_policy(it.qo_len * G <= ROWS);
        // One tensor (K: 0, V: 1) of the tile by TMA: warp 0 issues one copy per column block
        // [and page]; thread 0 arrives with the expected bytes, the others plainly.
        auto tma_tile = [&](int tensor, DT* dst, uint32_t full) {
          if (tid == 0) mbar_arrive_expect_tx(full, CB * rows_copied * 128);
          __syncwarp();
          const CUtensorMap* map = tensor == 0 ? &maps.k : &maps.v;
          if (ps == 0) {
            if (tid < CB) tma_load_3d(smem_addr(dst) + tid * (KVT * 128), map, tid * 64, it.kv_head, kv_base + key0, full, policy);
          } else if (tid < npages) {
            // Lane l copies page l of the tile (TMA pages hold 8 keys or more: at most 16 a tile),
            // whose index it read a tile ahead.
            for (int cb = 0; cb < CB; ++cb)
              tma_load_4d(smem_addr(dst) + cb * (KVT * 128) + tid * ps * 128, map, cb * 64, it.kv_head, 0, tma_page, full, policy);
          }
          if (tid != 0) mbar_arrive(full);
        };
        // Gathered rows (pages TMA cannot copy, e.g. one key per page, or a partial tile): warp w
        // copies rows w R .. w R + R - 1 (R = KVT / 4), and lane l < R of it holds the page of row
        // w R + l, handed to the copying lanes by shuffle: one index read per thread and tile (read
        // a tile ahead when every tile is gathered), not one dependent read per row copied.
        int32_t pages = 0;
        if (!by_tma) {
          pages = gather_all ? ahead : page_of(kv_base, it.kv_hi, key0 + my_row);
          if (gather_all && tile + 1 < it.num_tiles) ahead = page_of(kv_base, it.kv_hi, key0 + KVT + my_row);
        }
        auto gather_rows = [&](int tensor, DT* dst) {
          constexpr int kRowsPerWarpPass = 32 / C > 0 ? 32 / C : 1;
          const int lane = tid % 32, chunk = lane % C;
          const int64_t stride_page = tensor == 0 ? p.a.k_stride_page : p.a.v_stride_page;
          const int64_t stride_n = tensor == 0 ? p.a.k_stride_n : p.a.v_stride_n;
          const DT* base = static_cast<const DT*>(tensor == 0 ? p.a.k : p.a.v) +
                           int64_t(it.kv_head) * (tensor == 0 ? p.a.k_stride_h : p.a.v_stride_h) + chunk * 8;
#pragma unroll 4
          for (int pass = 0; pass < kRowsPerWarp * C / 32; ++pass) {
            const int from = pass * kRowsPerWarpPass + lane / C, row = (tid / 32) * kRowsPerWarp + from, key = key0 + row;
            const bool valid = key < it.kv_hi;
            int64_t off = 0;
            if (ps > 0) {
              const int64_t page = __shfl_sync(0xffffffffu, pages, from);
              const int64_t pos = pow2_pages ? key & (ps - 1) : key % ps;
              off = page * stride_page + pos * stride_n;
            } else {
              off = int64_t(kv_base + key) * stride_n;
            }
            cp_async_16(dst + sw128<KVT>(row, chunk), base + (valid ? off : 0), valid);
          }
        };
        wait_free(k_empty(ks), ((k / KS) & 1) ^ 1);
        if (by_tma) {
          tma_tile(0, kd, k_full(ks));
          wait_free(v_empty(vs), ((k / VS) & 1) ^ 1);
          if (rows_copied < KVT) {
            // Zero V rows [rows_copied, KVT) of each column block (contiguous 128-byte rows), before
            // this thread's arrival.
            const int per_block = (KVT - rows_copied) * 8;  // 16-byte chunks
            for (int i = tid; i < CB * per_block; i += 128) {
              const int cb = i / per_block, rem = i % per_block;
              *reinterpret_cast<uint4*>(reinterpret_cast<uint8_t*>(vd) + cb * (KVT * 128) + rows_copied * 128 + rem * 16) =
                  make_uint4(0u, 0u, 0u, 0u);
            }
            fence_proxy_async();
          }
          tma_tile(1, vd, v_full(vs));
        } else {
          wait_free(v_empty(vs), ((k / VS) & 1) ^ 1);
          gather_rows(0, kd);
          gather_rows(1, vd);
          cp_async_commit();
          signal_previous(k_full(ks), v_full(vs));
        }
        if (tile == 0) load_q(it, cnt);
        // The next tile's page indices, read now so that their latency passes while this lane
        // waits for free buffers, not after (a tile of pages of 16 is 32 copies behind one read).
        if (paged_tma) tma_page = tma_page_of(kv_base, it.kv_hi, key0 + KVT);
      }
    }
    flush();
    return;
  }

  // ---- consumer warpgroups
  asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n");
  const int cwg = tid / 128 - 1, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int qrow_base = cwg * 64 + ((tid / 32) % 4) * 16;  // this warp's first row of the tile
  const int my_turn = 1 + cwg, other_turn = 2 - cwg;        // named barrier ids
  if (cwg == 1) named_arrive(1);                            // consumer 0 issues first
  const uint32_t q_addr0 = smem_addr(q_smem) + cwg * 64 * 128;  // this warpgroup's 64 Q rows of buffer 0
  const uint32_t k_addr0 = smem_addr(k_smem), v_addr0 = smem_addr(v_smem);
  const bool elementwise_always = Variant::kElementwiseMask || p.a.mask_mode == kMaskCustom || p.a.window_left >= 0;

  int k = 0, cnt = 0;
  Sm90Item it;
  float o[NVO * 4];
  uint32_t pa[MKV][4];  // P of the previous tile (A operand of its P V)
  // The item whose last P V and epilogue are still to do: what its epilogue needs, and its
  // softmax state (kept rather than the item's index: recomputing the item there spilled).
  bool pending = false;
  Sm90Done pd{};
  float pm[2] = {-INFINITY, -INFINITY}, pdsum[2] = {0.0f, 0.0f};
  auto zero_o = [&]() {
#pragma unroll
    for (int i = 0; i < NVO * 4; ++i) o[i] = 0.0f;
  };
  auto pv = [&](int vs) {
#pragma unroll
    for (int mk = 0; mk < MKV; ++mk)
      Wgmma<DT, D>::rs_tb(o, pa[mk], sw128_desc(v_addr0 + vs * S::kVBytes + mk * 16 * 128, KVT * 128, 1024));
  };
  // An item's epilogue (as prefill_kernel's): row sums across the quad, normalize, write out or a
  // partial state. `f` is the item, mm / ds its row maxima and sums.
  auto finish = [&](const Sm90Done& f, const float (&mm)[2], const float (&ds)[2]) {
    const int chunk = f.chunk;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = ds[h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int local = qrow_base + g + 8 * h;
      if (local >= f.rows) continue;
      const float scale = !Variant::kUseSoftmax ? p.a.v_scale : sum > 0.0f ? p.a.v_scale / sum : 0.0f;
      const float lse2 = !Variant::kUseSoftmax ? 0.0f : sum > 0.0f ? mm[h] + log2f(sum) : -INFINITY;
      const int pr = f.row_begin + local;
      const int n_global = f.qo_row0 + pr / G, head = f.kv_head * G + pr % G;
      if (chunk < 0) {
        DT* out = static_cast<DT*>(p.a.out) + int64_t(n_global) * p.a.out_stride_n + int64_t(head) * p.a.out_stride_h + 2 * t;
#pragma unroll
        for (int n = 0; n < NVO; ++n) {
          float x = o[4 * n + 2 * h] * scale, y = o[4 * n + 2 * h + 1] * scale;
          if constexpr (Variant::Output::kActive) {  // split rows get it in the merge
            const OutputIndex ix{f.r, pr / G, head, f.kv_head, f.qo_len, f.kv_len, n_global};
            x = Variant::Output::apply(p.vp, x, ix, n * 8 + 2 * t);
            y = Variant::Output::apply(p.vp, y, ix, n * 8 + 2 * t + 1);
          }
          *reinterpret_cast<uint32_t*>(out + n * 8) = pack2<DT>(x, y);
        }
        if (p.a.lse != nullptr && t == 0)
          p.a.lse[int64_t(n_global) * p.a.lse_stride_n + int64_t(head) * p.a.lse_stride_h] = lse2 * kLn2;
      } else {
        const int64_t slot = plan.merge_indptr[n_global] + chunk;
        float* po = p.a.partial_o + (slot * p.a.num_qo_heads + head) * D + 2 * t;
#pragma unroll
        for (int n = 0; n < NVO; ++n)
          *reinterpret_cast<float2*>(po + n * 8) = make_float2(o[4 * n + 2 * h] * scale, o[4 * n + 2 * h + 1] * scale);
        if (t == 0) p.a.partial_lse[slot * p.a.num_qo_heads + head] = lse2;
      }
    }
  };
  // The pending item's last P V alone (no next Q K^T to pair it with), then its epilogue.
  auto flush_pending = [&]() {
    if (!pending) return;
    const int vs = (k - 1) % VS;
    mbar_wait(v_full(vs), ((k - 1) / VS) & 1);
    wgmma_fence();
    pv(vs);
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(o);
    mbar_arrive(v_empty(vs));
    finish(pd, pm, pdsum);
    pending = false;
  };

  for (int item = blockIdx.x; sm90_item<KVT>(p, item, it); item += gridDim.x, ++cnt) {
    const int qb = cnt % QB, q_parity = (cnt / QB) & 1;
    const uint32_t q_addr = q_addr0 + qb * S::kQBytes;
    const int full_hi = p.a.mask_mode == kMaskCausal ? min(it.kv_hi, it.first_i + it.delta + 1) : it.kv_hi;
    const uint8_t* mask = p.a.mask_mode == kMaskCustom ? p.a.custom_mask + plan.mask_offset[it.r] : nullptr;
    const ItemInfo info{it.r, it.qo_len, it.kv_len, it.qo_row0, it.kv_head};
    auto row_infos = [&](RowInfo (&ri)[1][2]) {
      const int base = opaque(it.row_begin) + qrow_base + g;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int pr = base + 8 * h;
        ri[0][h].qi = pr / G;
        ri[0][h].qpos = pr / G + it.delta;
        ri[0][h].qo_head = it.kv_head * G + pr % G;
        ri[0][h].alibi = p.a.pos_encoding == FI_POS_ENCODING_ALIBI
                             ? alibi_slope(it.kv_head * G + pr % G, p.a.num_qo_heads) * kLog2e : 0.0f;
      }
    };
    if constexpr (!Variant::kKeyTransform) {
      // An item whose rows all lie in consumer 0's half (decode rows: a few packed rows) leaves
      // consumer 1 nothing to compute: it keeps the rings and the turns (it releases every buffer
      // and takes its turn per tile) but issues no math, so the tensor cores serve consumer 0 alone.
      if (cwg == 1 && it.rows <= 64) {
        flush_pending();
        mbar_wait(q_full(qb), q_parity);
        for (int tile = 0; tile < it.num_tiles; ++tile, ++k) {
          mbar_wait(k_full(k % KS), (k / KS) & 1);
          mbar_wait(v_full(k % VS), (k / VS) & 1);
          named_sync(my_turn);
          named_arrive(other_turn);
          mbar_arrive(k_empty(k % KS));
          mbar_arrive(v_empty(k % VS));
        }
        mbar_arrive(q_empty(qb));
        continue;
      }
    }
    float m[2] = {-INFINITY, -INFINITY}, dsum[2] = {0.0f, 0.0f};
    mbar_wait(q_full(qb), q_parity);
    if constexpr (Variant::kQueryTransform) {
      // A variant's query transform, in place on this warpgroup's own 64 rows of Q (real rows
      // only), before its first Q K^T reads them: the fence hands the writes to the async proxy
      // (wgmma), the warpgroup barrier (ids 3, 4: 1 and 2 take turns) waits for all 128 threads.
      DT* qs = q_smem + qb * (S::kQBytes / int(sizeof(DT)));
      for (int e = tid % 128; e < 64 * D; e += 128) {
        const int row = cwg * 64 + e / D, c = e % D;
        if (row >= it.rows) continue;
        DT* x = qs + sw128<ROWS>(row, c / 8) + c % 8;
        const int pr = it.row_begin + row;
        *x = from_float<DT>(Variant::query(p, to_float(*x), info, pr / G, it.kv_head * G + pr % G, c));
      }
      fence_proxy_async();
      asm volatile("bar.sync %0, 128;\n" ::"r"(3 + cwg) : "memory");
    }
    if (it.num_tiles == 0) {  // nothing to attend: zeros and lse -inf (or an empty partial state)
      mbar_arrive(q_empty(qb));
      flush_pending();
      zero_o();
      finish(sm90_done(plan, it), m, dsum);
      continue;
    }

    // One K/V tile. MODE (compile time, so that every path the compiler sees issues and waits for
    // the same wgmma groups): 0, an item's first tile with nothing before it (no P V); 1, a later
    // tile (the previous tile's P V goes with its Q K^T); 2, an item's first tile after an item
    // whose last P V is pending (that P V goes with this Q K^T, and its epilogue runs after this
    // tile's softmax).
    auto process_tile = [&](auto mode_tag, int tile) {
      constexpr int MODE = decltype(mode_tag)::value;
      const int ks = k % KS, pvs = (k + VS - 1) % VS;  // this tile's K, the previous tile's V
      const int key0 = it.kv_lo + tile * KVT;
      mbar_wait(k_full(ks), (k / KS) & 1);
      if constexpr (Variant::kKeyTransform) {
        // A variant's key transform, in place on the landed K tile, each consumer warpgroup
        // taking every other element, before either reads it (barrier 5: both warpgroups, before
        // the turn barriers so that neither waits on a turn the other cannot reach).
        DT* kt = k_smem + ks * (S::kKBytes / int(sizeof(DT)));
        for (int e = tid - 128; e < KVT * D; e += 256) {
          const int row = e / D, c = e % D;
          DT* x = kt + sw128<KVT>(row, c / 8) + c % 8;
          *x = from_float<DT>(Variant::key(p, to_float(*x), info, key0 + row, c));
        }
        fence_proxy_async();
        named_sync(5);
      }
      if constexpr (MODE != 0) mbar_wait(v_full(pvs), ((k - 1) / VS) & 1);
      const uint32_t k_addr = k_addr0 + ks * S::kKBytes;
      float s[MKV * 8];
      named_sync(my_turn);
      wgmma_fence();
#pragma unroll
      for (int ks16 = 0; ks16 < D / 16; ++ks16) {
        const uint32_t kb = (ks16 / 4) * 128u, off = (ks16 % 4) * 32u;
        const uint64_t da = sw128_desc(q_addr + kb * ROWS + off, 16, 1024);
        const uint64_t db = sw128_desc(k_addr + kb * KVT + off, 16, 1024);
        Wgmma<DT, KVT>::ss(s, da, db, ks16 > 0);
      }
      wgmma_commit();
      if constexpr (MODE != 0) {
        pv(pvs);
        wgmma_commit();
      }
      named_arrive(other_turn);
      if constexpr (MODE == 0) wgmma_wait<0>();
      else wgmma_wait<1>();
      reg_fence(s);
      mbar_arrive(k_empty(ks));                                  // K read
      if (tile + 1 == it.num_tiles) mbar_arrive(q_empty(qb));  // Q no longer read in this item

      // Masks and online softmax: s[8 * mk + e] is element e of 16-key block mk in the
      // mma.sync kernel's numbering (rows g / g + 8, keys mk * 16 + (e / 4) * 8 + 2 t + (e & 1)).
      const bool elementwise = elementwise_always || key0 + KVT > full_hi;
      const bool plain = !elementwise && Variant::plain_logits(p);
      RowInfo ri[1][2];
      if (!plain) row_infos(ri);
      uint32_t vis[2] = {~0u, ~0u};
      if (elementwise) {
        // Causal or no mask without a window (every partial and diagonal tile of the usual
        // shapes, a fifth of the tiles at ~4.5 per item): one limit per row, compared unrolled.
        // It stands for DefaultVariant::visible(), which every variant without its own mask
        // keeps (a variant that replaces visible() sets kElementwiseMask, and so
        // elementwise_always: the generated ones do).
        const bool by_limit = !elementwise_always;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t bits = 0;
          if (by_limit) {
            int lim = it.kv_hi - 1;  // last visible key
            if (p.a.mask_mode == kMaskCausal) lim = min(lim, ri[0][h].qpos);
            lim -= key0 + 2 * t;
#pragma unroll
            for (int b = 0; b < 4 * MKV; ++b) bits |= uint32_t(((b / 4) * 16 + ((b / 2) % 2) * 8 + (b & 1)) <= lim) << b;
          } else {
#pragma unroll 1
            for (int b = 0; b < 4 * MKV; ++b) {
              const int key = key0 + (b / 4) * 16 + ((b / 2) % 2) * 8 + 2 * t + (b & 1);
              const bool ok = key < it.kv_hi && Variant::visible(p, mask, info, ri[0][h], key);
              bits |= uint32_t(ok) << b;
            }
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
            float x = Variant::logit(p, s[mk * 8 + e], info, ri[0][h], key);
            if (elementwise && !((vis[h] >> (mk * 4 + (e / 4) * 2 + (e & 1))) & 1u)) x = Variant::kUseSoftmax ? -INFINITY : 0.0f;
            s[mk * 8 + e] = x;
          }
      }
      // Without softmax the transformed logits are the weights: no maxima, no rescaling.
      float rescale[2] = {1.0f, 1.0f};
      bool grew = false;
      if constexpr (Variant::kUseSoftmax) {
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
            s[i] = ex2_ftz(s[i] - m_use);
            dsum[h] += s[i];
          }
        }
      }
      // The previous tile's P V has finished: its V buffer is free, O may be rescaled (or, after
      // the pending item's last P V, written out and cleared for this item).
      if constexpr (MODE != 0) {
        wgmma_wait<0>();
        reg_fence(o);
        mbar_arrive(v_empty(pvs));
      }
      if constexpr (MODE == 1) {
        if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
          for (int n = 0; n < NVO; ++n) {
            o[4 * n + 0] *= rescale[0];
            o[4 * n + 1] *= rescale[0];
            o[4 * n + 2] *= rescale[1];
            o[4 * n + 3] *= rescale[1];
          }
        }
      }
#pragma unroll
      for (int mk = 0; mk < MKV; ++mk) {
        pa[mk][0] = pack2<DT>(s[mk * 8 + 0], s[mk * 8 + 1]);
        pa[mk][1] = pack2<DT>(s[mk * 8 + 2], s[mk * 8 + 3]);
        pa[mk][2] = pack2<DT>(s[mk * 8 + 4], s[mk * 8 + 5]);
        pa[mk][3] = pack2<DT>(s[mk * 8 + 6], s[mk * 8 + 7]);
      }
      if constexpr (MODE == 2) {
        finish(pd, pm, pdsum);
        pending = false;
        zero_o();
      }
      ++k;
    };
    if (pending) {
      process_tile(std::integral_constant<int, 2>{}, 0);
    } else {
      zero_o();
      process_tile(std::integral_constant<int, 0>{}, 0);
    }
#pragma unroll 1
    for (int tile = 1; tile < it.num_tiles; ++tile) process_tile(std::integral_constant<int, 1>{}, tile);
    // Its last P V and epilogue wait for the next item's first Q K^T (or the end).
    pending = true;
    pd = sm90_done(plan, it);
    pm[0] = m[0], pm[1] = m[1], pdsum[0] = dsum[0], pdsum[1] = dsum[1];
  }
  flush_pending();
  if (cwg == 0) named_sync(1);  // consumes consumer 1's first arrive (each barrier instance completes)
#endif
}
