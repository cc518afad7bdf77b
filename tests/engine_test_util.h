// The serving engine in MPI tests: rank 0 drives it, the other ranks serve.
#pragma once

#include <functional>

#include "comm/world.h"
#include "serving/engine.h"

namespace meshrt::testing {

// Runs body on rank 0 with the engine, while the other ranks serve; then stops
// them (also when body throws).
inline void with_engine(serving::Engine& engine, const std::function<void()>& body) {
  if (World::get().rank() == 0) {
    try {
      body();
    } catch (...) {
      engine.stop();
      throw;
    }
    engine.stop();
  } else {
    engine.serve();
  }
}

}  // namespace meshrt::testing
