// _moeforge: Python bindings of the public C++ API (include/moeforge/). Only conversions live here:
// arrays (any DLPack producer in, NumPy out, both zero-copy), JSON text for dicts, and moeforge::Error
// to the Python exception of its kind with the same message. The `moeforge` package builds the
// Hugging Face-style classes on top.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "arch/checkpoint_tensors.h"
#include "arch/weight_map.h"
#include "io/json.h"
#include "moeforge/moeforge.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace moeforge {
namespace {

using InputArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

DType dtype_of(const InputArray& a, const char* name) {
  const nb::dlpack::dtype d = a.dtype();
  using Code = nb::dlpack::dtype_code;
  const auto code = static_cast<Code>(d.code);
  if (d.lanes == 1) {
    if (code == Code::Int && d.bits == 64) return DType::kI64;
    if (code == Code::Int && d.bits == 32) return DType::kI32;
    if (code == Code::Int && d.bits == 16) return DType::kI16;
    if (code == Code::Int && d.bits == 8) return DType::kI8;
    if (code == Code::UInt && d.bits == 8) return DType::kU8;
    if (code == Code::Bool && d.bits == 8) return DType::kBool;
    if (code == Code::Float && d.bits == 32) return DType::kF32;
    if (code == Code::Float && d.bits == 64) return DType::kF64;
  }
  fail(ErrorCode::kInvalidArgument, name, ": unsupported array dtype (code ", int(d.code), ", ", int(d.bits),
       " bits); pass int64, int32 or bool");
}

// A borrowed view of the caller's array, valid for the duration of the call.
Tensor borrow_array(const std::optional<InputArray>& a, const char* name) {
  if (!a) return {};
  Shape shape(a->ndim());
  for (size_t i = 0; i < a->ndim(); ++i) shape[i] = static_cast<int64_t>(a->shape(i));
  return Tensor::borrow(const_cast<void*>(a->data()), shape, dtype_of(*a, name), Device::kCPU, nullptr);
}

// A NumPy array over the tensor's memory; the array owns a reference to the tensor.
nb::object to_numpy(Tensor t) {
  MF_ASSERT(t.device() == Device::kCPU && t.is_contiguous());
  nb::dlpack::dtype dtype;
  switch (t.dtype()) {
    case DType::kF32: dtype = nb::dtype<float>(); break;
    case DType::kI64: dtype = nb::dtype<int64_t>(); break;
    case DType::kI32: dtype = nb::dtype<int32_t>(); break;
    default: fail(ErrorCode::kInternal, "to_numpy: dtype ", dtype_torch_name(t.dtype()));
  }
  std::vector<size_t> shape(t.shape().begin(), t.shape().end());
  auto* owned = new Tensor(std::move(t));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<Tensor*>(p); });
  return nb::cast(nb::ndarray<nb::numpy>(owned->raw_data(), shape.size(), shape.data(), owner, nullptr, dtype));
}

void translate_error(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    PyObject* type = PyExc_RuntimeError;
    switch (e.code()) {
      case ErrorCode::kInvalidArgument:
      case ErrorCode::kShape:
      case ErrorCode::kFormat:
      case ErrorCode::kUnsupported: type = PyExc_ValueError; break;
      case ErrorCode::kNotFound: type = PyExc_FileNotFoundError; break;
      case ErrorCode::kOutOfMemory: type = PyExc_MemoryError; break;
      default: break;
    }
    PyErr_SetString(type, e.what());
  }
}

// `where` names the text's source in errors: the Python argument, or the caller's own label.
nlohmann::ordered_json parse(const std::string& json_text, const std::string& where) {
  return parse_json_text<OrderedJson>(json_text, where);
}

}  // namespace
}  // namespace moeforge

