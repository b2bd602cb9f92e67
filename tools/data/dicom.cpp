#include "tools/data/dicom.h"

#include <fstream>
#include <string>

#include "tensor/error.h"

#ifdef SONO_HAVE_DCMTK
#include <dcmtk/config/osconfig.h>  // first, as DCMTK requires
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmimage/diregist.h>  // colour images (RGB, YBR) for DicomImage
#include <dcmtk/dcmimgle/dcmimage.h>
#include <dcmtk/dcmjpeg/djdecode.h>

#include <algorithm>
#include <list>
#include <mutex>
#endif

namespace sono::data {

namespace fs = std::filesystem;

bool is_dicom(std::string_view file_start) { return file_start.size() >= 132 && file_start.substr(128, 4) == "DICM"; }

bool is_dicom_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::string start(132, '\0');
  in.read(start.data(), static_cast<std::streamsize>(start.size()));
  return in.gcount() == 132 && is_dicom(start);
}

#ifndef SONO_HAVE_DCMTK

bool dicom_supported() { return false; }

namespace {
[[noreturn]] void no_dicom(const fs::path& file) {
  fail("'", file.string(), "' is a DICOM file, and this build reads none: DCMTK was not found when it was "
       "configured (install libdcmtk-dev, tools/scripts/install_deps.sh, and reconfigure)");
}
}  // namespace

Image load_dicom(const fs::path& file, int) { no_dicom(file); }
ImageSize read_dicom_size(const fs::path& file) { no_dicom(file); }
int read_dicom_frames(const fs::path& file) { no_dicom(file); }
std::optional<PixelSpacing> read_pixel_spacing(const fs::path& file) { no_dicom(file); }
DicomFrame load_dicom_frame(const fs::path& file, int) { no_dicom(file); }

struct DicomFrameReader::Files {};
DicomFrameReader::DicomFrameReader(size_t, int64_t) {}
DicomFrameReader::~DicomFrameReader() = default;
DicomFrame DicomFrameReader::frame(const fs::path& file, int) { no_dicom(file); }

#else

bool dicom_supported() { return true; }

namespace {

void register_codecs() {
  static std::once_flag once;
  std::call_once(once, [] {
    DJDecoderRegistration::registerCodecs();
    DcmRLEDecoderRegistration::registerCodecs();
  });
}

bool supported(E_TransferSyntax xfer) {
  switch (xfer) {
    case EXS_LittleEndianImplicit:
    case EXS_LittleEndianExplicit:
    case EXS_BigEndianExplicit:
    case EXS_JPEGProcess1:
    case EXS_JPEGProcess2_4:
    case EXS_JPEGProcess14:
    case EXS_JPEGProcess14SV1:
    case EXS_RLELossless:
      return true;
    default:
      return false;
  }
}

void check_supported(E_TransferSyntax xfer, const fs::path& file) {
  if (supported(xfer)) return;
  DcmXfer named(xfer);
  fail("DICOM file '", file.string(), "': transfer syntax ", named.getXferName(), " (", named.getXferID(),
       ") is not supported; supported: uncompressed, RLE, JPEG baseline, extended and lossless");
}

// The transfer syntax the meta header declares, read before the dataset: a deflated dataset
// is inflated as DCMTK parses it, so its elements' lengths cannot be checked against the file,
// and DCMTK allocates what they say (a 4 KB file asked for 2.6 GB: tests/fuzz/findings/dicom).
E_TransferSyntax declared_xfer(const fs::path& file) {
  DcmFileFormat meta;
  OFCondition status = meta.loadFile(file.c_str(), EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_metaOnly);
  if (status.bad()) fail("cannot read DICOM file '", file.string(), "': ", status.text());
  OFString uid;
  meta.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, uid);
  return DcmXfer(uid.c_str()).getXfer();
}

// The file's dataset, its transfer syntax checked before and after it is read.
void load(DcmFileFormat& dicom, const fs::path& file) {
  register_codecs();
  check_supported(declared_xfer(file), file);
  OFCondition status = dicom.loadFile(file.c_str());
  if (status.bad()) fail("cannot read DICOM file '", file.string(), "': ", status.text());
  check_supported(dicom.getDataset()->getOriginalXfer(), file);
}

