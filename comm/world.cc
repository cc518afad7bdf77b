#include "comm/world.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/mpi_check.h"
#include "comm/progress.h"
#include "device/error.h"

namespace meshrt {

namespace {
std::once_flag g_init_once;
World* g_world = nullptr;
std::atomic<int> g_blocking_calls{0};
std::atomic<bool> g_finalized{false};
std::atomic<long long> g_finalize_timeout_ms{-1};
MPI_Comm g_control = MPI_COMM_NULL;
constexpr int kCheckInTag = 1;  // on the control communicator: rank -> 0 at exit
constexpr int kReleaseTag = 2;  // 0 -> rank: everyone checked in
}  // namespace

namespace detail {
MPI_Comm control_comm() { return g_control; }

namespace {
std::mutex g_flags_mutex;
std::vector<std::shared_ptr<const std::atomic<bool>>>& watched_flags() {
  static auto* flags = new std::vector<std::shared_ptr<const std::atomic<bool>>>();  // lives to exit
  return *flags;
}
}  // namespace

void watch_blocking_flag(std::shared_ptr<const std::atomic<bool>> flag) {
  std::lock_guard<std::mutex> lock(g_flags_mutex);
  watched_flags().push_back(std::move(flag));
}

void unwatch_blocking_flag(const std::atomic<bool>* flag) {
  std::lock_guard<std::mutex> lock(g_flags_mutex);
  auto& flags = watched_flags();
  for (size_t i = 0; i < flags.size(); ++i) {
    if (flags[i].get() != flag) continue;
    flags[i] = std::move(flags.back());
    flags.pop_back();
    return;
  }
}
}  // namespace detail

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
    // Every rank's host name, for messages naming other ranks.
    constexpr int kHostBytes = 256;
    std::vector<char> hosts(static_cast<size_t>(world->size_) * kHostBytes);
    MESHRT_MPI_CHECK(MPI_Allgather(host, kHostBytes, MPI_CHAR, hosts.data(), kHostBytes, MPI_CHAR, MPI_COMM_WORLD));
    for (int r = 0; r < world->size_; ++r) world->hosts_.emplace_back(hosts.data() + static_cast<size_t>(r) * kHostBytes);
    MESHRT_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &g_control));
    MESHRT_MPI_CHECK(MPI_Comm_set_errhandler(g_control, MPI_ERRORS_RETURN));
    g_world = world;
    finalize_timeout();  // a bad MESHRT_FINALIZE_TIMEOUT_MS is reported at start, not at exit
    detail::start_progress_service();
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

const std::string& World::host_of(int world_rank) const {
  static const std::string unknown = "?";
  return world_rank >= 0 && world_rank < static_cast<int>(hosts_.size()) ? hosts_[static_cast<size_t>(world_rank)]
                                                                          : unknown;
}

std::string World::describe_rank(int world_rank) const {
  return detail::cat("world rank ", world_rank, " (host ", host_of(world_rank), ")");
}

std::vector<int> World::unanswering(const std::vector<int>& ranks, std::chrono::milliseconds within) const {
  detail::Progress asked;
  asked.key = "-";  // no communicator: any answer will do
  asked.world_ranks = ranks;
  std::vector<int> out;
  for (const detail::PeerProgress& p : detail::query_peers(asked, within)) {
    if (!p.answered) out.push_back(p.world_rank);
  }
  return out;
}

void World::enter_blocking_call() { g_blocking_calls.fetch_add(1); }
void World::leave_blocking_call() { g_blocking_calls.fetch_sub(1); }
int World::blocking_calls() {
  int calls = g_blocking_calls.load();
  std::lock_guard<std::mutex> lock(detail::g_flags_mutex);
  for (const auto& flag : detail::watched_flags()) calls += flag->load() ? 1 : 0;
  return calls;
}
void World::mark_stuck_operation() { enter_blocking_call(); }

