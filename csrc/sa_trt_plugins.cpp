/* TensorRT plugins (IPluginV3) that run the AOT-compiled Triton kernels of libsa_kernels
 * (sa_kernels.h), so engines built from our ONNX export need neither Python nor a JIT.
 *
 * Interfaces followed (TensorRT 10.x/11.x public headers):
 *   NvInferPluginBase.h  IPluginV3, IPluginCapability, PluginFieldCollection
 *   NvInferRuntime.h     IPluginV3OneCore/Build/Runtime, IPluginCreatorV3One
 * Library entry points: TensorRT samples/trtexec/README.md "Using your own Plugin" and the
 * developer guide's "Plugin Shared Libraries" (getCreators, setLoggerFinder), as loaded by
 * IPluginRegistry::loadLibrary and trtexec --dynamicPlugins.
 * ONNX: the parser imports an unknown op as the plugin named by its op type, plugin_version
 * and plugin_namespace, and passes only the attributes the creator lists in getFieldNames()
 * (onnx-tensorrt FallbackPluginImporter/loadFields); listing none drops our "aot" attribute.
 *
 * Inputs are linear (contiguous), so the element strides the kernels take follow from the dims. */
#include <NvInferRuntime.h>

#include <cstdint>
#include <iterator>
#include <new>

#include "sa_kernels.h"

namespace {

using namespace nvinfer1;

constexpr char const* kNamespace = "stable_audio_rt";
constexpr char const* kVersion = "1";
constexpr int32_t kMaxInputs = 5;

// No plugin has attributes: nothing to take from the ONNX node or to serialize with the engine.
PluginFieldCollection const kNoFields{};

CUdeviceptr ptr(void const* p) { return reinterpret_cast<CUdeviceptr>(p); }

bool sameDims(Dims const& a, Dims const& b) {
  if (a.nbDims != b.nbDims) return false;
  for (int32_t i = 0; i < a.nbDims; ++i)
    if (a.d[i] != b.d[i]) return false;
  return true;
}

// The kernels take sizes and strides as int32; a tensor's element count bounds them all.
bool fitsInt32(Dims const& d) {
  int64_t n = 1;
  for (int32_t i = 0; i < d.nbDims; ++i)
    if (d.d[i] > INT32_MAX || (n *= d.d[i]) > INT32_MAX) return false;
  return true;
}

bool attention(Dims const& d) { return d.nbDims == 4 && d.d[3] == sa_kernels_head_dim(); }

// (batch, head, token) element strides of a contiguous (B, H, T, Dh) tensor.
void strides(Dims const& d, int32_t s[3]) {
  s[2] = static_cast<int32_t>(d.d[3]);
  s[1] = static_cast<int32_t>(d.d[2]) * s[2];
  s[0] = static_cast<int32_t>(d.d[1]) * s[1];
}

bool isActivation(DataType t) {
  return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

// Only called with types supportsFormatCombination accepted, all activation types.
sa_dtype_t saDtype(DataType t) {
  return t == DataType::kHALF ? SA_DTYPE_FP16 : t == DataType::kBF16 ? SA_DTYPE_BF16 : SA_DTYPE_FP32;
}

/* What distinguishes the three plugins. `fits` checks input dims: with exact == false they are
 * an optimization profile's min or max (configurePlugin), so only ranks and the dims that must
 * be fixed are checked; with exact == true they are the shapes of the coming enqueues. */
struct Kernel {
  char const* name;
  int32_t nbInputs;
  uint32_t tables;  // bit i set: input i is an fp32 table, not an activation
  bool (*fits)(Dims const* in, bool exact);
  CUresult (*launch)(CUstream stream, sa_dtype_t dtype, PluginTensorDesc const* in,
                     void const* const* inputs, void* out);
};

// q, k, v (B, H, T, Dh); cos, sin (T, rope_half).
bool ropeFits(Dims const* in, bool exact) {
  for (int32_t i = 0; i < 3; ++i)
    if (!attention(in[i])) return false;
  for (int32_t i = 3; i < 5; ++i)
    if (in[i].nbDims != 2 || in[i].d[1] != sa_kernels_rope_half()) return false;
  return !exact || (sameDims(in[1], in[0]) && sameDims(in[2], in[0]) && sameDims(in[4], in[3]) &&
                    in[3].d[0] == in[0].d[2] && fitsInt32(in[0]));
}

CUresult ropeLaunch(CUstream stream, sa_dtype_t dtype, PluginTensorDesc const* in,
                    void const* const* inputs, void* out) {
  Dims const& q = in[0].dims;
  sa_attention_strides s;
  strides(q, s.q);
  strides(q, s.k);
  strides(q, s.v);
  strides(q, s.out);
  return sa_rope_self_attention(stream, dtype, ptr(inputs[0]), ptr(inputs[1]), ptr(inputs[2]),
                                ptr(inputs[3]), ptr(inputs[4]), static_cast<int32_t>(q.d[0]),
                                static_cast<int32_t>(q.d[1]), static_cast<int32_t>(q.d[2]), &s,
                                ptr(out));
}

// q (B, H, T, Dh); k, v (B, Hkv, S, Dh) with Hkv dividing H.
bool crossFits(Dims const* in, bool exact) {
  for (int32_t i = 0; i < 3; ++i)
    if (!attention(in[i])) return false;
  return !exact || (sameDims(in[2], in[1]) && in[1].d[0] == in[0].d[0] && in[1].d[1] > 0 &&
                    in[0].d[1] % in[1].d[1] == 0 && fitsInt32(in[0]) && fitsInt32(in[1]));
}

CUresult crossLaunch(CUstream stream, sa_dtype_t dtype, PluginTensorDesc const* in,
                     void const* const* inputs, void* out) {
  Dims const& q = in[0].dims;
  Dims const& kv = in[1].dims;
  sa_attention_strides s;
  strides(q, s.q);
  strides(kv, s.k);
  strides(kv, s.v);
  strides(q, s.out);
  return sa_gqa_cross_attention(stream, dtype, ptr(inputs[0]), ptr(inputs[1]), ptr(inputs[2]),
                                static_cast<int32_t>(q.d[0]), static_cast<int32_t>(q.d[1]),
                                static_cast<int32_t>(kv.d[1]), static_cast<int32_t>(q.d[2]),
                                static_cast<int32_t>(kv.d[2]), &s, ptr(out));
}

// x (B, C, T); alpha, inv_beta (C,).
bool snakeFits(Dims const* in, bool exact) {
  if (in[0].nbDims != 3 || in[1].nbDims != 1 || in[2].nbDims != 1) return false;
  return !exact || (in[1].d[0] == in[0].d[1] && in[2].d[0] == in[0].d[1] && fitsInt32(in[0]));
}

CUresult snakeLaunch(CUstream stream, sa_dtype_t dtype, PluginTensorDesc const* in,
                     void const* const* inputs, void* out) {
  Dims const& x = in[0].dims;
  return sa_snake(stream, dtype, ptr(inputs[0]), ptr(inputs[1]), ptr(inputs[2]),
                  static_cast<int32_t>(x.d[0]), static_cast<int32_t>(x.d[1]),
                  static_cast<int32_t>(x.d[2]), ptr(out));
}

Kernel const kRope{"rope_self_attention", 5, 0b11000, ropeFits, ropeLaunch};
Kernel const kCross{"gqa_cross_attention", 3, 0, crossFits, crossLaunch};
Kernel const kSnake{"snake", 3, 0b110, snakeFits, snakeLaunch};

class Plugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  explicit Plugin(Kernel const& kernel) : mKernel(kernel) {}

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override { return new (std::nothrow) Plugin(*this); }

  // IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return mKernel.name; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbOutputs != 1 || nbInputs != mKernel.nbInputs) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                          DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbOutputs != 1 || nbInputs != mKernel.nbInputs) return -1;
    outputs[0] = inputs[0];
    return 0;
  }

