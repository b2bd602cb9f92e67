// DICOM input (tools/data/dicom.h): files written here with DCMTK itself, in the layouts and
// transfer syntaxes scanners produce, read back as load_image reads the same pixels as PNG.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <stb_image.h>

#include "tensor/error.h"
#include "tools/data/dataset.h"
#include "tools/data/dicom.h"

#ifdef SONO_HAVE_DCMTK
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcrleerg.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmjpeg/djencode.h>
#include <dcmtk/dcmjpeg/djrplol.h>
#include <dcmtk/dcmjpeg/djrploss.h>
#endif

using namespace sono;
using namespace sono::data;
namespace fs = std::filesystem;

namespace {

fs::path folder() {
  fs::path dir = fs::path(SONO_BINARY_DIR) / "test_dicom";
  fs::create_directories(dir);
  return dir;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("DICOM files are recognised by their DICM tag and .dcm name") {
  const fs::path file = folder() / "tag.dcm";
  std::string bytes(128, '\0');
  std::ofstream(file, std::ios::binary) << bytes << "DICM" << std::string(16, '\1');
  CHECK(is_dicom_file(file));
  CHECK(is_image_file(folder() / "scan.DCM"));
  std::ofstream(folder() / "not.dcm", std::ios::binary) << std::string(200, 'x');
  CHECK_FALSE(is_dicom_file(folder() / "not.dcm"));
  if (!dicom_supported()) {
    MESSAGE("skipped: the DICOM reading tests (this build has no DCMTK); only the refusal is checked");
    CHECK(contains(error_of([&] { load_image(file); }), "DCMTK was not found"));
  }
}

#ifdef SONO_HAVE_DCMTK

namespace {

// A scan's description and samples (frames one after another, interleaved channels).
struct Scan {
  int width = 0, height = 0, frames = 1;
  std::string photometric = "MONOCHROME2";
  int bits = 8;
  std::vector<uint16_t> samples;  // 8-bit scans use the low byte

  int channels() const { return photometric == "RGB" ? 3 : 1; }
  size_t frame_samples() const { return size_t(width) * height * channels(); }
};

// Smooth shapes and a few edges: what a JPEG codec meets in a scan.
Scan make_scan(int width, int height, const std::string& photometric, int bits, int frames = 1) {
  Scan s{width, height, frames, photometric, bits, {}};
  const int max = (1 << bits) - 1;
  for (int f = 0; f < frames; ++f)
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x)
        for (int c = 0; c < s.channels(); ++c) {
          const double v = 0.5 + 0.4 * std::sin(0.11 * x + 0.07 * y * (c + 1) + f) * ((x / 9 + y / 7) % 3 ? 1 : 0.5);
          s.samples.push_back(uint16_t(v * max));
        }
  return s;
}

// `more` adds elements to the dataset (pixel spacing, ultrasound regions).
void write_dicom(const fs::path& file, const Scan& s, E_TransferSyntax xfer, const DcmRepresentationParameter* params = nullptr,
                 const std::function<void(DcmDataset&)>& more = {}) {
  DcmFileFormat dicom;
  DcmDataset* d = dicom.getDataset();
  char uid[100];
  REQUIRE(d->putAndInsertString(DCM_SOPClassUID, UID_UltrasoundImageStorage).good());
  REQUIRE(d->putAndInsertString(DCM_SOPInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT)).good());
  d->putAndInsertString(DCM_PhotometricInterpretation, s.photometric.c_str());
  d->putAndInsertUint16(DCM_SamplesPerPixel, Uint16(s.channels()));
  d->putAndInsertUint16(DCM_Rows, Uint16(s.height));
  d->putAndInsertUint16(DCM_Columns, Uint16(s.width));
  d->putAndInsertUint16(DCM_BitsAllocated, s.bits > 8 ? 16 : 8);
  d->putAndInsertUint16(DCM_BitsStored, Uint16(s.bits));
  d->putAndInsertUint16(DCM_HighBit, Uint16(s.bits - 1));
  d->putAndInsertUint16(DCM_PixelRepresentation, 0);
  if (s.channels() == 3) d->putAndInsertUint16(DCM_PlanarConfiguration, 0);
  if (s.frames > 1) d->putAndInsertString(DCM_NumberOfFrames, std::to_string(s.frames).c_str());
  if (s.bits > 8) {
    REQUIRE(d->putAndInsertUint16Array(DCM_PixelData, s.samples.data(), s.samples.size()).good());
  } else {
    std::vector<Uint8> bytes(s.samples.begin(), s.samples.end());
    REQUIRE(d->putAndInsertUint8Array(DCM_PixelData, bytes.data(), bytes.size()).good());
  }
  if (more) more(*d);
  if (DcmXfer(xfer).isEncapsulated()) REQUIRE(d->chooseRepresentation(xfer, params).good());
  OFCondition saved = dicom.saveFile(file.c_str(), xfer);
  INFO(saved.text());
  REQUIRE(saved.good());
}

// What load_image gives for these samples: the PNG path's conversion.
Image expected_image(const Scan& s, int frame = 0) {
  const bool sixteen = s.bits > 8;
  std::vector<uint8_t> bytes;
  for (size_t i = 0; i < s.frame_samples(); ++i) {
    uint16_t v = s.samples[frame * s.frame_samples() + i];
    if (sixteen) {
      v = uint16_t(v << (16 - s.bits));  // DCMTK renders 12 bits stored to 16 as a shift
      bytes.insert(bytes.end(), {uint8_t(v & 0xFF), uint8_t(v >> 8)});
    } else {
      bytes.push_back(uint8_t(v));
    }
  }
  return image_from_pixels({bytes.data(), s.height, s.width, s.channels(), sixteen,
                            size_t(s.width) * s.channels() * (sixteen ? 2 : 1)});
}

double mean_abs_diff(const Image& a, const Image& b) {
  REQUIRE(a.pixels.size() == b.pixels.size());
  double sum = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) sum += std::abs(a.pixels[i] - b.pixels[i]);
  return sum / a.pixels.size();
}

}  // namespace

