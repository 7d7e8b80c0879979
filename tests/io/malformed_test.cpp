// Every file of the malformed corpus (tests/data/safetensors/malformed, made by make_malformed.py and
// rejected by the Python safetensors library too) must give a moeforge::Error of kind kFormat whose
// message names the file and contains the expected words, never a crash.
#include "io/json.h"
#include "io/safetensors.h"
#include "testing.h"

namespace moeforge {
namespace {

TEST(SafetensorsMalformed, EveryCaseIsAClearFormatError) {
  const auto dir = testing::test_data_dir() / "safetensors" / "malformed";
  const Json cases = read_json_file(dir / "cases.json");
  ASSERT_GE(cases.size(), 16u);
  for (const auto& [name, expected] : cases.items()) {
    SCOPED_TRACE(name);
    const bool is_checkpoint = name.back() == '/';
    const auto path = dir / name.substr(0, is_checkpoint ? name.size() - 1 : name.size());
    ASSERT_TRUE(std::filesystem::exists(path));
    try {
      if (is_checkpoint) {
        CheckpointReader reader(path);
        reader.validate();
      } else {
        SafetensorsFile::open(path);
      }
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << message;
      EXPECT_NE(message.find(path.filename().string()), std::string::npos) << message;
      EXPECT_NE(message.find(expected.get<std::string>()), std::string::npos) << message;
    }
  }
}

}  // namespace
}  // namespace moeforge
