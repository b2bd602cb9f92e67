// libFuzzer target: a DICOM file through what the tools read of it: recognition, the size, the
// pixel spacing, and the pixels of its first two frames (a multi-frame file's second frame; a
// one-frame file's must be refused cleanly), one at a time and through the frame reader of
// predict --frame all. DCMTK parses; what is checked is that every failure
// is one sono::Error naming the file, and that no file makes the reader allocate without bound
// (libFuzzer's -rss_limit_mb).
#include "fuzz_input.h"
#include "tools/data/dicom.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sono::fuzz::MemoryFile file;
  const std::string& path = file.write(data, size);
  if (!sono::data::is_dicom_file(path)) return 0;  // the image target covers the others
  sono::fuzz::expect_clean_outcome("read_dicom_size", [&] { sono::data::read_dicom_size(path); });
  sono::fuzz::expect_clean_outcome("read_pixel_spacing", [&] { sono::data::read_pixel_spacing(path); });
  sono::data::DicomFrameReader reader(1, 1);  // a DicomImage per frame: the cheapest that covers it
  for (int frame : {0, 1}) {
    sono::fuzz::expect_clean_outcome("load_dicom", [&] { sono::data::load_dicom(path, frame); });
    sono::fuzz::expect_clean_outcome("DicomFrameReader", [&] { reader.frame(path, frame); });
  }
  return 0;
}
