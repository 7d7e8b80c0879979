// What a checkpoint records of the run that wrote it, so that a resume refuses another run's
// checkpoint and says what differs: digests of the data files' contents and the options that decide
// the data order and what a step is. Items are a flat JSON object, name -> value; a resume compares
// the names both sides have.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moeforge {

namespace data {
class TokenCorpus;
}

// "sha256:<hex>" of the file's bytes (read once more at the start of a run: about a second per GB).
std::string content_fingerprint(const std::filesystem::path& path);

// "sha256:<hex>" of the corpus' documents as tokens with their loss marks: what the tokenizer and
// chat template made of the data.
std::string token_fingerprint(const data::TokenCorpus& corpus);

// "name (checkpoint: A, this run: B)" for each item whose values differ, in name order; empty when
// they agree.
std::vector<std::string> fingerprint_differences(const nlohmann::json& checkpoint, const nlohmann::json& current);

}  // namespace moeforge