TEST_CASE("DICOM: grey and RGB, 8 and 16 bits, uncompressed, read as the same pixels as PNG") {
  struct Case {
    std::string photometric;
    int bits;
    E_TransferSyntax xfer;
  };
  for (const Case& c : {Case{"MONOCHROME2", 8, EXS_LittleEndianExplicit}, Case{"MONOCHROME2", 8, EXS_LittleEndianImplicit},
                        Case{"RGB", 8, EXS_LittleEndianExplicit}, Case{"MONOCHROME2", 16, EXS_BigEndianExplicit},
                        Case{"MONOCHROME2", 12, EXS_LittleEndianExplicit}}) {
    CAPTURE(c.photometric);
    CAPTURE(c.bits);
    const std::string xfer = DcmXfer(c.xfer).getXferName();
    CAPTURE(xfer);
    const Scan s = make_scan(37, 23, c.photometric, c.bits);
    const fs::path file = folder() / "plain.dcm";
    write_dicom(file, s, c.xfer);
    const Image got = load_image(file);
    CHECK(read_image_size(file) == ImageSize{23, 37});
    CHECK(got.pixels == expected_image(s).pixels);
  }
}

// A deflated dataset's element lengths cannot be checked against the file before DCMTK
// allocates them (tests/fuzz/findings/dicom: 4 KB asking for 2.6 GB), so it is refused from the
// meta header, before its dataset is read.
TEST_CASE("DICOM: a deflated dataset is refused, naming its transfer syntax") {
  const fs::path file = folder() / "deflated.dcm";
  write_dicom(file, make_scan(37, 23, "RGB", 8), EXS_DeflatedLittleEndianExplicit);
  for (const auto& read : std::vector<std::function<void()>>{[&] { load_image(file); }, [&] { read_image_size(file); },
                                                            [&] { read_pixel_spacing(file); }}) {
    const std::string error = error_of(read);
    CHECK(contains(error, "deflated.dcm"));
    CHECK(contains(error, "Deflated Explicit VR Little Endian"));
    CHECK(contains(error, "is not supported"));
  }
}

TEST_CASE("DICOM: MONOCHROME1 reads inverted, as MONOCHROME2 would show it") {
  Scan s = make_scan(16, 12, "MONOCHROME1", 8);
  write_dicom(folder() / "mono1.dcm", s, EXS_LittleEndianExplicit);
  for (auto& v : s.samples) v = uint16_t(255 - v);
  const Image got = load_image(folder() / "mono1.dcm"), inverted = expected_image(s);
  float worst = 0;  // 255 - v to a level: DCMTK's inverting LUT rounds either way
  for (size_t i = 0; i < got.pixels.size(); ++i) worst = std::max(worst, std::abs(got.pixels[i] - inverted.pixels[i]));
  CHECK(worst <= 1.5f / 255);
}

