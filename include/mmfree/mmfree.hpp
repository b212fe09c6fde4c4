// mmfree: MatMul-free language models on the CPU. The one header an application includes.
#pragma once

#include "mmfree/bitlinear.hpp"
#include "mmfree/config.hpp"
#include "mmfree/error.hpp"
#include "mmfree/glu.hpp"
#include "mmfree/load_hf.hpp"
#include "mmfree/gguf.hpp"
#include "mmfree/model_file.hpp"
#include "mmfree/mlgru.hpp"
#include "mmfree/model.hpp"
#include "mmfree/safetensors.hpp"
#include "mmfree/ternary_format.hpp"
#include "mmfree/thread_pool.hpp"
#include "mmfree/version.hpp"
#include "mmfree/generate.hpp"
#include "mmfree/sampler.hpp"
#include "mmfree/tokenizer.hpp"
