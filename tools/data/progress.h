#pragma once
// Progress of one phase (an epoch's training or validation): on a terminal a bar redrawn in
// place with the running loss, images/s and ETA; otherwise (logs, CI) plain lines at each
// quarter, so a log file stays short.
#include <chrono>
#include <iostream>
#include <string>

namespace sono::data {

bool stdout_is_terminal();
bool stderr_is_terminal();  // where the tools that print results on stdout draw their progress

class Progress {
 public:
  Progress(std::string title, size_t total_images, std::ostream& out = std::cout,
           bool interactive = stdout_is_terminal());

  // `images` more done, with their mean loss (NaN when there is none to show).
  void step(size_t images, double loss);
  // Ends the phase with a last line: title, images, mean loss, images/s, elapsed, `extra`.
  void finish(const std::string& extra = "");

  double mean_loss() const;
  double images_per_second() const;
  double elapsed_seconds() const;

 private:
  std::string status() const;
  void draw_bar();

  std::string title_;
  size_t total_, done_ = 0, loss_images_ = 0;
  double loss_sum_ = 0;
  std::ostream& out_;
  bool interactive_;
  int quarters_shown_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "1:02:03" or "02:03".
std::string format_duration(double seconds);

}  // namespace sono::data