std::chrono::milliseconds World::finalize_timeout() {
  long long ms = g_finalize_timeout_ms.load();
  if (ms < 0) {
    ms = 10000;
    if (const char* text = std::getenv("MESHRT_FINALIZE_TIMEOUT_MS")) {
      char* end = nullptr;
      long long parsed = std::strtoll(text, &end, 10);
      if (end != text && *end == '\0' && parsed > 0) {
        ms = parsed;
      } else {
        static std::once_flag warned;  // called at exit too: a warning, not an exception
        std::call_once(warned, [&] {
          std::fprintf(stderr, "meshrt: MESHRT_FINALIZE_TIMEOUT_MS='%s' is not a positive number of milliseconds; "
                       "using %lld\n", text, ms);
        });
      }
    }
  }
  return std::chrono::milliseconds(ms);
}

void World::set_finalize_timeout(std::chrono::milliseconds timeout) {
  MESHRT_CHECK_ARG(timeout.count() > 0, "the finalize timeout must be positive, got ", timeout.count(), " ms");
  g_finalize_timeout_ms.store(timeout.count());
}

namespace {

// The exit check-in: every rank tells rank 0 it is leaving, rank 0 answers each
// once all did. Returns "" when everyone checked in, else why not (naming ranks).
std::string check_in_for_exit(const World& world, std::chrono::milliseconds timeout) {
  int rank = world.rank(), size = world.size();
  if (size == 1) return "";
  char byte = 1;
  auto start = std::chrono::steady_clock::now();
  if (rank == 0) {
    std::vector<char> in(static_cast<size_t>(size));
    std::vector<MPI_Request> requests(static_cast<size_t>(size - 1), MPI_REQUEST_NULL);
    for (int r = 1; r < size; ++r) {
      MPI_Irecv(&in[static_cast<size_t>(r)], 1, MPI_CHAR, r, kCheckInTag, g_control, &requests[static_cast<size_t>(r - 1)]);
    }
    std::vector<bool> done = detail::test_until(requests, start + timeout);
    std::string missing;
    for (int r = 1; r < size; ++r) {
      if (done[static_cast<size_t>(r - 1)]) continue;
      missing += detail::cat(missing.empty() ? "" : ", ", world.describe_rank(r));
    }
    if (!missing.empty()) {
      return detail::cat(missing, " did not check in for the exit within ", timeout.count(),
                         " ms (stopped, stuck in its work, or lost)");
    }
    std::vector<MPI_Request> releases(static_cast<size_t>(size - 1), MPI_REQUEST_NULL);
    for (int r = 1; r < size; ++r) MPI_Isend(&byte, 1, MPI_CHAR, r, kReleaseTag, g_control, &releases[static_cast<size_t>(r - 1)]);
    detail::test_until(releases, std::chrono::steady_clock::now() + timeout);
    return "";
  }
  std::vector<MPI_Request> requests(2, MPI_REQUEST_NULL);
  char release = 0;
  MPI_Isend(&byte, 1, MPI_CHAR, 0, kCheckInTag, g_control, &requests[0]);
  MPI_Irecv(&release, 1, MPI_CHAR, 0, kReleaseTag, g_control, &requests[1]);
  // Rank 0 names the missing ranks at its deadline; wait a little longer, so
  // that this rank only speaks when rank 0 itself is the one missing.
  std::vector<bool> done = detail::test_until(requests, start + timeout + std::chrono::seconds(2));
  if (done[1]) return "";
  return detail::cat(world.describe_rank(0), " did not confirm the exit within ", timeout.count() + 2000,
                     " ms (stopped, stuck in its work, or lost)");
}

}  // namespace

void World::finalize() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized || g_finalized.exchange(true)) return;
  int rank = g_world ? g_world->rank_ : -1;
  std::string problem;
  if (g_world && g_control != MPI_COMM_NULL) problem = check_in_for_exit(*g_world, finalize_timeout());
  int blocking = blocking_calls();
  if (problem.empty() && blocking > 0) {
    problem = detail::cat(blocking, " operation(s) of this rank are stuck inside a blocking MPI call "
                          "(a collective abandoned after its deadline), so MPI_Finalize would hang");
  }
  if (!problem.empty()) {
    std::fprintf(stderr, "meshrt: rank %d (%s): aborting the job instead of finalising: %s\n", rank,
                 g_world ? g_world->host_name_.c_str() : "?", problem.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);
  }
  detail::stop_progress_service();
  if (g_control != MPI_COMM_NULL) MPI_Comm_free(&g_control);
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
