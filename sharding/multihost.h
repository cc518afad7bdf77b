// Multi-process arrays, JAX's way (jax.experimental.multihost_utils). In
// meshrt every rank is a process with one device, so a process's host-local
// array is its own block of the global value.
//
//   host_local_array_to_global_array: each rank passes its part (a batch it
//     read itself, say); the result is the DTensor whose block on each rank is
//     that part, with the global shape the parts add up to. Collective. The
//     parts must be the blocks torch.chunk's rule gives (layout.h): ranks that
//     hold the same block (replicas along the axes the layout does not use)
//     pass the same value, which check_replicas() can verify.
//   global_array_to_host_local_array: the inverse, this rank's block on the
//     host (waits for it).
//
// Passing a host-local part where a global value is expected
// (DTensor::from_global) is caught when the part has fewer elements along a
// sharded dimension than there are blocks, and the error names the conversion
// (JAX's "global size of its dimension 0 should be divisible by 8, but it is
// equal to 4").
#pragma once

#include <string>

#include "sharding/dtensor.h"

namespace meshrt::sharding {

DTensor host_local_array_to_global_array(const HostTensor& local, const Mesh& mesh, const Layout& layout,
                                         const std::string& name);
// The shorter name the error messages use.
inline DTensor host_local_to_global(const HostTensor& local, const Mesh& mesh, const Layout& layout,
                                    const std::string& name) {
  return host_local_array_to_global_array(local, mesh, layout, name);
}

// This rank's block of t on the host. A pending reduction has no host-local
// value: Error(kInvalidArgument) saying to redistribute first.
HostTensor global_array_to_host_local_array(const DTensor& t);

// Collective over t's mesh: every group of replicas (ranks holding the same
// block: they differ only along mesh axes the layout neither shards with nor
// has pending) must hold the same bytes. Throws Error(kShape) on every rank
// naming the ranks that disagree, the axes, and t. Waits for t.
void check_replicas(const DTensor& t);

}  // namespace meshrt::sharding
