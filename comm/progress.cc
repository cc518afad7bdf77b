#include "comm/progress.h"

#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "comm/world.h"
#include "device/error.h"
#include "device/poll.h"

namespace meshrt::detail {

namespace {

constexpr int kQueryTag = 10;        // asker -> peer: "<answer tag> <key>"
constexpr int kFirstAnswerTag = 100;  // peer -> asker, one tag per query
constexpr int kAnswerTags = 1 << 20;

std::mutex g_mutex;
std::map<std::string, std::weak_ptr<Progress>> g_published;
std::atomic<bool> g_stop{false};
std::thread g_service;
std::atomic<int> g_next_answer_tag{0};

std::string answer_for(const std::string& key) {
  std::shared_ptr<Progress> p;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_published.find(key);
    if (it != g_published.end()) p = it->second.lock();
  }
  if (!p) return "unknown";
  return cat(p->started.load(), " ", p->completed.load(), " ", p->aborted.load() ? 1 : 0);
}

// Answers queries until stopped. Polls (a blocking receive would spin inside
// MPI and take a core): a query is answered within a few milliseconds.
void serve() {
  MPI_Comm comm = control_comm();
  while (!g_stop.load()) {
    int flag = 0;
    MPI_Status status{};
    if (MPI_Iprobe(MPI_ANY_SOURCE, kQueryTag, comm, &flag, &status) != MPI_SUCCESS) return;
    if (!flag) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    int length = 0;
    MPI_Get_count(&status, MPI_CHAR, &length);
    std::string query(static_cast<size_t>(length), '\0');
    MPI_Recv(query.data(), length, MPI_CHAR, status.MPI_SOURCE, kQueryTag, comm, MPI_STATUS_IGNORE);
    std::istringstream in(query);
    int tag = 0;
    std::string key;
    in >> tag >> key;
    std::string answer = answer_for(key);
    MPI_Request request = MPI_REQUEST_NULL;
    // Small: sent eagerly; the request is freed, the asker may have given up.
    MPI_Isend(answer.data(), static_cast<int>(answer.size()), MPI_CHAR, status.MPI_SOURCE, tag, comm, &request);
    MPI_Request_free(&request);
  }
}

}  // namespace

std::shared_ptr<Progress> publish_progress(std::string key, std::string name, std::vector<int> world_ranks) {
  auto p = std::make_shared<Progress>();
  p->key = std::move(key);
  p->name = std::move(name);
  p->world_ranks = std::move(world_ranks);
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto it = g_published.begin(); it != g_published.end();) {
    it = it->second.expired() ? g_published.erase(it) : std::next(it);
  }
  g_published[p->key] = p;
  return p;
}

std::vector<bool> test_until(std::vector<MPI_Request>& requests, std::chrono::steady_clock::time_point deadline,
                             std::vector<MPI_Status>* statuses) {
  std::vector<bool> done(requests.size(), false);
  if (statuses) statuses->assign(requests.size(), MPI_Status{});
  PollPause pause(std::chrono::milliseconds(1));
  for (;;) {
    bool all = true;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (done[i]) continue;
      int flag = 0;
      MPI_Status status{};
      status.MPI_ERROR = MPI_SUCCESS;
      if (MPI_Test(&requests[i], &flag, &status) != MPI_SUCCESS) {
        flag = 1;  // a failed peer: stop waiting on it
        status.MPI_ERROR = MPI_ERR_OTHER;
      }
      done[i] = flag != 0;
      if (done[i] && statuses) (*statuses)[i] = status;
      all = all && done[i];
    }
    if (all || std::chrono::steady_clock::now() >= deadline) return done;
    pause();
  }
}

