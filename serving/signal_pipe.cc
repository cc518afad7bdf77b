#include "serving/signal_pipe.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include "device/error.h"

namespace meshrt::serving {

namespace {
int g_pipe[2] = {-1, -1};

void on_signal(int signal) {
  int saved = errno;
  unsigned char byte = static_cast<unsigned char>(signal);
  if (g_pipe[1] >= 0) {
    ssize_t ignored = ::write(g_pipe[1], &byte, 1);  // never blocks: the end is non-blocking
    (void)ignored;
  }
  errno = saved;
}
}  // namespace

void route_signals_to_pipe(std::initializer_list<int> signals) {
  if (g_pipe[0] < 0) {
    if (::pipe2(g_pipe, O_CLOEXEC) != 0) throw Error(ErrorKind::kUnavailable, "cannot create the signal pipe");
    ::fcntl(g_pipe[1], F_SETFL, ::fcntl(g_pipe[1], F_GETFL) | O_NONBLOCK);
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int s : signals) sigaction(s, &action, nullptr);
}

int signal_pipe_fd() { return g_pipe[0]; }

}  // namespace meshrt::serving
