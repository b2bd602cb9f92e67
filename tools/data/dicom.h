#pragma once
// DICOM scans (ultrasound, secondary capture: MONOCHROME1/2, RGB, YBR_FULL(_422); uncompressed,
// RLE, JPEG baseline/extended/lossless; one frame or many) through DCMTK, where the
// build found it (SONO_HAVE_DCMTK); without it a DICOM file is refused with the reason.
#include <filesystem>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "tools/data/image.h"

namespace sono::data {

// A DICOM Part 10 file: "DICM" after the 128-byte preamble.
bool is_dicom(std::string_view file_start);
bool is_dicom_file(const std::filesystem::path& file);

// Whether this build reads DICOM.
bool dicom_supported();

// Frame `frame` (0-based) as load_image gives an image: RGB 0..1 (MONOCHROME1 inverted to
// read as MONOCHROME2). Errors name the file and the problem: an unsupported transfer syntax
// (by name and UID), a frame out of range, pixel data DCMTK cannot render.
Image load_dicom(const std::filesystem::path& file, int frame = 0);
ImageSize read_dicom_size(const std::filesystem::path& file);
// Number of Frames (1 where the file does not say); refused unless 1 or more.
int read_dicom_frames(const std::filesystem::path& file);

// Millimetres between the centres of adjacent rows and of adjacent columns.
struct PixelSpacing {
  double row_mm = 0, column_mm = 0;
};
// Pixel Spacing, else the first ultrasound region's physical deltas when given in cm; empty
// when the file gives neither.
std::optional<PixelSpacing> read_pixel_spacing(const std::filesystem::path& file);

// load_dicom's frame and read_pixel_spacing's spacing from one read of the file.
struct DicomFrame {
  Image image;
  std::optional<PixelSpacing> spacing;
};
DicomFrame load_dicom_frame(const std::filesystem::path& file, int frame);

// load_dicom_frame for a run that reads many frames of the same files (predict --frame all):
// each file is read, and its pixel data decoded, once while its frames are asked for, where
// load_dicom_frame decodes the whole pixel data for every frame. The `files` last asked for
// stay loaded, and frames are rendered in runs of at most `run_bytes` of samples (at least a
// frame). Safe on several threads (one file's frames are rendered one at a time).
class DicomFrameReader {
 public:
  explicit DicomFrameReader(size_t files = 2, int64_t run_bytes = int64_t{32} << 20);
  ~DicomFrameReader();
  DicomFrameReader(const DicomFrameReader&) = delete;
  DicomFrameReader& operator=(const DicomFrameReader&) = delete;

  DicomFrame frame(const std::filesystem::path& file, int frame);

 private:
  struct Files;
  std::unique_ptr<Files> files_;
};

}  // namespace sono::data
