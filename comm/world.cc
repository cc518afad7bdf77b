#include "comm/world.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "comm/mpi_check.h"
#include "device/error.h"

namespace meshrt {

namespace {
std::once_flag g_init_once;
World* g_world = nullptr;
std::atomic<bool> g_stuck{false};
std::atomic<bool> g_finalized{false};
}  // namespace

World& World::init(int* argc, char*** argv) {
  std::call_once(g_init_once, [&] {
    auto* world = new World();  // lives to exit
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      MESHRT_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &world->thread_level_));
      std::atexit(&World::finalize);
    } else {
      MPI_Query_thread(&world->thread_level_);
    }
    MESHRT_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MESHRT_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world->rank_));
    MESHRT_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world->size_));

    char host[256] = {};
    gethostname(host, sizeof host - 1);
    world->host_name_ = host;
    set_error_context(world->rank_, world->host_name_);

    MPI_Comm local = MPI_COMM_NULL;
    MESHRT_MPI_CHECK(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world->rank_, MPI_INFO_NULL, &local));
    MESHRT_MPI_CHECK(MPI_Comm_rank(local, &world->local_rank_));
    MESHRT_MPI_CHECK(MPI_Comm_size(local, &world->local_size_));
    // Node leaders (local rank 0) number the nodes in order of their world rank.
    MPI_Comm leaders = MPI_COMM_NULL;
    MESHRT_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, world->local_rank_ == 0 ? 0 : MPI_UNDEFINED,
                                    world->rank_, &leaders));
    int index_and_count[2] = {0, 1};
    if (leaders != MPI_COMM_NULL) {
      MESHRT_MPI_CHECK(MPI_Comm_rank(leaders, &index_and_count[0]));
      MESHRT_MPI_CHECK(MPI_Comm_size(leaders, &index_and_count[1]));
      MPI_Comm_free(&leaders);
    }
    MESHRT_MPI_CHECK(MPI_Bcast(index_and_count, 2, MPI_INT, 0, local));
    world->node_index_ = index_and_count[0];
    world->node_count_ = index_and_count[1];
    MPI_Comm_free(&local);
    g_world = world;
  });
  return *g_world;
}

const char* World::thread_level() const {
  switch (thread_level_) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
  }
  return "unknown";
}

Device choose_device(std::string_view requested, int local_rank, int local_size, int gpus,
                     std::string_view unavailable) {
  if (!requested.empty()) {
    Device d = Device::parse(requested);
    if (d.is_cpu()) return d;
    MESHRT_CHECK_ARG(gpus > 0, "device ", requested, " was asked for but there is no GPU: ", unavailable,
                     " (choose the cpu device: --device cpu or MESHRT_DEVICE=cpu)");
    bool any_index = requested == "cuda" || requested == "gpu";
    if (!any_index) {
      MESHRT_CHECK_ARG(d.index() < gpus, "device ", d, " was asked for but this node has ", gpus, " GPU(s)");
      return d;
    }
  } else if (gpus == 0) {
    return Device::cpu();
  }
  MESHRT_CHECK_ARG(local_size <= gpus, local_size, " ranks run on this node but it has ", gpus,
                   " GPU(s): each rank needs a GPU of its own (NCCL refuses two ranks on one GPU). "
                   "Start at most ", gpus, " rank(s) per node, or choose the cpu device (--device cpu or "
                   "MESHRT_DEVICE=cpu)");
  return Device::cuda(local_rank);
}

Device World::default_device() const { return device(""); }

Device World::device(std::string_view requested) const {
  if (requested.empty()) {
    const char* forced = std::getenv("MESHRT_DEVICE");
    if (forced) requested = forced;
  }
  return choose_device(requested, local_rank_, local_size_, cuda_device_count(), cuda_unavailable_reason());
}

void World::mark_stuck_operation() { g_stuck.store(true); }

void World::finalize() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized || g_finalized.exchange(true)) return;
  if (g_stuck.load()) {
    std::fprintf(stderr,
                 "meshrt: rank %d: a communicator was aborted with an operation still inside "
                 "MPI; aborting the job instead of finalising\n",
                 g_world ? g_world->rank_ : -1);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
}

void World::abort(int exit_code, const std::string& reason) {
  std::fprintf(stderr, "meshrt: rank %d (%s): aborting the job: %s\n",
               g_world ? g_world->rank_ : -1, g_world ? g_world->host_name_.c_str() : "?",
               reason.c_str());
  std::fflush(stderr);
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace meshrt