bool is_jpeg(E_TransferSyntax xfer) {
  return xfer == EXS_JPEGProcess1 || xfer == EXS_JPEGProcess2_4 || xfer == EXS_JPEGProcess14 ||
         xfer == EXS_JPEGProcess14SV1;
}

// Whether DCMTK's JPEG decoder (3.6.7) would never return from a fragment: it finds a frame's
// bit depth by walking the fragment's markers up to the first start-of-frame, and a TEM marker
// (FF 01) does not move it on (tests/fuzz/findings/dicom/jpeg_tem_marker_hang.dcm). The same
// walk, here bounded: FF fill bytes, markers without a length (RSTn, SOI, EOI, and the
// reserved 03-BF) and those with one, until a start-of-frame or anything else, which stops it.
bool stalls_jpeg_walk(const Uint8* data, size_t length) {
  const auto is_sof = [](Uint8 code) { return code >= 0xc0 && code <= 0xcf && code != 0xc4 && code != 0xc8 && code != 0xcc; };
  for (size_t at = 0; at + 4 < length;) {
    const Uint8 code = data[at + 1];
    if (data[at] != 0xff || is_sof(code)) return false;
    if (code == 0x01) return true;
    if (code == 0xff) at += 1;
    else if ((code >= 0xd0 && code <= 0xd9) || (code > 0x02 && code <= 0xbf)) at += 2;
    else if (code == 0xc4 || code == 0xc8 || code == 0xcc || code >= 0xda) at += 2 + (data[at + 2] << 8 | data[at + 3]);
    else return false;
  }
  return false;
}

void check_jpeg_fragments(DcmDataset& dataset, const fs::path& file) {
  DcmElement* element = nullptr;
  dataset.findAndGetElement(DCM_PixelData, element);
  auto* pixels = dynamic_cast<DcmPixelData*>(element);  // another class where the file's VR is odd
  DcmPixelSequence* fragments = nullptr;
  if (!pixels || pixels->getEncapsulatedRepresentation(dataset.getOriginalXfer(), nullptr, fragments).bad() || !fragments)
    return;  // DCMTK's decoder reports what is missing
  for (unsigned long i = 1; i < fragments->card(); ++i) {  // item 0: the offset table
    DcmPixelItem* item = nullptr;
    Uint8* data = nullptr;
    if (fragments->getItem(item, i).good() && item->getUint8Array(data).good() && data &&
        stalls_jpeg_walk(data, item->getLength()))
      fail("DICOM file '", file.string(), "': corrupt JPEG data (a TEM marker where DCMTK's decoder looks for the frame header)");
  }
}

// Number of Frames, trusted only as far as the file could hold that many (a byte each at least):
// --frame all makes a scan of each, and 17 bytes must not ask for two billion.
int frames_of(DcmDataset& dataset, const fs::path& file) {
  Sint32 frames = 0;
  if (dataset.findAndGetSint32(DCM_NumberOfFrames, frames).bad()) return 1;  // absent: one frame
  if (frames < 1) fail("DICOM file '", file.string(), "': Number of Frames is ", frames);
  if (const uintmax_t size = fs::file_size(file); static_cast<uintmax_t>(frames) > size)
    fail("DICOM file '", file.string(), "': Number of Frames is ", frames, ", more than its ", size, " bytes can hold");
  return frames;
}

// What DCMTK is trusted to decode: JPEG fragments its decoder does not hang on, and frames
// within the file and within the pixel limit (what it allocates, whatever the file holds).
// Returns the number of frames.
int check_decodable(DcmDataset& dataset, const fs::path& file) {
  if (is_jpeg(dataset.getOriginalXfer())) check_jpeg_fragments(dataset, file);
  const int frames = frames_of(dataset, file);
  Uint16 rows = 0, columns = 0;
  dataset.findAndGetUint16(DCM_Rows, rows);
  dataset.findAndGetUint16(DCM_Columns, columns);
  if (int64_t{rows} * columns > kMaxImagePixels)
    fail("DICOM file '", file.string(), "' is ", columns, "x", rows, ", more than the limit of ", kMaxImagePixels, " pixels");
  return frames;
}

