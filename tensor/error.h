#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace sono {

// Every user-facing failure is a sono::Error with a message that says what was wrong.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... R>
void append(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

template <typename... A>
[[noreturn]] void fail(const A&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(os.str());
}

}  // namespace sono

#define SONO_CHECK(cond, ...)                   \
  do {                                          \
    if (!(cond)) ::sono::fail(__VA_ARGS__);     \
  } while (0)