TEST_CASE("DICOM: JPEG lossless is exact, JPEG baseline close; RLE exact") {
  DJEncoderRegistration::registerCodecs();
  DcmRLEEncoderRegistration::registerCodecs();
  const Scan grey = make_scan(40, 30, "MONOCHROME2", 8), rgb = make_scan(40, 30, "RGB", 8);
  const DJ_RPLossless lossless;
  write_dicom(folder() / "lossless.dcm", grey, EXS_JPEGProcess14SV1, &lossless);
  CHECK(load_image(folder() / "lossless.dcm").pixels == expected_image(grey).pixels);
  write_dicom(folder() / "rle.dcm", rgb, EXS_RLELossless);
  CHECK(load_image(folder() / "rle.dcm").pixels == expected_image(rgb).pixels);
  const DJ_RPLossy quality(95);
  write_dicom(folder() / "baseline.dcm", rgb, EXS_JPEGProcess1, &quality);  // stored as YBR_FULL_422
  DcmFileFormat written;
  REQUIRE(written.loadFile((folder() / "baseline.dcm").c_str()).good());
  OFString photometric;
  written.getDataset()->findAndGetOFString(DCM_PhotometricInterpretation, photometric);
  CHECK(std::string(photometric.c_str()).starts_with("YBR_FULL"));
  const double error = mean_abs_diff(load_image(folder() / "baseline.dcm"), expected_image(rgb));
  CHECK(error < 0.02);  // JPEG at quality 95 and 4:2:2 chroma: a few levels of 255 on average
}

TEST_CASE("DICOM: a multi-frame file gives the frame asked for, and names the range otherwise") {
  const Scan s = make_scan(20, 10, "MONOCHROME2", 8, 3);
  const fs::path file = folder() / "frames.dcm";
  write_dicom(file, s, EXS_LittleEndianExplicit);
  CHECK(load_dicom(file, 2).pixels == expected_image(s, 2).pixels);
  CHECK(load_dicom(file, 2).pixels != expected_image(s, 0).pixels);
  CHECK(load_image(file).pixels == expected_image(s, 0).pixels);
  CHECK(contains(error_of([&] { load_dicom(file, 3); }), "frame 3 asked for, it has 3 (0 to 2)"));
  CHECK(read_dicom_frames(file) == 3);
}

// predict --frame all makes a scan of every frame the file claims: the claim is held to the file.
TEST_CASE("DICOM: a Number of Frames larger than the file could hold is refused, naming both") {
  const fs::path file = folder() / "many_frames.dcm";
  write_dicom(file, make_scan(4, 4, "MONOCHROME2", 8), EXS_LittleEndianExplicit, nullptr,
              [](DcmDataset& d) { d.putAndInsertString(DCM_NumberOfFrames, "2147483647"); });
  const std::string error = error_of([&] { read_dicom_frames(file); });
  CHECK(contains(error, "many_frames.dcm': Number of Frames is 2147483647, more than its "));
  CHECK(contains(error, " bytes can hold"));
  CHECK(contains(error_of([&] { load_dicom(file, 0); }), "Number of Frames is 2147483647"));
}

TEST_CASE("DICOM: the pixel spacing from Pixel Spacing, else from the ultrasound region in cm") {
  const Scan s = make_scan(8, 8, "MONOCHROME2", 8);
  const fs::path file = folder() / "spacing.dcm";
  write_dicom(file, s, EXS_LittleEndianExplicit);
  CHECK_FALSE(read_pixel_spacing(file).has_value());
  write_dicom(file, s, EXS_LittleEndianExplicit, nullptr, [](DcmDataset& d) {
    d.putAndInsertString(DCM_PixelSpacing, "0.2\\0.1");  // rows, then columns
  });
  REQUIRE(read_pixel_spacing(file).has_value());
  CHECK(read_pixel_spacing(file)->row_mm == 0.2);
  CHECK(read_pixel_spacing(file)->column_mm == 0.1);
  auto region = [](Uint16 units) {
    return [units](DcmDataset& d) {
      DcmItem* item = nullptr;
      REQUIRE(d.findOrCreateSequenceItem(DCM_SequenceOfUltrasoundRegions, item, 0).good());
      item->putAndInsertUint16(DCM_PhysicalUnitsXDirection, units);
      item->putAndInsertUint16(DCM_PhysicalUnitsYDirection, units);
      item->putAndInsertFloat64(DCM_PhysicalDeltaX, 0.005);
      item->putAndInsertFloat64(DCM_PhysicalDeltaY, 0.02);
    };
  };
  write_dicom(file, s, EXS_LittleEndianExplicit, nullptr, region(3));  // cm
  REQUIRE(read_pixel_spacing(file).has_value());
  CHECK(read_pixel_spacing(file)->row_mm == doctest::Approx(0.2));
  CHECK(read_pixel_spacing(file)->column_mm == doctest::Approx(0.05));
  write_dicom(file, s, EXS_LittleEndianExplicit, nullptr, region(4));  // seconds: not a length
  CHECK_FALSE(read_pixel_spacing(file).has_value());
}