void check_frame(const fs::path& file, int frame, int frames) {
  if (frame < 0 || frame >= frames)
    fail("DICOM file '", file.string(), "': frame ", frame, " asked for, it has ", frames, " (0 to ", frames - 1, ")");
}

// Frames [first, first + count) of a loaded, checked file, for DicomImage to render (with
// `flags`). Not with DCMTK's partial access (CIF_UsePartialAccessToPixelData, one frame read
// instead of the whole pixel data): its RLE frame decoder (3.6.7) crashes on a damaged fragment
// that the whole-data path refuses (found by fuzz_dicom).
std::unique_ptr<DicomImage> frames_image(DcmFileFormat& dicom, const fs::path& file, int first, int count,
                                         unsigned long flags) {
  auto image = std::make_unique<DicomImage>(&dicom, dicom.getDataset()->getCurrentXfer(), flags,
                                            static_cast<unsigned long>(first), static_cast<unsigned long>(count));
  if (image->getStatus() != EIS_Normal)
    fail("DICOM file '", file.string(), "': cannot render its pixels: ", DicomImage::getString(image->getStatus()));
  return image;
}

// Frame `frame` of those `image` holds (0: its first).
Image rendered_frame(DicomImage& image, const fs::path& file, int frame) {
  const bool sixteen_bit = image.getDepth() > 8;
  const int channels = image.isMonochrome() ? 1 : 3;
  const void* pixels = image.getOutputData(sixteen_bit ? 16 : 8, static_cast<unsigned long>(frame), 0);  // interleaved
  if (!pixels) fail("DICOM file '", file.string(), "': cannot render its pixels");
  const int width = static_cast<int>(image.getWidth()), height = static_cast<int>(image.getHeight());
  return image_from_pixels({pixels, height, width, channels, sixteen_bit,
                            size_t(width) * channels * (sixteen_bit ? 2 : 1)});
}

std::optional<PixelSpacing> spacing_of(DcmDataset& dataset) {
  Float64 row = 0, column = 0;
  if (dataset.findAndGetFloat64(DCM_PixelSpacing, row, 0).good() &&
      dataset.findAndGetFloat64(DCM_PixelSpacing, column, 1).good() && row > 0 && column > 0)
    return PixelSpacing{row, column};
  DcmItem* region = nullptr;
  Uint16 x_units = 0, y_units = 0;
  constexpr Uint16 kCentimetres = 3;  // PS3.3 C.8.5.5.1.1: physical units code
  if (dataset.findAndGetSequenceItem(DCM_SequenceOfUltrasoundRegions, region, 0).good() &&
      region->findAndGetUint16(DCM_PhysicalUnitsXDirection, x_units).good() &&
      region->findAndGetUint16(DCM_PhysicalUnitsYDirection, y_units).good() && x_units == kCentimetres &&
      y_units == kCentimetres && region->findAndGetFloat64(DCM_PhysicalDeltaX, column).good() &&
      region->findAndGetFloat64(DCM_PhysicalDeltaY, row).good() && row > 0 && column > 0)
    return PixelSpacing{10 * row, 10 * column};
  return std::nullopt;
}

}  // namespace

Image load_dicom(const fs::path& file, int frame) { return load_dicom_frame(file, frame).image; }

ImageSize read_dicom_size(const fs::path& file) {
  DcmFileFormat dicom;
  load(dicom, file);
  Uint16 rows = 0, columns = 0;
  dicom.getDataset()->findAndGetUint16(DCM_Rows, rows);
  dicom.getDataset()->findAndGetUint16(DCM_Columns, columns);
  if (!rows || !columns) fail("DICOM file '", file.string(), "': no Rows or Columns: not an image");
  return {rows, columns};
}

int read_dicom_frames(const fs::path& file) {
  DcmFileFormat dicom;
  load(dicom, file);
  return frames_of(*dicom.getDataset(), file);
}

std::optional<PixelSpacing> read_pixel_spacing(const fs::path& file) {
  DcmFileFormat dicom;
  load(dicom, file);
  return spacing_of(*dicom.getDataset());
}

