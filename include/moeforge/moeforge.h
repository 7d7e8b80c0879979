// The public C++ API of moeforge, under Hugging Face Transformers' names:
//   AutoModelForCausalLM / ModelForCausalLM   moeforge/model.h
//   AutoTokenizer / PreTrainedTokenizer       moeforge/tokenizer.h
//   Trainer, TrainingArguments, TokenizedDataset, DatasetTrainer   moeforge/trainer.h
// Every function throws moeforge::Error (core/error.h) with a message naming what is wrong.
#pragma once

#include "core/error.h"
#include "moeforge/model.h"
#include "moeforge/tokenizer.h"
#include "moeforge/trainer.h"