namespace {

// A grey scan (8 x 8 unless said) whose pixel data is one encapsulated fragment of `xfer`
// holding `fragment`.
void write_fragment(const fs::path& file, E_TransferSyntax xfer, std::vector<Uint8> fragment, Uint16 rows = 8,
                    Uint16 columns = 8) {
  DcmFileFormat dicom;
  DcmDataset* d = dicom.getDataset();
  char uid[100];
  d->putAndInsertString(DCM_SOPClassUID, UID_SecondaryCaptureImageStorage);
  d->putAndInsertString(DCM_SOPInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT));
  d->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
  d->putAndInsertUint16(DCM_SamplesPerPixel, 1);
  d->putAndInsertUint16(DCM_Rows, rows);
  d->putAndInsertUint16(DCM_Columns, columns);
  d->putAndInsertUint16(DCM_BitsAllocated, 8);
  d->putAndInsertUint16(DCM_BitsStored, 8);
  d->putAndInsertUint16(DCM_HighBit, 7);
  d->putAndInsertUint16(DCM_PixelRepresentation, 0);
  auto* sequence = new DcmPixelSequence(DCM_PixelSequenceTag);
  sequence->insert(new DcmPixelItem(DCM_PixelItemTag));  // the empty offset table
  auto* item = new DcmPixelItem(DCM_PixelItemTag);
  item->putUint8Array(fragment.data(), fragment.size());
  sequence->insert(item);
  auto* pixels = new DcmPixelData(DCM_PixelData);
  pixels->putOriginalRepresentation(xfer, nullptr, sequence);
  d->insert(pixels);
  REQUIRE(dicom.saveFile(file.c_str(), xfer).good());
}

}  // namespace

TEST_CASE("DICOM: an unsupported transfer syntax is refused by name and UID") {
  // JPEG 2000, which DCMTK from Debian cannot decode.
  const fs::path file = folder() / "j2k.dcm";
  write_fragment(file, EXS_JPEG2000LosslessOnly, std::vector<Uint8>(16, 0x42));
  const std::string error = error_of([&] { load_image(file); });
  CHECK(contains(error, "j2k.dcm"));
  CHECK(contains(error, "JPEG 2000"));
  CHECK(contains(error, UID_JPEG2000LosslessOnlyTransferSyntax));
  CHECK(contains(error, "is not supported"));
}

