// Internal to serving/: signals turned into bytes on a pipe (the self-pipe
// trick), so a thread can wait for them with read() or poll(). One per process:
// the server's drain signals, or the supervisor's stop signals.
#pragma once

#include <initializer_list>

namespace meshrt::serving {

// Creates the pipe (once) and routes `signals` to it: each delivery writes the
// signal number as one byte (async-signal-safe; dropped when nobody reads).
// Throws Error(kUnavailable) if the pipe cannot be created.
void route_signals_to_pipe(std::initializer_list<int> signals);
// The reading end, or -1 before route_signals_to_pipe.
int signal_pipe_fd();

}  // namespace meshrt::serving
