// The demo tokenizer's files, embedded at build time (see CMakeLists.txt).
#pragma once

extern const char* const kDemo_tokenizer_json;
extern const char* const kDemo_tokenizer_config_json;
