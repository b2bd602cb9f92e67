#include "tools/data/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iomanip>
#include <sstream>

namespace sono::data {

bool stdout_is_terminal() { return ::isatty(::fileno(stdout)) != 0; }
bool stderr_is_terminal() { return ::isatty(::fileno(stderr)) != 0; }

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  long s = std::lround(seconds);
  char buffer[32];
  if (s >= 3600) std::snprintf(buffer, sizeof buffer, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else std::snprintf(buffer, sizeof buffer, "%02ld:%02ld", s / 60, s % 60);
  return buffer;
}

Progress::Progress(std::string title, size_t total_images, std::ostream& out, bool interactive)
    : title_(std::move(title)), total_(total_images), out_(out), interactive_(interactive),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

double Progress::images_per_second() const {
  double t = elapsed_seconds();
  return t > 0 ? done_ / t : 0.0;
}

double Progress::mean_loss() const { return loss_images_ ? loss_sum_ / loss_images_ : std::nan(""); }

std::string Progress::status() const {
  std::ostringstream os;
  os << title_ << " " << done_ << "/" << total_;
  if (loss_images_) os << std::fixed << std::setprecision(4) << " loss " << mean_loss();
  double rate = images_per_second();
  os << std::fixed << std::setprecision(1) << " " << rate << " img/s";
  if (done_ < total_) os << " ETA " << format_duration(rate > 0 ? (total_ - done_) / rate : NAN);
  return os.str();
}

void Progress::draw_bar() {
  constexpr int width = 30;
  int filled = total_ ? static_cast<int>(width * done_ / total_) : width;
  out_ << "\r[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << status() << "\x1b[K"
       << std::flush;
}

void Progress::step(size_t images, double loss) {
  done_ += images;
  if (!std::isnan(loss)) loss_sum_ += loss * images, loss_images_ += images;
  if (interactive_) {
    auto now = std::chrono::steady_clock::now();
    if (now - last_draw_ > std::chrono::milliseconds(100) || done_ >= total_) draw_bar(), last_draw_ = now;
    return;
  }
  int quarters = total_ ? static_cast<int>(4 * done_ / total_) : 4;
  if (quarters > quarters_shown_ && done_ < total_) out_ << status() << "\n" << std::flush;
  quarters_shown_ = std::max(quarters_shown_, quarters);
}

void Progress::finish(const std::string& extra) {
  if (interactive_) out_ << "\r\x1b[K";
  out_ << status() << " in " << format_duration(elapsed_seconds()) << (extra.empty() ? "" : " ") << extra << "\n"
       << std::flush;
}

}  // namespace sono::data