// predict --frame all reads each frame of a file in turn through a DicomFrameReader, which
// decodes each file once: every frame is load_dicom's, whichever order and files they come in.
TEST_CASE("DICOM: a frame reader gives load_dicom's frames of compressed multi-frame files") {
  DcmRLEEncoderRegistration::registerCodecs();
  DJEncoderRegistration::registerCodecs();
  const Scan rgb = make_scan(24, 16, "RGB", 8, 4), grey = make_scan(20, 12, "MONOCHROME2", 8, 3);
  const fs::path rle = folder() / "frames_rle.dcm", jpeg = folder() / "frames_lossless.dcm";
  write_dicom(rle, rgb, EXS_RLELossless);
  const DJ_RPLossless lossless;
  write_dicom(jpeg, grey, EXS_JPEGProcess14SV1, &lossless);
  for (auto [files, run_bytes] : {std::pair<size_t, int64_t>{1, 1}, {2, 1 << 20}, {2, 3000}}) {
    CAPTURE(files);
    CAPTURE(run_bytes);  // a frame at a time; all frames at once; runs of 2 (1152 bytes a frame)
    DicomFrameReader reader(files, run_bytes);
    for (int f : {0, 1, 2, 3, 1}) CHECK(reader.frame(rle, f).image.pixels == expected_image(rgb, f).pixels);
    for (int f : {2, 0}) {  // alternating files: with room for one, each read again
      CHECK(reader.frame(jpeg, f).image.pixels == expected_image(grey, f).pixels);
      CHECK(reader.frame(rle, f).image.pixels == expected_image(rgb, f).pixels);
    }
    CHECK(contains(error_of([&] { reader.frame(jpeg, 3); }), "frame 3 asked for, it has 3 (0 to 2)"));
    CHECK(reader.frame(jpeg, 1).image.pixels == expected_image(grey, 1).pixels);
    const fs::path j2k = folder() / "frames_j2k.dcm";
    write_fragment(j2k, EXS_JPEG2000LosslessOnly, std::vector<Uint8>(16, 0x42));
    for (int f : {0, 1}) CHECK(contains(error_of([&] { reader.frame(j2k, f); }), "JPEG 2000"));
  }
  const fs::path baseline = folder() / "frames_baseline.dcm";  // YBR_FULL_422, decoded to RGB
  const DJ_RPLossy quality(95);
  write_dicom(baseline, make_scan(24, 16, "RGB", 8, 2), EXS_JPEGProcess1, &quality);
  DicomFrameReader reader;
  for (int f : {0, 1}) CHECK(reader.frame(baseline, f).image.pixels == load_dicom(baseline, f).pixels);
}

// DCMTK's decoder walks a JPEG fragment's markers for the frame header and never moves past a
// TEM marker (tests/fuzz/findings/dicom/jpeg_tem_marker_hang.dcm): without the check this test
// hangs.
TEST_CASE("DICOM: a JPEG fragment DCMTK's decoder would loop on forever is refused") {
  const fs::path file = folder() / "tem.dcm";
  std::vector<Uint8> fragment = {0xff, 0xd8, 0xff, 0x01, 0xff, 0xc3, 0x00, 0x0b, 0x08, 0x00, 0x08, 0x00, 0x08, 0x01, 0x01, 0x11, 0x00, 0xff, 0xd9, 0x00};
  write_fragment(file, EXS_JPEGProcess14SV1, fragment);
  const std::string error = error_of([&] { load_image(file); });
  CHECK(contains(error, "tem.dcm"));
  CHECK(contains(error, "corrupt JPEG data"));
  fragment[3] = 0xfe;  // a COM marker instead: walked past, the frame header found, decoded or refused by DCMTK
  write_fragment(file, EXS_JPEGProcess14SV1, fragment);
  CHECK_FALSE(contains(error_of([&] { load_image(file); }), "corrupt JPEG data"));
}

// A compressed frame is decoded into a buffer of the size the header declares: 65535 x 65535
// from a few bytes would be 4 GB.
TEST_CASE("DICOM: a frame larger than the pixel limit is refused before it is decoded") {
  const fs::path file = folder() / "huge.dcm";
  write_fragment(file, EXS_JPEGProcess14SV1,
                 {0xff, 0xd8, 0xff, 0xc3, 0x00, 0x0b, 0x08, 0x00, 0x08, 0x00, 0x08, 0x01, 0x01, 0x11, 0x00, 0xff, 0xd9},
                 65535, 65535);
  CHECK(contains(error_of([&] { load_image(file); }), "huge.dcm' is 65535x65535, more than the limit of 33554432 pixels"));
}

// predict end to end: a multi-frame DICOM whose frame 1 is a sample scan gives, with --frame 1,
// what predict gives on the scan's PNG.
namespace {

std::string predict(const std::string& args) {
  const std::string command = std::string(SONO_BINARY_DIR) + "/bin/predict --threads 1 --seg_model " +
                              SONO_SHIPPED_SEG + " --cls_model " + SONO_SHIPPED_CLS + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe);
  std::string out(1 << 16, '\0');
  out.resize(fread(out.data(), 1, out.size(), pipe));
  pclose(pipe);
  return out;
}

std::string prediction_lines(const std::string& out) {
  std::smatch m;
  REQUIRE(std::regex_search(out, m, std::regex("Predicted class: [^\n]*\nProbabilities: [^\n]*")));
  return m[0];
}