NB_MODULE(_moeforge, m) {
  using namespace moeforge;
  using Release = nb::call_guard<nb::gil_scoped_release>;
  m.doc() = "moeforge C++ engine (use the `moeforge` package)";
  nb::register_exception_translator(translate_error);

  nb::class_<PretrainedOptions>(m, "PretrainedOptions")
      .def(nb::init<>())
      .def_rw("device", &PretrainedOptions::device)
      .def_rw("dtype", &PretrainedOptions::dtype)
      .def_rw("expert_parallel_size", &PretrainedOptions::expert_parallel_size)
      .def_rw("gradient_checkpointing", &PretrainedOptions::gradient_checkpointing);

  nb::class_<GenerationConfig>(m, "GenerationConfig")
      .def(nb::init<>())
      .def_rw("max_new_tokens", &GenerationConfig::max_new_tokens)
      .def_rw("do_sample", &GenerationConfig::do_sample)
      .def_rw("temperature", &GenerationConfig::temperature)
      .def_rw("top_k", &GenerationConfig::top_k)
      .def_rw("top_p", &GenerationConfig::top_p)
      .def_rw("seed", &GenerationConfig::seed)
      .def_rw("eos_token_ids", &GenerationConfig::eos_token_ids)
      .def_rw("pad_token_id", &GenerationConfig::pad_token_id);

  nb::class_<ModelForCausalLM>(m, "ModelForCausalLM")
      .def(
          "forward",
          [](ModelForCausalLM& self, std::optional<InputArray> input_ids, std::optional<InputArray> attention_mask,
             std::optional<InputArray> labels, std::optional<InputArray> position_ids) {
            CausalLMOutput out;
            {
              nb::gil_scoped_release release;
              out = self.forward(borrow_array(input_ids, "input_ids"), borrow_array(attention_mask, "attention_mask"),
                                 borrow_array(labels, "labels"), borrow_array(position_ids, "position_ids"));
            }
            return nb::make_tuple(out.loss, to_numpy(std::move(out.logits)));
          },
          "input_ids"_a, "attention_mask"_a.none(), "labels"_a.none(), "position_ids"_a.none())
      .def(
          "loss_gradients",
          [](ModelForCausalLM& self, InputArray input_ids, std::optional<InputArray> attention_mask, InputArray labels,
             std::optional<InputArray> position_ids) {
            LossGradients out;
            {
              nb::gil_scoped_release release;
              out = self.loss_gradients(borrow_array(input_ids, "input_ids"),
                                        borrow_array(attention_mask, "attention_mask"), borrow_array(labels, "labels"),
                                        borrow_array(position_ids, "position_ids"));
            }
            nb::dict gradients;
            for (auto& [name, grad] : out.gradients) gradients[name.c_str()] = to_numpy(std::move(grad));
            return nb::make_tuple(out.loss, gradients);
          },
          "input_ids"_a, "attention_mask"_a.none(), "labels"_a, "position_ids"_a.none())
      .def(
          "generate",
          [](ModelForCausalLM& self, InputArray input_ids, std::optional<InputArray> attention_mask,
             const GenerationConfig& config) {
            Tensor out;
            {
              nb::gil_scoped_release release;
              out = self.generate(borrow_array(input_ids, "input_ids"), borrow_array(attention_mask, "attention_mask"),
                                  config);
            }
            return to_numpy(std::move(out));
          },
          "input_ids"_a, "attention_mask"_a.none(), "config"_a)
      .def(
          "save_pretrained",
          [](const ModelForCausalLM& self, const std::string& folder, const std::string& quantization) {
            self.save_pretrained(folder, quantization);
          },
          "folder"_a, "quantization"_a = "none", Release())
      .def("config_json", [](const ModelForCausalLM& self) { return self.config().dump(); })
      .def("num_parameters", &ModelForCausalLM::num_parameters, "exclude_embeddings"_a = false)
      // LoRA: the config travels as adapter_config.json text, read by the same code as the files.
      .def(
          "add_adapter",
          [](ModelForCausalLM& self, const std::string& config_json, uint64_t seed) {
            LoraConfig config = LoraConfig::from_json(parse_json_text<Json>(config_json, "LoraConfig"), "LoraConfig");
            nb::gil_scoped_release release;
            self.add_adapter(std::move(config), seed);
          },
          "config_json"_a, "seed"_a)
      .def("load_adapter", [](ModelForCausalLM& self, const std::string& folder) { self.load_adapter(folder); },
           "folder"_a, Release())
      .def("save_adapter", [](const ModelForCausalLM& self, const std::string& folder) { self.save_adapter(folder); },
           "folder"_a, Release())
      .def("merge_and_unload", &ModelForCausalLM::merge_and_unload, Release())
      .def("unload", &ModelForCausalLM::unload, Release())
      .def("adapter_config_json",
           [](const ModelForCausalLM& self) -> std::optional<std::string> {
             const LoraConfig* c = self.lora_config();
             if (c == nullptr) return std::nullopt;
             return c->to_json().dump();
           })
      .def("num_adapter_parameters", &ModelForCausalLM::num_adapter_parameters)
      .def("set_gradient_checkpointing", &ModelForCausalLM::set_gradient_checkpointing, "on"_a)
      .def_prop_ro("name_or_path", &ModelForCausalLM::name_or_path)
      .def_prop_ro("folder", [](const ModelForCausalLM& self) { return self.folder().string(); })
      .def_prop_ro("pad_token_id", &ModelForCausalLM::pad_token_id)
      .def_prop_ro("device",
                   [](const ModelForCausalLM& self) {
                     return self.causal_lm().options().device == Device::kCUDA ? "cuda" : "cpu";
                   })
      .def_prop_ro("dtype",
                   [](const ModelForCausalLM& self) { return std::string(dtype_torch_name(self.causal_lm().options().dtype)); })
      // Copies, in float32, under the checkpoint's tensor names (what save_pretrained writes).
      .def("state_dict",
           [](const ModelForCausalLM& self) {
             const CausalLM& m = self.causal_lm();
             MF_CHECK(!m.expert_group() || m.expert_group()->size() == 1, kUnsupported,
                      "state_dict() under expert parallelism: each process holds only its experts; "
                      "save_pretrained writes the whole model");
             nb::dict out;
             for (const CheckpointTensor& b : m.checkpoint_tensors()) {
               if (!b.in_model()) continue;
               Tensor t = read_slice(b.slice, m.params().param(b.slice.param));
               out[b.name.c_str()] = to_numpy(t.to(Device::kCPU).to(DType::kF32).contiguous());
             }
             return out;
           });

  m.def("cuda_is_available", &cuda_is_available);
  m.def("model_from_pretrained", &AutoModelForCausalLM::from_pretrained, "path_or_id"_a, "options"_a, Release());
  m.def(
      "model_from_config",
      [](const std::string& config_path, const PretrainedOptions& options, uint64_t seed) {
        return AutoModelForCausalLM::from_config(config_path, options, seed);
      },
      "config_path"_a, "options"_a, "seed"_a, Release());

  nb::class_<PreTrainedTokenizer>(m, "PreTrainedTokenizer")
      .def(
          "encode",
          [](const PreTrainedTokenizer& self, const std::string& text, bool add_special_tokens) {
            Encoding e = self.encode(text, add_special_tokens);
            return nb::make_tuple(e.ids, e.offsets);
          },
          "text"_a, "add_special_tokens"_a)
      .def(
          "encode_batch",
          [](const PreTrainedTokenizer& self, const std::vector<std::string>& texts, bool add_special_tokens) {
            std::vector<std::vector<int32_t>> ids;
            {
              nb::gil_scoped_release release;
              for (Encoding& e : self.encode_batch(texts, add_special_tokens)) ids.push_back(std::move(e.ids));
            }
            return ids;
          },
          "texts"_a, "add_special_tokens"_a)
      .def("decode", &PreTrainedTokenizer::decode, "ids"_a, "skip_special_tokens"_a)
      .def(
          "apply_chat_template",
          [](const PreTrainedTokenizer& self, const std::string& messages, bool add_generation_prompt,
             const std::string& tools, const std::string& extra_variables) {
            return self.apply_chat_template(parse(messages, "messages_json"), add_generation_prompt,
                                            parse(tools, "tools_json"), parse(extra_variables, "variables_json"));
          },
          "messages_json"_a, "add_generation_prompt"_a, "tools_json"_a, "variables_json"_a)
      .def(
          "apply_chat_template_ids",
          [](const PreTrainedTokenizer& self, const std::string& messages, bool add_generation_prompt,
             const std::string& tools, const std::string& extra_variables) {
            chat::MaskedEncoding e =
                self.apply_chat_template_ids(parse(messages, "messages_json"), add_generation_prompt,
                                             parse(tools, "tools_json"), parse(extra_variables, "variables_json"));
            return nb::make_tuple(e.ids, std::vector<int>(e.assistant_mask.begin(), e.assistant_mask.end()));
          },
          "messages_json"_a, "add_generation_prompt"_a, "tools_json"_a, "variables_json"_a)
      .def_prop_ro("has_chat_template", &PreTrainedTokenizer::has_chat_template)
      .def_prop_ro("eos_token", &PreTrainedTokenizer::eos_token)
      .def_prop_ro("pad_token", &PreTrainedTokenizer::pad_token)
      .def_prop_ro("bos_token", &PreTrainedTokenizer::bos_token)
      .def_prop_ro("model_max_length", &PreTrainedTokenizer::model_max_length)
      .def_prop_ro("padding_side", &PreTrainedTokenizer::padding_side)
      .def_prop_ro("vocab_size", &PreTrainedTokenizer::vocab_size)
      .def_prop_ro("folder", [](const PreTrainedTokenizer& self) { return self.folder().string(); })
      .def("token_to_id", &PreTrainedTokenizer::token_to_id, "token"_a)
      .def("set_chat_template", &PreTrainedTokenizer::set_chat_template, "source"_a)
      .def("id_to_token", [](const PreTrainedTokenizer& self, int32_t id) { return self.tokenizer().id_to_token(id); },
           "id"_a)
      .def("is_special", [](const PreTrainedTokenizer& self, int32_t id) { return self.tokenizer().is_special(id); },
           "id"_a);

  m.def("tokenizer_from_pretrained", &AutoTokenizer::from_pretrained, "path_or_id"_a);

  nb::class_<TrainingArguments>(m, "TrainingArguments")
      .def(nb::init<>())
      .def_rw("output_dir", &TrainingArguments::output_dir)
      .def_rw("overwrite_output_dir", &TrainingArguments::overwrite_output_dir)
      .def_rw("learning_rate", &TrainingArguments::learning_rate)
      .def_rw("per_device_train_batch_size", &TrainingArguments::per_device_train_batch_size)
      .def_rw("per_device_eval_batch_size", &TrainingArguments::per_device_eval_batch_size)
      .def_rw("gradient_accumulation_steps", &TrainingArguments::gradient_accumulation_steps)
      .def_rw("max_steps", &TrainingArguments::max_steps)
      .def_rw("num_train_epochs", &TrainingArguments::num_train_epochs)
      .def_rw("warmup_steps", &TrainingArguments::warmup_steps)
      .def_rw("warmup_ratio", &TrainingArguments::warmup_ratio)
      .def_rw("lr_scheduler_type", &TrainingArguments::lr_scheduler_type)
      .def_rw("weight_decay", &TrainingArguments::weight_decay)
      .def_rw("adam_beta1", &TrainingArguments::adam_beta1)
      .def_rw("adam_beta2", &TrainingArguments::adam_beta2)
      .def_rw("adam_epsilon", &TrainingArguments::adam_epsilon)
      .def_rw("max_grad_norm", &TrainingArguments::max_grad_norm)
      .def_rw("logging_steps", &TrainingArguments::logging_steps)
      .def_rw("eval_steps", &TrainingArguments::eval_steps)
      .def_rw("eval_strategy", &TrainingArguments::eval_strategy)
      .def_rw("save_steps", &TrainingArguments::save_steps)
      .def_rw("save_total_limit", &TrainingArguments::save_total_limit)
      .def_rw("seed", &TrainingArguments::seed)
      .def_rw("gradient_checkpointing", &TrainingArguments::gradient_checkpointing)
      .def_rw("recompute_full_layers", &TrainingArguments::recompute_full_layers)
      .def_rw("activation_offload_layers", &TrainingArguments::activation_offload_layers)
      .def_rw("zero_stage", &TrainingArguments::zero_stage)
      .def_rw("resume_from_checkpoint", &TrainingArguments::resume_from_checkpoint)
      .def_rw("report_to", &TrainingArguments::report_to)
      .def_rw("optimizer_precision", &TrainingArguments::optimizer_precision)
      .def_rw("nan_policy", &TrainingArguments::nan_policy)
      .def_rw("save_quantization", &TrainingArguments::save_quantization)
      .def_rw("freeze", &TrainingArguments::freeze)
      .def_rw("router_bias_update_rate", &TrainingArguments::router_bias_update_rate)
      .def("validate", [](const TrainingArguments& self) { validate(self); })
      .def_static(
          "check_range", [](const std::string& name, double value) { check_training_option(name, value); }, "name"_a,
          "value"_a);

  nb::class_<TrainResult>(m, "TrainResult")
      .def_ro("steps", &TrainResult::steps)
      .def_ro("final_loss", &TrainResult::final_loss)
      .def_ro("training_loss", &TrainResult::training_loss)
      .def_ro("final_eval_loss", &TrainResult::final_eval_loss)
      .def_ro("interrupted", &TrainResult::interrupted);

  nb::class_<TokenizedDataset>(m, "TokenizedDataset")
      .def(
          "__init__",
          [](TokenizedDataset* self, const PreTrainedTokenizer* tokenizer, const std::string& dataset_text_field,
             bool assistant_only_loss, bool completion_only_loss) {
            new (self) TokenizedDataset(tokenizer, {dataset_text_field, assistant_only_loss, completion_only_loss});
          },
          "tokenizer"_a.none(), "dataset_text_field"_a = "text", "assistant_only_loss"_a = true,
          "completion_only_loss"_a = true, nb::keep_alive<1, 2>())
      .def(
          "add_example",
          [](TokenizedDataset& self, const std::string& example_json, const std::string& where) {
            self.add_example(parse(example_json, where), where);
          },
          "example_json"_a, "where"_a)
      .def("add_tokens", &TokenizedDataset::add_tokens, "input_ids"_a, "labels"_a, "where"_a)
      .def("__len__", &TokenizedDataset::size);

  nb::class_<DatasetTrainer>(m, "DatasetTrainer")
      .def(nb::init<ModelForCausalLM&, TrainingArguments, int64_t, TokenizedDataset&, TokenizedDataset*,
                    const PreTrainedTokenizer*, bool>(),
           "model"_a, "args"_a, "max_seq_length"_a, "train_dataset"_a, "eval_dataset"_a.none(), "tokenizer"_a.none(),
           "packing"_a = true,
           nb::keep_alive<1, 2>(), nb::keep_alive<1, 5>(), nb::keep_alive<1, 6>(), nb::keep_alive<1, 7>())
      .def("train", &DatasetTrainer::train, Release())
      .def("evaluate", &DatasetTrainer::evaluate, Release())
      .def("save_model", &DatasetTrainer::save_model, "folder"_a, Release())
      .def("set_resume_from_checkpoint", &DatasetTrainer::set_resume_from_checkpoint, "checkpoint"_a)
      .def_prop_ro("global_step", &DatasetTrainer::global_step);
}
