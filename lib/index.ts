// flashinfer-bun's public API. Nothing outside this file's exports is public.
export { FlashInferError, type ErrorCode } from "./errors.ts";
export { type DType, DTYPES } from "./dtype.ts";
export {
  type Device,
  type DeviceProperties,
  cudaAvailable,
  deviceCount,
  defaultDevice,
  deviceProperties,
  memoryInfo,
  synchronize,
} from "./device.ts";
export { Stream, Event, CudaGraph, currentStream, withStream } from "./stream.ts";
export {
  Tensor,
  type TensorOptions,
  type ToOptions,
  type RandomOptions,
  empty,
  zeros,
  ones,
  full,
  tensor,
  randn,
  normal,
  gatherRows,
  rand,
  manualSeed,
  scope,
  keep,
} from "./tensor.ts";
export { type MergedState, mergeState, mergeStateInPlace, mergeStates, MultiLevelCascadeAttentionWrapper, type CascadePlanParams } from "./cascade.ts";
export { BatchMLAPagedAttentionWrapper, type MLAPlanParams } from "./mla.ts";
export { PODWithPagedKVCacheWrapper, type PODPlanParams, type PODRunOptions } from "./pod.ts";
export { BlockSparseAttentionWrapper, type BlockSparsePlanParams, VariableBlockSparseAttentionWrapper, type VariableBlockSparsePlanParams } from "./sparse.ts";
export { version, hasCudaBackend, libraryPath } from "./library.ts";
export { benchDeviceTime, type BenchOptions, type BenchResult } from "./testing.ts";
export { singleDecodeWithKVCache, BatchDecodeWithPagedKVCacheWrapper, type PosEncodingMode, type KVLayout, type DecodeOptions, type DecodeRunOptions, type DecodePlanParams, type SingleDecodeOptions, type BatchDecodeWrapperOptions } from "./decode.ts";
export type { AttentionVariantOptions } from "./attention.ts";
export { rmsnorm, fusedAddRmsnorm, gemmaRmsnorm, gemmaFusedAddRmsnorm, layernorm, type RMSNormOptions, type FusedAddRMSNormOptions, type LayerNormOptions } from "./norm.ts";
export { gemm, bmm, bmmFp8, SegmentGEMMWrapper, type GemmOptions } from "./gemm.ts";
export { getSeqLens, getBatchIndicesPositions, appendPagedKvCache, type IndexArray } from "./page.ts";
export { type ActivationOptions, siluAndMul, geluAndMul, geluTanhAndMul } from "./activation.ts";
export { type BitOrder, type SegmentPackbitsResult, packbits, segmentPackbits } from "./quantization.ts";
export { type RopeIndexArray, type RopeOptions, type Llama31RopeOptions, type CosSinCacheOptions, applyRope, applyRopeInplace, applyRopePosIds, applyRopePosIdsInplace, applyLlama31Rope, applyLlama31RopeInplace, applyLlama31RopePosIds, applyLlama31RopePosIdsInplace, applyRopeWithCosSinCache } from "./rope.ts";
export { singlePrefillWithKVCache, BatchPrefillWithRaggedKVCacheWrapper, BatchPrefillWithPagedKVCacheWrapper, type PrefillMask, type PrefillOptions, type SplitOptions, type PrefillRunOptions, type RaggedPrefillPlanParams, type PagedPrefillPlanParams, type SinglePrefillOptions, type BatchPrefillWrapperOptions, type BatchPagedPrefillWrapperOptions, type PrefillBackend, type AttentionKernel, type AttentionPlanInfo } from "./prefill.ts";
export { type PerRequest, type PerRequestKey, type SamplingOptions, type TopKTopPOptions, type SoftmaxOptions, type ChainSpeculativeResult, softmax, samplingFromLogits, samplingFromProbs, topPSamplingFromProbs, topKSamplingFromProbs, minPSamplingFromProbs, topKTopPSamplingFromLogits, topKTopPSamplingFromProbs, topPRenormProbs, topKRenormProbs, topKMaskLogits, chainSpeculativeSampling, samplingManualSeed } from "./sampling.ts";
// The kernel generator: fi.jit.attentionVariant, fi.jit.precompile (build or load ahead of the
// first plan), fi.jit.cacheDir.
import { type AttentionVariant as Variant, type VariantTarget, attentionVariant, cacheDir, precompile } from "./jit.ts";
export const jit = { attentionVariant, cacheDir, precompile: (variant: Variant, target?: VariantTarget): void => void precompile(variant, target) };
export type { AttentionVariant, AttentionVariantSpec, VariantParamType, VariantTarget } from "./jit.ts";