DicomFrame load_dicom_frame(const fs::path& file, int frame) {
  DcmFileFormat dicom;
  load(dicom, file);
  check_frame(file, frame, check_decodable(*dicom.getDataset(), file));
  const std::unique_ptr<DicomImage> image = frames_image(dicom, file, frame, 1, CIF_MayDetachPixelData);
  return {rendered_frame(*image, file, 0), spacing_of(*dicom.getDataset())};
}

// One file of a DicomFrameReader: read, its pixel data decoded, on first use by whichever
// thread asks first; a file that cannot be read gives its error to every frame asked of it.
// DicomImage walks the whole pixel data each time it is made, so frames are rendered a run at
// a time (`run` frames from the one asked for, within the reader's run_bytes of samples): made
// per frame, it made reading every frame quadratic in their number.
struct LoadedDicom {
  std::mutex mutex;  // DCMTK renders one frame of a dataset at a time
  bool read = false;
  std::string error;
  DcmFileFormat dicom;
  int frames = 0, run = 1;
  std::optional<PixelSpacing> spacing;
  std::unique_ptr<DicomImage> image;  // frames [image_first, image_first + its frame count)
  int image_first = 0;

  void read_once(const fs::path& file, int64_t run_bytes) {
    read = true;
    try {
      load(dicom, file);
      DcmDataset& dataset = *dicom.getDataset();
      frames = check_decodable(dataset, file);
      const OFCondition decoded = dataset.chooseRepresentation(EXS_LittleEndianExplicit, nullptr);
      if (decoded.bad()) fail("DICOM file '", file.string(), "': cannot decode its pixel data: ", decoded.text());
      Uint16 rows = 0, columns = 0, samples = 1, bits = 8;
      dataset.findAndGetUint16(DCM_Rows, rows);
      dataset.findAndGetUint16(DCM_Columns, columns);
      dataset.findAndGetUint16(DCM_SamplesPerPixel, samples);
      dataset.findAndGetUint16(DCM_BitsAllocated, bits);
      const int64_t frame_bytes = int64_t{rows} * columns * std::max<Uint16>(samples, 1) * (bits > 8 ? 2 : 1);
      run = static_cast<int>(std::clamp<int64_t>(run_bytes / std::max<int64_t>(frame_bytes, 1), 1, frames));
      spacing = spacing_of(dataset);
    } catch (const Error& e) {
      error = e.what();
    }
  }

  DicomFrame frame(const fs::path& file, int frame, int64_t run_bytes) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!read) read_once(file, run_bytes);
    if (!error.empty()) fail(error);
    check_frame(file, frame, frames);
    if (!image || frame < image_first || frame >= image_first + static_cast<int>(image->getFrameCount())) {
      image.reset();
      image = frames_image(dicom, file, frame, std::min(run, frames - frame), 0);
      image_first = frame;
    }
    return {rendered_frame(*image, file, frame - image_first), spacing};
  }
};

// The files last asked for, most recent first.
struct DicomFrameReader::Files {
  size_t capacity;
  int64_t run_bytes;
  std::mutex mutex;
  std::list<std::pair<fs::path, std::shared_ptr<LoadedDicom>>> recent;

  std::shared_ptr<LoadedDicom> get(const fs::path& file) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = std::find_if(recent.begin(), recent.end(), [&](const auto& entry) { return entry.first == file; });
    if (it != recent.end()) {
      recent.splice(recent.begin(), recent, it);
    } else {
      recent.emplace_front(file, std::make_shared<LoadedDicom>());
      if (recent.size() > capacity) recent.pop_back();  // a thread still rendering from it keeps it alive
    }
    return recent.front().second;
  }
};

DicomFrameReader::DicomFrameReader(size_t files, int64_t run_bytes) : files_(std::make_unique<Files>()) {
  files_->capacity = std::max<size_t>(files, 1);
  files_->run_bytes = run_bytes;
}
DicomFrameReader::~DicomFrameReader() = default;

DicomFrame DicomFrameReader::frame(const fs::path& file, int frame) {
  return files_->get(file)->frame(file, frame, files_->run_bytes);
}

#endif

}  // namespace sono::data