const std::string kSampleScan = std::string(SONO_SOURCE_DIR) + "/tools/samples/benign_10.png";

// A 3-frame DICOM file whose frame 1 is the sample scan (frames 0 and 2: patterns), 0.2 x 0.1 mm pixels.
fs::path write_sample_cine(const fs::path& file) {
  int width, height, channels;
  std::unique_ptr<uint8_t, void (*)(void*)> pixels(stbi_load(kSampleScan.c_str(), &width, &height, &channels, 1),
                                                   stbi_image_free);
  REQUIRE(pixels);
  Scan s = make_scan(width, height, "MONOCHROME2", 8, 3);
  std::copy_n(pixels.get(), s.frame_samples(), s.samples.begin() + s.frame_samples());
  write_dicom(file, s, EXS_LittleEndianExplicit, nullptr,
              [](DcmDataset& d) { d.putAndInsertString(DCM_PixelSpacing, "0.2\\0.1"); });
  return file;
}

}  // namespace

TEST_CASE("predict --frame on a multi-frame DICOM scan gives what predict gives on its PNG") {
  const std::string png = kSampleScan;
  const fs::path file = write_sample_cine(folder() / "benign_10.dcm");

  const fs::path mask = folder() / "benign_10_mask.png";
  const std::string expected = prediction_lines(predict("--image " + png + " --overwrite --save_mask " + mask.string()));
  const std::string out = predict("--image " + file.string() + " --frame 1");
  INFO(out);
  CHECK(prediction_lines(out) == expected);
  char area[100];
  std::snprintf(area, sizeof area, "Lesion area: %.1f mm^2 (pixels 0.2 x 0.1 mm)", load_mask({mask}).lesion_pixels() * 0.02);
  CHECK(contains(out, area));
  CHECK(contains(predict("--image " + file.string() + " --frame 3"), "frame 3 asked for, it has 3 (0 to 2)"));
  CHECK(contains(predict("--image " + png + " --frame 1"), "--frame 1: " + png + " is not a DICOM file"));
}

// --frame all: each frame of the file a scan of a batch run, its own CSV row and outputs.
TEST_CASE("predict --frame all predicts every frame of a multi-frame DICOM file, a CSV row and a mask each") {
  const fs::path dir = folder() / "cine";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path file = write_sample_cine(dir / "benign_10.dcm"), csv = dir / "frames.csv", masks = dir / "masks";
  const fs::path png_mask = dir / "png_mask.png";
  const std::string expected = prediction_lines(predict("--image " + kSampleScan + " --save_mask " + png_mask.string()));
  const std::string out = predict("--image " + file.string() + " --frame all --csv " + csv.string() + " --save_mask " +
                                  masks.string());
  INFO(out);
  CHECK(contains(out, "3 of 3 images predicted"));
  std::ifstream in(csv);
  std::vector<std::string> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(line);
  REQUIRE(rows.size() == 4);
  CHECK(rows[0].rfind("image,frame,predicted_class,", 0) == 0);
  const Mask expected_mask = load_mask({png_mask});
  for (int f = 0; f < 3; ++f) {
    CAPTURE(f);
    CHECK(rows[1 + f].rfind("benign_10.dcm," + std::to_string(f) + ",", 0) == 0);
    CHECK(fs::exists(masks / ("benign_10_frame" + std::to_string(f) + "_mask.png")));
  }
  // Frame 1 is the sample scan: its class, and its mask, are the PNG's.
  const std::string expected_class = expected.substr(17, expected.find(' ', 17) - 17);  // "Predicted class: X (..."
  CHECK(rows[2].rfind("benign_10.dcm,1," + expected_class + ",", 0) == 0);
  CHECK(load_mask({masks / "benign_10_frame1_mask.png"}).values == expected_mask.values);
  char area[40];
  std::snprintf(area, sizeof area, ",%d,%g,", int(expected_mask.lesion_pixels()), expected_mask.lesion_pixels() * 0.02);
  CHECK(contains(rows[2], area));
  // The CSV's (image, frame) pairs are what --skip-existing resumes by.
  CHECK(contains(predict("--image " + file.string() + " --frame all --skip_existing --csv " + csv.string() +
                         " --save_mask " + masks.string()),
                 "All 3 images are in " + csv.string() + " already"));
}

#endif