std::vector<PeerProgress> query_peers(const Progress& p, std::chrono::milliseconds within) {
  MPI_Comm comm = control_comm();
  int me = World::get().rank();
  int tag = kFirstAnswerTag + g_next_answer_tag.fetch_add(1) % kAnswerTags;
  std::string query = cat(tag, " ", p.key);
  std::vector<PeerProgress> peers;
  std::vector<MPI_Request> requests;
  std::vector<std::string> answers;
  answers.reserve(p.world_ranks.size());
  for (int r : p.world_ranks) {
    if (r == me) continue;
    PeerProgress peer;
    peer.world_rank = r;
    peers.push_back(peer);
    answers.emplace_back(64, '\0');
    MPI_Request send = MPI_REQUEST_NULL, recv = MPI_REQUEST_NULL;
    MPI_Isend(query.data(), static_cast<int>(query.size()), MPI_CHAR, r, kQueryTag, comm, &send);
    MPI_Request_free(&send);
    MPI_Irecv(answers.back().data(), 64, MPI_CHAR, r, tag, comm, &recv);
    requests.push_back(recv);
  }
  std::vector<MPI_Status> statuses;
  std::vector<bool> done = test_until(requests, std::chrono::steady_clock::now() + within, &statuses);
  std::vector<int> lengths(requests.size(), -1);  // -1: no answer in time; 0: failed
  for (size_t i = 0; i < requests.size(); ++i) {
    if (!done[i]) continue;
    lengths[i] = 0;
    if (statuses[i].MPI_ERROR == MPI_SUCCESS) MPI_Get_count(&statuses[i], MPI_CHAR, &lengths[i]);
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    if (lengths[i] < 0) {  // no answer in time: withdraw the receive
      MPI_Cancel(&requests[i]);
      MPI_Wait(&requests[i], MPI_STATUS_IGNORE);
      continue;
    }
    if (lengths[i] == 0) continue;
    std::string answer = answers[i].substr(0, static_cast<size_t>(lengths[i]));
    peers[i].answered = true;
    if (answer == "unknown") continue;
    std::istringstream in(answer);
    int aborted = 0;
    in >> peers[i].started >> peers[i].completed >> aborted;
    peers[i].known = !in.fail();
    peers[i].aborted = aborted != 0;
  }
  return peers;
}

std::string explain_deadline(const Progress& p, const char* op, uint64_t sequence) {
  World& world = World::get();
  uint64_t completed = p.completed.load();
  // Long enough for a loaded peer's service thread (it polls every few ms),
  // short against any deadline.
  std::vector<PeerProgress> peers = query_peers(p, std::chrono::milliseconds(1000));
  std::vector<std::string> late;
  std::vector<int> gave_up;
  for (const PeerProgress& peer : peers) {
    std::string who = world.describe_rank(peer.world_rank);
    if (!peer.answered) {
      late.push_back(cat(who, " did not answer (last seen at #", completed, ")"));
    } else if (!peer.known) {
      late.push_back(cat(who, " no longer has this communicator"));
    } else if (peer.aborted) {
      gave_up.push_back(peer.world_rank);  // not waiting any more: its deadline passed first
    } else if (peer.started < sequence) {
      late.push_back(cat(who, " is behind: it has started #", peer.started, " and completed #", peer.completed));
    }
  }
  std::string here = cat(op, " #", sequence, " on '", p.name, "'");
  if (!late.empty()) {
    std::string list;
    for (const std::string& l : late) list += (list.empty() ? "" : "; ") + l;
    return list;
  }
  if (!gave_up.empty()) {
    std::string ranks;
    for (int r : gave_up) ranks += cat(ranks.empty() ? "" : ", ", r);
    return cat("this rank (", world.describe_rank(world.rank()), ") fell behind: world rank(s) ", ranks,
               " gave up on '", p.name, "' (their deadline passed first) while this rank was at #", sequence);
  }
  if (p.started.load() < sequence) {
    return cat("this rank (", world.describe_rank(world.rank()), ") fell behind: its own ", here,
               " had not started (the work producing its inputs was not done)");
  }
  return cat("every member reached #", sequence, "; the operation is stuck in the transport");
}

void start_progress_service() {
  if (g_service.joinable()) return;
  g_stop.store(false);
  g_service = std::thread(serve);
}

void stop_progress_service() {
  g_stop.store(true);
  if (g_service.joinable()) g_service.join();
}

}  // namespace meshrt::detail
