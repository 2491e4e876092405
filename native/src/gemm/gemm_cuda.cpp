// CUDA backend of GEMM: cuBLASLt, loaded at run time with dlopen (cublaslt_abi.h declares the
// part used), so the library builds and loads where cuBLAS is absent and a GEMM on a GPU then
// fails with a FlashInferError saying what to install.
//
// cuBLASLt is column-major. A row-major out [m, n] is the column-major out^T [n, m], so
// out = op(a) op(b) runs as out^T = op(b)^T op(a)^T; a column-major out runs as written. Each
// operand needs a unit stride along its rows or its columns (it is then the stored matrix, or
// its transpose: TRANSA / TRANSB), and a batch is one strided-batch call. Per shape the
// descriptors and the heuristic's first algorithm are built once and kept.
#ifdef FI_WITH_CUDA
#include <dlfcn.h>
#include <glob.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "../common/dtype.h"
#include "../common/runtime.h"
#include "cublaslt_abi.h"
#include "gemm.h"

namespace fi {
namespace {

namespace lt = cublaslt;

struct Api {
  std::string path;
  lt::CreateFn create;
  lt::MatmulDescCreateFn desc_create;
  lt::MatmulDescDestroyFn desc_destroy;
  lt::MatmulDescSetAttributeFn desc_set;
  lt::MatrixLayoutCreateFn layout_create;
  lt::MatrixLayoutDestroyFn layout_destroy;
  lt::MatrixLayoutSetAttributeFn layout_set;
  lt::MatmulPreferenceCreateFn pref_create;
  lt::MatmulPreferenceDestroyFn pref_destroy;
  lt::MatmulPreferenceSetAttributeFn pref_set;
  lt::MatmulAlgoGetHeuristicFn heuristic;
  lt::MatmulFn matmul;
};

// Where cuBLASLt may live: $FLASHINFER_CUBLASLT alone when set; else the loader's own search
// (LD_LIBRARY_PATH, ld.so.cache), the CUDA toolkit, and pip's nvidia-cublas wheels.
std::vector<std::string> candidates() {
  if (const char* forced = std::getenv("FLASHINFER_CUBLASLT"); forced && *forced) return {forced};
  std::vector<std::string> c = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
  std::vector<std::string> patterns;
  for (const char* var : {"CUDA_HOME", "CUDA_PATH"})
    if (const char* home = std::getenv(var); home && *home) patterns.push_back(std::string(home) + "/lib64/libcublasLt.so.1[0-9]");
  patterns.push_back("/usr/local/cuda/lib64/libcublasLt.so.1[0-9]");
  patterns.push_back("/usr/local/cuda/targets/*/lib/libcublasLt.so.1[0-9]");
  std::vector<std::string> pythons = {"/usr/local/lib/python3*/*-packages", "/usr/lib/python3*/*-packages", "/opt/conda/lib/python3*/site-packages"};
  if (const char* venv = std::getenv("VIRTUAL_ENV"); venv && *venv) pythons.push_back(std::string(venv) + "/lib/python3*/site-packages");
  if (const char* home = std::getenv("HOME"); home && *home) pythons.push_back(std::string(home) + "/.local/lib/python3*/site-packages");
  for (const std::string& p : pythons)
    for (const char* sub : {"/nvidia/cu13/lib/libcublasLt.so.1[0-9]", "/nvidia/cublas/lib/libcublasLt.so.1[0-9]"}) patterns.push_back(p + sub);
  for (const std::string& pattern : patterns) {
    glob_t g{};
    if (glob(pattern.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = g.gl_pathc; i-- > 0;) c.push_back(g.gl_pathv[i]);  // newest version first
    globfree(&g);
  }
  return c;
}

template <class Fn>
bool bind(void* so, const char* name, Fn& fn) {
  fn = reinterpret_cast<Fn>(dlsym(so, name));
  return fn != nullptr;
}

// The loaded API, or the reason there is none (kept: one search per process).
struct Loaded {
  Api api{};
  std::string error;
};

Loaded load() {
  Loaded l;
  std::string tried;
  for (const std::string& path : candidates()) {
    void* so = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!so) {
      const char* why = dlerror();
      tried += "\n  " + path + (why && std::strstr(why, "No such file") == nullptr ? std::string(": ") + why : std::string());
      continue;
    }
    Api& a = l.api;
    const bool ok = bind(so, "cublasLtCreate", a.create) && bind(so, "cublasLtMatmulDescCreate", a.desc_create) &&
                    bind(so, "cublasLtMatmulDescDestroy", a.desc_destroy) && bind(so, "cublasLtMatmulDescSetAttribute", a.desc_set) &&
                    bind(so, "cublasLtMatrixLayoutCreate", a.layout_create) && bind(so, "cublasLtMatrixLayoutDestroy", a.layout_destroy) &&
                    bind(so, "cublasLtMatrixLayoutSetAttribute", a.layout_set) &&
                    bind(so, "cublasLtMatmulPreferenceCreate", a.pref_create) &&
                    bind(so, "cublasLtMatmulPreferenceDestroy", a.pref_destroy) &&
                    bind(so, "cublasLtMatmulPreferenceSetAttribute", a.pref_set) &&
                    bind(so, "cublasLtMatmulAlgoGetHeuristic", a.heuristic) && bind(so, "cublasLtMatmul", a.matmul);
    if (!ok) {
      tried += "\n  " + path + ": not a cuBLASLt library (missing entry points)";
      dlclose(so);
      a = Api{};
      continue;
    }
    a.path = path;
    return l;
  }
  l.error = "GEMM on CUDA needs cuBLASLt (libcublasLt.so.13 or .12), loaded at run time, and found none: install the CUDA toolkit's "
            "cuBLAS or `pip install nvidia-cublas`, or set $FLASHINFER_CUBLASLT to the library's path. Tried:" + tried;
  return l;
}

const Api& api() {
  static const Loaded loaded = load();
  if (!loaded.error.empty()) fail(FI_ERR_UNSUPPORTED, "a: ", loaded.error);
  return loaded.api;
}

void lt_check(lt::Status s, const char* what) {
  if (s != lt::kSuccess)
    fail(s == lt::kNotSupported ? FI_ERR_UNSUPPORTED : FI_ERR_CUDA, what, " failed (cublasStatus_t ", s, ")");
}

cudaDataType_t cuda_type(int32_t dtype) {
  switch (dtype) {
    case FI_FLOAT16: return CUDA_R_16F;
    case FI_BFLOAT16: return CUDA_R_16BF;
    case FI_FLOAT32: return CUDA_R_32F;
    case FI_FLOAT8_E4M3FN: return CUDA_R_8F_E4M3;
    case FI_FLOAT8_E5M2: return CUDA_R_8F_E5M2;
    default: fail(FI_ERR_UNSUPPORTED, "gemm: no cuBLASLt type for ", dtype_name(dtype));
  }
}

// One operand of the column-major call: a rows x cols matrix P (strides rs, cs) as cuBLASLt sees
// it, the stored matrix (op N: P column-major, unit row stride) or its transpose (op T: P^T
// column-major, unit column stride). ok is false when P has no unit stride.
struct Operand {
  bool ok;
  int32_t op;
  uint64_t rows, cols;  // of the stored column-major matrix
  int64_t ld;
};

Operand operand(int64_t rows, int64_t cols, int64_t rs, int64_t cs, bool allow_transpose) {
  if (rs == 1 || rows == 1) {
    const int64_t ld = cols == 1 ? std::max<int64_t>(rows, 1) : cs;
    if (ld >= std::max<int64_t>(rows, 1)) return {true, lt::kOpN, uint64_t(rows), uint64_t(cols), ld};
  }
  if (allow_transpose && (cs == 1 || cols == 1)) {
    const int64_t ld = rows == 1 ? std::max<int64_t>(cols, 1) : rs;
    if (ld >= std::max<int64_t>(cols, 1)) return {true, lt::kOpT, uint64_t(cols), uint64_t(rows), ld};
  }
  return {false, 0, 0, 0, 0};
}

// A prepared call: descriptors and algorithm for one shape, kept for later calls.
struct Prepared {
  lt::MatmulDesc desc;
  lt::MatrixLayout x, y, d;
  lt::MatmulAlgo algo;
  size_t workspace;
};

// What a prepared call depends on: device, the three layouts (op, rows, cols, ld, batch stride),
// batch count and the dtypes.
using Key = std::array<int64_t, 19>;

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// Per device: the cuBLASLt handle and a workspace, made on first use (not while a stream is being
// captured into a CUDA graph: a GEMM captured before any other on its device runs without one).
struct DeviceState {
  lt::Handle handle = nullptr;
  void* workspace = nullptr;
};

}  // namespace

void gemm_cuda(const GemmArgs& g, int32_t device, void* stream) {
  const Api& a = api();
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  static std::mutex mutex;
  static std::map<int32_t, DeviceState> devices;
  static std::map<Key, Prepared> prepared;

  // The formulation: out^T = op(b)^T op(a)^T for a row-major out, else out = op(a) op(b).
  Operand d = operand(g.n, g.m, g.out.col, g.out.row, false);
  Operand x, y;
  const bool transposed = d.ok;
  GemmMatrix mx = g.b, my = g.a;
  int32_t tx = g.b_dtype, ty = g.dtype;
  if (transposed) {
    x = operand(g.n, g.k, g.b.col, g.b.row, true);
    y = operand(g.k, g.m, g.a.col, g.a.row, true);
  } else {
    d = operand(g.m, g.n, g.out.row, g.out.col, false);
    require(d.ok, "out: a GEMM on CUDA needs a unit stride along out's rows or columns (strides ", g.out.row, ", ", g.out.col, ")");
    x = operand(g.m, g.k, g.a.row, g.a.col, true);
    y = operand(g.k, g.n, g.b.row, g.b.col, true);
    mx = g.a, my = g.b, tx = g.dtype, ty = g.b_dtype;
  }
  const char* x_name = transposed ? "b" : "a";
  const char* y_name = transposed ? "a" : "b";
  if (!x.ok) fail(FI_ERR_UNSUPPORTED, x_name, ": a GEMM on CUDA needs a unit stride along each operand's rows or columns");
  if (!y.ok) fail(FI_ERR_UNSUPPORTED, y_name, ": a GEMM on CUDA needs a unit stride along each operand's rows or columns");

  const Key key{device, x.op,     int64_t(x.rows), int64_t(x.cols), x.ld, mx.batch,    y.op,    int64_t(y.rows), int64_t(y.cols),
                y.ld,   my.batch, int64_t(d.rows), int64_t(d.cols), d.ld, g.out.batch, g.batch, tx,              ty,
                g.out_dtype};
  std::lock_guard<std::mutex> lock(mutex);
  DeviceState& dev = devices[device];
  if (!dev.handle) lt_check(a.create(&dev.handle), "cublasLtCreate");
  if (!dev.workspace) {
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    cuda_check(cudaStreamIsCapturing(s, &capturing), "cudaStreamIsCapturing");
    if (capturing == cudaStreamCaptureStatusNone) cuda_check(cudaMalloc(&dev.workspace, kWorkspaceBytes), "cudaMalloc(cuBLASLt workspace)");
  }
  auto it = prepared.find(key);
  if (it == prepared.end()) {
    Prepared p{};
    lt_check(a.desc_create(&p.desc, lt::kCompute32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    lt_check(a.desc_set(p.desc, lt::kDescTransA, &x.op, sizeof x.op), "cublasLtMatmulDescSetAttribute(TRANSA)");
    lt_check(a.desc_set(p.desc, lt::kDescTransB, &y.op, sizeof y.op), "cublasLtMatmulDescSetAttribute(TRANSB)");
    auto layout = [&](lt::MatrixLayout& l, int32_t dtype, const Operand& o, int64_t batch_stride) {
      lt_check(a.layout_create(&l, cuda_type(dtype), o.rows, o.cols, o.ld), "cublasLtMatrixLayoutCreate");
      if (g.batch > 1) {
        const int32_t count = int32_t(g.batch);
        lt_check(a.layout_set(l, lt::kLayoutBatchCount, &count, sizeof count), "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)");
        lt_check(a.layout_set(l, lt::kLayoutStridedBatchOffset, &batch_stride, sizeof batch_stride),
                 "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)");
      }
    };
    layout(p.x, tx, x, mx.batch);
    layout(p.y, ty, y, my.batch);
    layout(p.d, g.out_dtype, d, g.out.batch);
    lt::MatmulPreference pref = nullptr;
    lt_check(a.pref_create(&pref), "cublasLtMatmulPreferenceCreate");
    const uint64_t max_ws = kWorkspaceBytes;
    lt_check(a.pref_set(pref, lt::kPrefMaxWorkspaceBytes, &max_ws, sizeof max_ws), "cublasLtMatmulPreferenceSetAttribute");
    lt::HeuristicResult result{};
    int found = 0;
    const lt::Status st = a.heuristic(dev.handle, p.desc, p.x, p.y, p.d, p.d, pref, 1, &result, &found);
    a.pref_destroy(pref);
    if (st != lt::kSuccess || found == 0) {
      a.desc_destroy(p.desc);
      a.layout_destroy(p.x);
      a.layout_destroy(p.y);
      a.layout_destroy(p.d);
      fail(FI_ERR_UNSUPPORTED, "a, b, out: cuBLASLt (", a.path, ") has no algorithm for ", g.batch, " x [", g.m, ", ", g.k, "] x [", g.k,
           ", ", g.n, "] with a ", dtype_name(g.dtype), ", b ", dtype_name(g.b_dtype), ", out ", dtype_name(g.out_dtype),
           " (cublasStatus_t ", st, "); float8 needs 16-byte aligned leading dimensions, and e5m2 x e5m2 is not offered");
    }
    p.algo = result.algo;
    p.workspace = result.workspace_size;
    if (prepared.size() >= 4096) prepared.clear();  // shapes of one server are few; a sweep should not grow this forever
    it = prepared.emplace(key, p).first;
  }
  const Prepared& p = it->second;
  const float alpha = float(g.alpha), beta = float(g.beta);
  void* ws = p.workspace > 0 ? dev.workspace : nullptr;
  require(p.workspace == 0 || ws != nullptr, "gemm: the first GEMM on a device must not be captured into a CUDA graph (its workspace is "
                                             "allocated then)");
  lt_check(a.matmul(dev.handle, p.desc, &alpha, mx.data, p.x, my.data, p.y, &beta, g.out.data, p.d, g.out.data, p.d, &p.algo, ws,
                    ws ? kWorkspaceBytes : 0, s),
           "cublasLtMatmul");
}

}  // namespace fi
#endif  // FI_WITH_CUDA
