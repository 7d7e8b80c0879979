// CausalLM's LoRA adapters as files (PEFT's adapter folder) and merged into the base weights.
#include <set>

#include "io/hf_folder.h"
#include "io/safetensors.h"
#include "model/causal_lm_impl.h"
#include "ops/ops.h"

namespace moeforge {

namespace {

constexpr const char* kAdapterConfigFile = "adapter_config.json";
constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";

const CausalLM::Impl& with_adapters(const CausalLM::Impl& m, const char* what) {
  MF_CHECK(m.lora.has_value(), kInvalidArgument, what, ": the model has no LoRA adapters (build it with a LoRA config)");
  return m;
}

// The expert-parallel group when parameter `param` is a routed expert's adapter split over it, else null.
ProcessGroup* experts_split_over(const CausalLM::Impl& m, int param) {
  const std::shared_ptr<ProcessGroup>& g = m.options.expert_group;
  return g && g->size() > 1 && m.params().entry(param).shard_class == ShardClass::kExpert ? g.get() : nullptr;
}

}  // namespace

Tensor CausalLM::adapter_file_tensor(const AdapterTensor& t, const Tensor& local) const {
  const Impl& m = with_adapters(*impl_, "adapter_file_tensor");
  ProcessGroup* experts = experts_split_over(m, t.param);
  if (experts == nullptr) return adapter_to_file(t, local);
  const int64_t all = m.params().entry(t.param).all_experts;
  std::vector<int64_t> rows;
  for (int r = 0; r < experts->size(); ++r)
    rows.push_back(split_begin(all, experts->size(), r + 1) - split_begin(all, experts->size(), r));
  return adapter_to_file(t, experts->all_gather_rows(local.to(Device::kCPU).contiguous(), rows));
}

const LoraConfig* CausalLM::lora_config() const { return impl_->lora ? &*impl_->lora : nullptr; }
const std::vector<AdapterTensor>& CausalLM::adapter_tensors() const { return impl_->adapters; }

void CausalLM::save_adapter(const std::filesystem::path& folder, DType dtype) const {
  const Impl& m = with_adapters(*impl_, "save_adapter");
  // Rank 0 writes the adapters, the routed experts' gathered from their expert group (adapters are
  // small beside the model: a rank holds them whole for a moment).
  ProcessGroup* group = m.group();
  std::vector<NamedTensor> tensors;
  for (const AdapterTensor& t : m.adapters)
    tensors.emplace_back(t.key, adapter_file_tensor(t, m.params().param(t.param)).to(dtype));
  if (!group || group->rank() == 0) {
    std::filesystem::create_directories(folder);
    write_safetensors(folder / kAdapterWeightsFile, tensors, {{"format", "pt"}});
    atomic_write_file(folder / kAdapterConfigFile, m.lora->to_json().dump(2) + "\n");
  }
  if (group) group->barrier();
}

void CausalLM::load_adapter(const std::filesystem::path& folder) {
  const Impl& m = with_adapters(*impl_, "load_adapter");
  const std::filesystem::path file = folder / kAdapterWeightsFile;
  MF_CHECK(std::filesystem::exists(file), kNotFound, folder.string(), ": no ", kAdapterWeightsFile,
           " (a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors)");
  const SafetensorsFile st = SafetensorsFile::open(file);
  std::set<std::string> expected;
  for (const AdapterTensor& t : m.adapters) {
    expected.insert(t.key);
    MF_CHECK(st.contains(t.key), kFormat, file.string(), ": missing adapter tensor ", t.key,
             " (the adapter's targets differ from this model's: compare adapter_config.json)");
  }
  for (const std::string& name : st.names())
    MF_CHECK(expected.count(name), kFormat, file.string(), ": unexpected adapter tensor ", name,
             " (not one of this model's ", m.adapters.size(), " adapter tensors)");
  for (const AdapterTensor& t : m.adapters) {
    const Tensor src = st.get(t.key);
    MF_CHECK(src.shape() == t.file_shape, kShape, file.string(), ": adapter tensor ", t.key, " has shape ",
             shape_str(src.shape()), ", this model's adapter is ", shape_str(t.file_shape));
    MF_CHECK(dtype_is_floating(src.dtype()), kFormat, file.string(), ": adapter tensor ", t.key, " has dtype ",
             dtype_safetensors_name(src.dtype()), ", expected a float type");
    Tensor dst = impl_->params().param(t.param);
    if (experts_split_over(m, t.param) == nullptr) {
      dst.copy_from(adapter_from_file(t, src, dst.shape()).to(dst.dtype()).to(dst.device()));
      continue;
    }
    // This rank's experts of a routed expert's adapter.
    const ParamEntry& e = m.params().entry(t.param);
    Shape whole = e.shape;
    whole[0] = e.all_experts;
    const Tensor mine = adapter_from_file(t, src, whole).slice(0, e.first_expert, e.first_expert + e.shape[0]);
    dst.copy_from(mine.contiguous().to(dst.dtype()).to(dst.device()));
  }
}

void CausalLM::merge_adapters() {
  with_adapters(*impl_, "merge_adapters");
  ParameterSet& ps = impl_->params();
  auto merge = [&](int weight, const LoraSlots& lora) {
    if (!lora.on()) return;
    Tensor w = ps.param(weight), a = ps.param(lora.a), b = ps.param(lora.b);
    if (w.dim() == 2) {
      ops::gemm(b, false, a, false, w, lora.scale, 1.0f);
    } else {
      for (int64_t e = 0; e < w.size(0); ++e) {
        Tensor we = w.select(0, e);
        ops::gemm(b.select(0, e), false, a.select(0, e), false, we, lora.scale, 1.0f);
      }
    }
    b.fill_zero();
  };
  for (const LayerSlots& layer : impl_->weights.layers) {
    for (const LinearSlots* s : layer.lora_linears()) merge(s->weight, s->lora);
    merge(layer.moe.router, layer.moe.router_lora);
    merge(layer.moe.experts.gate_up, layer.moe.experts.gate_up_lora);
    merge(layer.moe.experts.down, layer.moe.experts.down_lora);
  }
}

}  // namespace moeforge