  // Linear only; the activations (input 0 is always one) and the output share one of
  // FP32/FP16/BF16, and the tables are FP32.
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != mKernel.nbInputs || nbOutputs != 1) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos < nbInputs && ((mKernel.tables >> pos) & 1u)) return desc.type == DataType::kFLOAT;
    return pos == 0 ? isActivation(desc.type) : desc.type == inOut[0].desc.type;
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != mKernel.nbInputs || nbOutputs != 1) return -1;
    Dims min[kMaxInputs], max[kMaxInputs];
    for (int32_t i = 0; i < nbInputs; ++i) {
      min[i] = in[i].min;
      max[i] = in[i].max;
    }
    return mKernel.fits(min, false) && mKernel.fits(max, false) ? 0 : -1;
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                        int32_t nbOutputs) noexcept override {
    if (nbInputs != mKernel.nbInputs || nbOutputs != 1) return -1;
    Dims dims[kMaxInputs];
    for (int32_t i = 0; i < nbInputs; ++i) dims[i] = in[i].dims;
    return mKernel.fits(dims, true) ? 0 : -1;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    // cudaStream_t and CUstream are the same CUstream_st*, so the driver API takes it as is.
    CUresult status = mKernel.launch(static_cast<CUstream>(stream), saDtype(inputDesc[0].type), inputDesc,
                                     inputs, outputs[0]);
    return status == CUDA_SUCCESS ? 0 : -1;
  }

  // Contexts are created before they enqueue, possibly from several threads at once, and
  // sa_kernels.h asks for one load before concurrent launches; a failure here (no current CUDA
  // context, a bad cubin) fails context creation instead of the first enqueue.
  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override {
    return sa_kernels_load() == CUDA_SUCCESS ? clone() : nullptr;
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &kNoFields; }

 private:
  Kernel const& mKernel;
};

class Creator : public IPluginCreatorV3One {
 public:
  explicit Creator(Kernel const& kernel) : mKernel(kernel) {}

  // The fields (none listed, but any passed) are ignored: a plugin is fixed by its kernel.
  IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const*, TensorRTPhase) noexcept override {
    return new (std::nothrow) Plugin(mKernel);
  }
  PluginFieldCollection const* getFieldNames() noexcept override { return &kNoFields; }
  AsciiChar const* getPluginName() const noexcept override { return mKernel.name; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  Kernel const& mKernel;
};

}  // namespace

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static Creator rope(kRope), cross(kCross), snake(kSnake);
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&rope, &cross, &snake};
  nbCreators = static_cast<int32_t>(std::size(creators));
  return creators;
}

// The plugin library entry points include this one; the plugins report failures through their
// return codes only, so they need no logger.
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder*) {}
