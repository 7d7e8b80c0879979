// The ops of the model, one header per concern; this one includes them all, for code that uses
// most of them (the model's layers). Every function dispatches on the device of its inputs to a
// CPU reference (ops/cpu/, float32, exact and simple) or a CUDA implementation (ops/cuda/, bf16
// storage with fp32 accumulation). CUDA versions are tested against the CPU ones. op_table.h
// lists every op with its name and profiler category.
//
// Conventions: activations are row-major [tokens, features]; "N" is the number of tokens in the
// (flattened) batch. Outputs are allocated by the op on the input's device unless a parameter is a
// `Tensor&` that the caller owns, in which case the op writes (or, where it says so, adds) into it.
// Gradient buffers of parameters are always accumulated into (`+=`), so that gradient accumulation
// and tied weights need nothing special. Every tensor passed in must be contiguous and on one device;
// on the CPU every floating tensor must be float32. Saved statistics (rstd, lse) are allocated by
// the op when the caller passes an undefined tensor, else overwritten in place. Options a later
// model family needs are added as defaulted parameters or fields of the ops' structs, so that
// existing callers keep their meaning.
#pragma once

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/dense.h"
#include "ops/embedding.h"
#include "ops/loss.h"
#include "ops/mamba.h"
#include "ops/mla.h"
#include "ops/moe.h"
#include "ops/norm.h"
#include "ops/optim.h"
#include "ops/rope.h"
