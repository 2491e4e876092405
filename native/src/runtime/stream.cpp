// Streams, events and CUDA graphs. Without a GPU every entry reports FI_ERR_NO_DEVICE.
#include "../common/runtime.h"

using namespace fi;

namespace {

#ifdef FI_WITH_CUDA
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t as_event(void* e) {
  require(e != nullptr, "event: null handle");
  return static_cast<cudaEvent_t>(e);
}
#endif

void require_cuda(const char* what) {
  if (cuda_device_count() == 0) fail(FI_ERR_NO_DEVICE, what, ": needs a CUDA device, and none is available");
}

}  // namespace

extern "C" {

FI_API int32_t fi_stream_create(int32_t device, int32_t non_blocking, void** out) {
  return guard([&] {
    require(out != nullptr, "out: null pointer");
    require_cuda("fi_stream_create");
    require(device != FI_DEVICE_CPU, "device: streams exist on CUDA devices only");
    require_valid_device(device, "device");
#ifdef FI_WITH_CUDA
    set_device(device);
    cudaStream_t s;
    cuda_check(cudaStreamCreateWithFlags(&s, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault),
               "cudaStreamCreate");
    *out = s;
#endif
  });
}

FI_API int32_t fi_stream_destroy(void* stream) {
  return guard([&] {
    if (stream == nullptr) return;
    require_cuda("fi_stream_destroy");
#ifdef FI_WITH_CUDA
    cuda_check(cudaStreamDestroy(as_stream(stream)), "cudaStreamDestroy");
#endif
  });
}

FI_API int32_t fi_stream_synchronize(void* stream) {
  return guard([&] {
    if (cuda_device_count() == 0 && stream == nullptr) return;  // CPU work is synchronous
    require_cuda("fi_stream_synchronize");
#ifdef FI_WITH_CUDA
    cuda_check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
#endif
  });
}

FI_API int32_t fi_stream_query(void* stream, int32_t* done) {
  return guard([&] {
    require(done != nullptr, "done: null pointer");
    *done = 1;
    if (cuda_device_count() == 0 && stream == nullptr) return;
    require_cuda("fi_stream_query");
#ifdef FI_WITH_CUDA
    const cudaError_t err = cudaStreamQuery(as_stream(stream));
    if (err == cudaErrorNotReady) {
      cudaGetLastError();
      *done = 0;
      return;
    }
    cuda_check(err, "cudaStreamQuery");
#endif
  });
}

FI_API int32_t fi_stream_wait_event(void* stream, void* event) {
  return guard([&] {
    require_cuda("fi_stream_wait_event");
#ifdef FI_WITH_CUDA
    cuda_check(cudaStreamWaitEvent(as_stream(stream), as_event(event), 0), "cudaStreamWaitEvent");
#endif
  });
}

FI_API int32_t fi_event_create(int32_t device, int32_t enable_timing, void** out) {
  return guard([&] {
    require(out != nullptr, "out: null pointer");
    require_cuda("fi_event_create");
    require(device != FI_DEVICE_CPU, "device: events exist on CUDA devices only");
    require_valid_device(device, "device");
#ifdef FI_WITH_CUDA
    set_device(device);
    cudaEvent_t e;
    cuda_check(cudaEventCreateWithFlags(&e, enable_timing ? cudaEventDefault : cudaEventDisableTiming),
               "cudaEventCreate");
    *out = e;
#endif
  });
}

FI_API int32_t fi_event_destroy(void* event) {
  return guard([&] {
    if (event == nullptr) return;
    require_cuda("fi_event_destroy");
#ifdef FI_WITH_CUDA
    cuda_check(cudaEventDestroy(as_event(event)), "cudaEventDestroy");
#endif
  });
}

FI_API int32_t fi_event_record(void* event, void* stream) {
  return guard([&] {
    require_cuda("fi_event_record");
#ifdef FI_WITH_CUDA
    cuda_check(cudaEventRecord(as_event(event), as_stream(stream)), "cudaEventRecord");
#endif
  });
}

FI_API int32_t fi_event_query(void* event, int32_t* done) {
  return guard([&] {
    require(done != nullptr, "done: null pointer");
    require_cuda("fi_event_query");
#ifdef FI_WITH_CUDA
    const cudaError_t err = cudaEventQuery(as_event(event));
    *done = 1;
    if (err == cudaErrorNotReady) {
      cudaGetLastError();
      *done = 0;
      return;
    }
    cuda_check(err, "cudaEventQuery");
#endif
  });
}

FI_API int32_t fi_event_synchronize(void* event) {
  return guard([&] {
    require_cuda("fi_event_synchronize");
#ifdef FI_WITH_CUDA
    cuda_check(cudaEventSynchronize(as_event(event)), "cudaEventSynchronize");
#endif
  });
}

FI_API int32_t fi_event_elapsed_ms(void* start, void* end, float* ms) {
  return guard([&] {
    require(ms != nullptr, "ms: null pointer");
    require_cuda("fi_event_elapsed_ms");
#ifdef FI_WITH_CUDA
    cuda_check(cudaEventElapsedTime(ms, as_event(start), as_event(end)), "cudaEventElapsedTime");
#endif
  });
}

FI_API int32_t fi_graph_begin_capture(void* stream) {
  return guard([&] {
    require_cuda("fi_graph_begin_capture");
    require(stream != nullptr, "stream: capture needs a created stream, not the default stream");
#ifdef FI_WITH_CUDA
    cuda_check(cudaStreamBeginCapture(as_stream(stream), cudaStreamCaptureModeThreadLocal),
               "cudaStreamBeginCapture");
#endif
  });
}

FI_API int32_t fi_graph_end_capture(void* stream, void** graph_exec) {
  return guard([&] {
    require(graph_exec != nullptr, "graph_exec: null pointer");
    require_cuda("fi_graph_end_capture");
#ifdef FI_WITH_CUDA
    cudaGraph_t graph = nullptr;
    cuda_check(cudaStreamEndCapture(as_stream(stream), &graph), "cudaStreamEndCapture");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    cuda_check(err, "cudaGraphInstantiate");
    *graph_exec = exec;
#endif
  });
}

FI_API int32_t fi_graph_launch(void* graph_exec, void* stream) {
  return guard([&] {
    require(graph_exec != nullptr, "graph: null handle");
    require_cuda("fi_graph_launch");
#ifdef FI_WITH_CUDA
    cuda_check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph_exec), as_stream(stream)), "cudaGraphLaunch");
#endif
  });
}

FI_API int32_t fi_graph_destroy(void* graph_exec) {
  return guard([&] {
    if (graph_exec == nullptr) return;
    require_cuda("fi_graph_destroy");
#ifdef FI_WITH_CUDA
    cuda_check(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph_exec)), "cudaGraphExecDestroy");
#endif
  });
}

}  // extern "C"
