#include "serving/supervisor.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "device/error.h"
#include "device/log.h"
#include "rpc/relay.h"
#include "serving/protocol.h"
#include "serving/signal_pipe.h"

extern char** environ;

namespace meshrt::serving {

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

void say(const char* format, ...) __attribute__((format(printf, 1, 2)));
void say(const char* format, ...) {
  char line[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(line, sizeof line, format, args);
  va_end(args);
  log::info(line);
}

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_text(const std::string& path, const std::string& text) {
  if (path.empty()) return;
  {
    std::ofstream out(path + ".partial", std::ios::trunc);
    out << text << "\n";
  }
  std::rename((path + ".partial").c_str(), path.c_str());
}

// A positive integer read from a file, or 0.
long read_number(const fs::path& path) {
  try {
    std::string text = read_text(path);
    size_t used = 0;
    long value = std::stol(text, &used);
    return value > 0 ? value : 0;
  } catch (const std::exception&) {
    return 0;
  }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

struct ProcessInfo {
  pid_t parent = 0;
  char state = '?';  // 'Z': a zombie, ended and waiting to be reaped
};

// Every process's parent and state, from /proc/<pid>/stat.
std::map<pid_t, ProcessInfo> processes() {
  std::map<pid_t, ProcessInfo> out;
  DIR* dir = ::opendir("/proc");
  if (!dir) return out;
  while (dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    std::string stat = read_text(fs::path("/proc") / entry->d_name / "stat");
    size_t close = stat.rfind(')');  // the command name may hold spaces and parentheses
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    long ppid = 0;
    rest >> state >> ppid;
    out[static_cast<pid_t>(pid)] = ProcessInfo{static_cast<pid_t>(ppid), state.empty() ? '?' : state[0]};
  }
  ::closedir(dir);
  return out;
}

// The processes below root (not root itself).
std::vector<pid_t> descendants(pid_t root) {
  std::multimap<pid_t, pid_t> children;
  for (const auto& [pid, info] : processes()) children.emplace(info.parent, pid);
  std::vector<pid_t> out;
  std::deque<pid_t> todo{root};
  while (!todo.empty()) {
    pid_t p = todo.front();
    todo.pop_front();
    auto [first, last] = children.equal_range(p);
    for (auto it = first; it != last; ++it) {
      out.push_back(it->second);
      todo.push_back(it->second);
    }
  }
  return out;
}

// SIGKILL to the job: its process group (the job's launcher leads one of its
// own) and every process below it (OpenMPI puts each rank in a group of its own).
void kill_job(pid_t launcher) {
  if (launcher <= 1) return;  // never kill(-1) or kill(0)
  std::vector<pid_t> tree = descendants(launcher);
  ::kill(-launcher, SIGKILL);
  for (pid_t p : tree) {
    if (p > 1 && p != ::getpid()) ::kill(p, SIGKILL);
  }
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "ended (status " + std::to_string(status) + ")";
}

std::string command_name(pid_t pid) {
  std::string name = read_text(fs::path("/proc") / std::to_string(pid) / "comm");
  while (!name.empty() && name.back() == '\n') name.pop_back();
  return name;
}

// ---------------------------------------------------------------------------
// One connection to the job's rank 0, blocking, with real deadlines (Beast's
// timeouts hold for asynchronous operations, run here to completion).
// ---------------------------------------------------------------------------
struct ExchangeResult {
  enum Kind { kAnswered, kNotSent, kFailed } kind = kFailed;
  bool reused = false;  // over a kept-alive connection
  std::string error;
};

bool equals_ignore_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// Headers of one hop only (RFC 9110 7.6.1) and the framing, which each side sets itself.
bool hop_by_hop(std::string_view name) {
  for (std::string_view h : {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                             "upgrade", "content-length", "host", "expect", "proxy-authenticate", "proxy-authorization"}) {
    if (equals_ignore_case(name, h)) return true;
  }
  return false;
}

class Upstream {
 public:
  ExchangeResult exchange(uint16_t port, uint64_t generation, http::request<http::string_body>& request,
                          std::chrono::milliseconds timeout, HttpResponse& out) {
    ExchangeResult result;
    result.reused = usable(port, generation);
    beast::error_code error;
    if (!result.reused) {
      stream_.emplace(context_);
      stream_->expires_after(std::chrono::seconds(5));
      error = net::error::would_block;
      stream_->async_connect(tcp::endpoint(net::ip::make_address_v4("127.0.0.1"), port),
                             [&](beast::error_code e) { error = e; });
      run();
      if (error) {
        drop();
        result.kind = ExchangeResult::kNotSent;
        result.error = "cannot connect to the job's rank 0 (127.0.0.1:" + std::to_string(port) + "): " + error.message();
        return result;
      }
      port_ = port;
      generation_ = generation;
    }
    request.set(http::field::host, "127.0.0.1:" + std::to_string(port));
    stream_->expires_after(timeout);
    error = net::error::would_block;
    http::async_write(*stream_, request, [&](beast::error_code e, size_t) { error = e; });
    run();
    http::response_parser<http::string_body> parser;
    parser.body_limit(1ull << 32);
    if (request.method() == http::verb::head) parser.skip(true);  // the answer to HEAD is its headers alone
    if (!error) {
      error = net::error::would_block;
      http::async_read(*stream_, buffer_, parser, [&](beast::error_code e, size_t) { error = e; });
      run();
    }
    if (error) {
      drop();
      result.kind = ExchangeResult::kFailed;
      result.error = "the exchange with the job's rank 0 failed: " + error.message();
      return result;
    }
    auto response = parser.release();
    out = HttpResponse{};
    out.status = static_cast<int>(response.result_int());
    out.body = std::move(response.body());
    for (const auto& field : response) {
      std::string_view name(field.name_string().data(), field.name_string().size());
      if (field.name() == http::field::content_type) {
        out.content_type = std::string(field.value());
      } else if (!hop_by_hop(name) && field.name() != http::field::server && field.name() != http::field::date) {
        out.headers.emplace_back(std::string(name), std::string(field.value()));
      }
    }
    if (!response.keep_alive()) drop();
    last_used_ = Clock::now();
    result.kind = ExchangeResult::kAnswered;
    return result;
  }

 private:
  void run() {
    context_.restart();
    context_.run();
  }
  void drop() {
    stream_.reset();
    buffer_.clear();
  }
  // Whether the kept-alive connection may carry the next request: to the same
  // launch of the job, not idle long (rank 0 closes idle connections after 60 s),
  // and not closed by the other end already.
  bool usable(uint16_t port, uint64_t generation) {
    if (!stream_) return false;
    if (port != port_ || generation != generation_ || Clock::now() - last_used_ > std::chrono::seconds(20)) {
      drop();
      return false;
    }
    char byte;
    ssize_t n = ::recv(stream_->socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    drop();  // closed (0), failed, or unexpected bytes
    return false;
  }

  net::io_context context_;
  std::optional<beast::tcp_stream> stream_;
  beast::flat_buffer buffer_;
  uint16_t port_ = 0;
  uint64_t generation_ = 0;
  Clock::time_point last_used_;
};

http::request<http::string_body> upstream_request(const HttpRequest& r) {
  http::request<http::string_body> request;
  http::verb verb = http::string_to_verb(r.method);
  if (verb == http::verb::unknown) {
    request.method_string(r.method);
  } else {
    request.method(verb);
  }
  request.target(r.target);
  request.version(11);
  for (const auto& [name, value] : r.headers) {
    if (!hop_by_hop(name)) request.insert(name, value);
  }
  request.body() = r.body;
  request.keep_alive(true);
  request.prepare_payload();
  return request;
}

std::string path_of(const std::string& target) { return target.substr(0, target.find('?')); }

// ---------------------------------------------------------------------------
// The supervisor
// ---------------------------------------------------------------------------
enum class State { kStarting, kUp, kRestarting, kStopping };

class Supervisor {
 public:
  explicit Supervisor(const SupervisorOptions& o) : o_(o) {}

  int run() {
    http_ = std::make_unique<HttpServer>(o_.http, [this](const HttpRequest& r, Responder respond) {
      handle(r, std::move(respond));
    });
    if (o_.grpc_enabled) {
      rpc::ServerOptions grpc = o_.grpc;
      grpc.max_message_bytes = o_.http.max_body_bytes;
      auto upstream = [this](std::string* why_not) -> std::optional<std::string> {
        std::lock_guard<std::mutex> lock(job_mutex_);
        State state = state_;
        if (state != State::kUp || grpc_port_ == 0) {
          ++unavailable_total_;
          *why_not = state != State::kUp ? down_reason(state) : "the inference job did not say its gRPC port";
          return std::nullopt;
        }
        return "127.0.0.1:" + std::to_string(grpc_port_);
      };
      try {
        relay_ = std::make_unique<rpc::Relay>(grpc, upstream);
      } catch (const Error& e) {
        throw Error(e.kind(), e.message() + ": choose another port with --grpc-port (0: any free port), or no gRPC with "
                                            "--grpc-port -1");
      }
    }
    if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) say("cannot become a child subreaper: %s", std::strerror(errno));
    if (o_.work_dir.empty()) {
      std::string pattern = (fs::temp_directory_path() / "meshrt-supervisor-XXXXXX").string();
      MESHRT_CHECK(::mkdtemp(pattern.data()) != nullptr, ErrorKind::kUnavailable, "cannot create a folder for the job's files: ",
                   std::strerror(errno));
      work_dir_ = pattern;
      own_work_dir_ = true;
    } else {
      work_dir_ = o_.work_dir;
      fs::create_directories(work_dir_);
    }
    if (relay_) write_text(o_.grpc_port_file, std::to_string(relay_->port()));
    write_text(o_.port_file, std::to_string(http_->port()));
    write_text(o_.pid_file, std::to_string(::getpid()));
    for (int i = 0; i < o_.proxy_threads; ++i) workers_.emplace_back([this] { work(); });
    std::thread server([this] { http_->run(); });
    std::thread prober([this] { probe_readiness(); });
    say("listening on http://%s:%u; the job: %s", o_.http.address.c_str(), static_cast<unsigned>(http_->port()),
        command_line_text().c_str());
    if (relay_) say("listening on grpc://%s:%u (relayed to the job's gRPC port)", o_.grpc.address.c_str(),
                    static_cast<unsigned>(relay_->port()));

    int code = monitor();
    {
      std::lock_guard<std::mutex> lock(job_mutex_);
      probing_stop_ = true;
    }
    probe_wake_.notify_all();
    prober.join();

    state_ = State::kStopping;
    http_->stop_accepting();
    auto deadline = Clock::now() + std::chrono::seconds(10);
    // gRPC calls in flight finish within the same 10 s (the relay takes no new ones meanwhile).
    if (relay_) relay_->shutdown(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
    while (http_->in_flight() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    http_->stop();
    server.join();
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      workers_stop_ = true;
    }
    queue_ready_.notify_all();
    for (auto& t : workers_) t.join();
    if (own_work_dir_) {
      std::error_code ignored;
      fs::remove_all(work_dir_, ignored);
    }
    say("stopped (exit code %d)", code);
    return code;
  }

 private:
  struct Task {
    HttpRequest request;
    Responder respond;
  };

  // ---- the public side -----------------------------------------------------

  HttpResponse unavailable(const std::string& why, bool retry = true) {
    ++unavailable_total_;
    HttpResponse r{503, error_json(why), "application/json", {}};
    if (retry) r.headers.emplace_back("Retry-After", std::to_string(o_.retry_after_s));
    return r;
  }

  HttpResponse not_ready() {
    HttpResponse r{503, R"({"ready": false})", "application/json", {}};
    r.headers.emplace_back("Retry-After", std::to_string(o_.retry_after_s));
    return r;
  }

  // Why the job cannot take requests now.
  std::string down_reason(State state) const {
    switch (state) {
      case State::kStarting: return "the inference job is starting; retry after " + std::to_string(o_.retry_after_s) + " s";
      case State::kRestarting:
        return "the inference job is restarting (it was lost and is being relaunched); retry after " +
               std::to_string(o_.retry_after_s) + " s";
      case State::kStopping: return "the server is shutting down";
      case State::kUp: break;
    }
    return "the inference job is restarting";
  }

  std::string supervisor_metrics() const {
    std::string out;
    out += "# HELP meshrt_supervisor_job_up 1 while the supervised job is up and requests are relayed to it\n";
    out += "# TYPE meshrt_supervisor_job_up gauge\n";
    out += "meshrt_supervisor_job_up " + std::to_string(state_ == State::kUp ? 1 : 0) + "\n";
    out += "# HELP meshrt_supervisor_restarts_total relaunches of the job after it was lost\n";
    out += "# TYPE meshrt_supervisor_restarts_total counter\n";
    out += "meshrt_supervisor_restarts_total " + std::to_string(restarts_total_.load()) + "\n";
    out += "# HELP meshrt_supervisor_unavailable_total requests the supervisor answered with 503 itself (job down, or lost during the request)\n";
    out += "# TYPE meshrt_supervisor_unavailable_total counter\n";
    out += "meshrt_supervisor_unavailable_total " + std::to_string(unavailable_total_.load()) + "\n";
    out += "# HELP meshrt_supervisor_relay_failures_total requests whose exchange with rank 0 failed (answered with 503)\n";
    out += "# TYPE meshrt_supervisor_relay_failures_total counter\n";
    out += "meshrt_supervisor_relay_failures_total " + std::to_string(relay_failures_.load()) + "\n";
    return out;
  }

  // On the server's threads: what the supervisor answers itself at once, or a
  // task for the workers that relay to rank 0.
  void handle(const HttpRequest& r, Responder respond) {
    std::string path = path_of(r.target);
    if (path == "/v2/health/live") {
      if (r.method != "GET" && r.method != "HEAD") {
        return respond({405, error_json("method " + r.method + " not allowed on /v2/health/live"), "application/json",
                        {{"Allow", "GET, HEAD"}}});
      }
      return respond({200, R"({"live": true})", "application/json", {}});
    }
    State state = state_;
    if (path == "/v2/health/ready" && (r.method == "GET" || r.method == "HEAD")) {
      // From the monitor's last probe of rank 0 (every 250 ms): never queued behind inference.
      if (state == State::kUp && job_ready_) return respond({200, R"({"ready": true})", "application/json", {}});
      return respond(not_ready());
    }
    if (state != State::kUp) {
      if (path == "/metrics" && r.method == "GET") return respond({200, supervisor_metrics(), "text/plain; version=0.0.4", {}});
      return respond(unavailable(down_reason(state), state != State::kStopping));
    }
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      queue_.push_back(Task{r, std::move(respond)});
    }
    queue_ready_.notify_one();
  }

  void work() {
    Upstream upstream;
    while (true) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(queue_mutex_);
        queue_ready_.wait(lock, [&] { return workers_stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task.respond(relay(upstream, task.request));
    }
  }

  HttpResponse relay(Upstream& upstream, const HttpRequest& r) {
    std::string path = path_of(r.target);
    // The launch to talk to, read together with the state (under the same lock as they are set).
    uint16_t port;
    uint64_t generation;
    State state;
    {
      std::lock_guard<std::mutex> lock(job_mutex_);
      port = port_;
      generation = generation_;
      state = state_;
    }
    if (state != State::kUp) return unavailable(down_reason(state), state != State::kStopping);
    http::request<http::string_body> request = upstream_request(r);
    // The supervisor appends its own lines to the job's metrics: it asks for
    // them plain (its server compresses the whole as the client accepts). Other
    // answers come back as rank 0 encoded them, Content-Encoding included.
    bool metrics = path == "/metrics" && r.method == "GET";
    if (metrics) request.erase(http::field::accept_encoding);
    HttpResponse response;
    ExchangeResult result = upstream.exchange(port, generation, request, o_.upstream_timeout, response);
    bool idempotent = r.method == "GET" || r.method == "HEAD";
    if (result.kind == ExchangeResult::kFailed && result.reused && idempotent) {
      result = upstream.exchange(port, generation, request, o_.upstream_timeout, response);
    }
    if (result.kind == ExchangeResult::kAnswered) {
      if (metrics && response.status == 200) {
        if (!response.body.empty() && response.body.back() != '\n') response.body += '\n';
        response.body += supervisor_metrics();
      }
      return response;
    }
    ++relay_failures_;
    if (result.kind == ExchangeResult::kNotSent) {
      return unavailable("the inference job cannot be reached (it is restarting); the request was not sent; retry after " +
                         std::to_string(o_.retry_after_s) + " s (" + result.error + ")");
    }
    return unavailable("the inference job was lost during this request, which may or may not have run; it is restarting; "
                       "retry after " + std::to_string(o_.retry_after_s) + " s (" + result.error + ")");
  }

  // ---- the job ---------------------------------------------------------------

  fs::path job_file(const std::string& name) const { return work_dir_ / name; }

  std::vector<std::string> command_line() const {
    std::vector<std::string> args = {o_.mpirun};
    args.insert(args.end(), o_.mpirun_args.begin(), o_.mpirun_args.end());
    args.insert(args.end(), {"-np", std::to_string(o_.ranks), o_.serve});
    args.insert(args.end(), o_.serve_args.begin(), o_.serve_args.end());
    args.insert(args.end(), {"--http-address", "127.0.0.1", "--http-port", "0", "--port-file", job_file("job.port").string(),
                             "--pid-file", job_file("job.pid").string()});
    // The job's metrics port: any free one unless asked for (a fixed default
    // would collide between supervisors on one machine; /metrics is relayed).
    bool metrics_port_given = std::any_of(o_.serve_args.begin(), o_.serve_args.end(), [](const std::string& a) {
      return a == "--metrics-port" || a.rfind("--metrics-port=", 0) == 0;
    });
    if (!metrics_port_given) args.insert(args.end(), {"--metrics-port", "0"});
    // The job's gRPC on loopback, any port: the public one is the relay's.
    if (o_.grpc_enabled) {
      args.insert(args.end(), {"--grpc-address", "127.0.0.1", "--grpc-port", "0", "--grpc-port-file",
                               job_file("job.grpc_port").string()});
    } else {
      args.insert(args.end(), {"--grpc-port", "-1"});
    }
    return args;
  }

  std::string command_line_text() const {
    std::string out;
    for (const std::string& a : command_line()) out += (out.empty() ? "" : " ") + a;
    return out;
  }

  // Starts the job in a process group of its own, stdin from /dev/null, no
  // descriptor of ours but stdout and stderr, default signal dispositions.
  pid_t launch() {
    std::vector<std::string> args = command_line();
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addclosefrom_np(&files, 3);
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    posix_spawnattr_setpgroup(&attributes, 0);
    sigset_t defaults, empty;
    sigemptyset(&defaults);
    for (int s : {SIGTERM, SIGINT, SIGPIPE, SIGUSR1, SIGHUP}) sigaddset(&defaults, s);
    sigemptyset(&empty);
    posix_spawnattr_setsigdefault(&attributes, &defaults);
    posix_spawnattr_setsigmask(&attributes, &empty);
    pid_t pid = -1;
    int rc = ::posix_spawnp(&pid, argv[0], &files, &attributes, argv.data(), environ);
    posix_spawn_file_actions_destroy(&files);
    posix_spawnattr_destroy(&attributes);
    if (rc != 0) {
      say("cannot start %s: %s", o_.mpirun.c_str(), std::strerror(rc));
      return -1;
    }
    return pid;
  }

  // Kills and reaps processes orphaned below us (ranks whose mpirun died first).
  void reap_strays() {
    pid_t self = ::getpid();
    std::vector<pid_t> strays;
    for (const auto& [pid, info] : processes()) {
      if (info.parent != self || pid <= 1) continue;
      strays.push_back(pid);
      if (info.state != 'Z') {
        say("killing process %d (%s), still running after its launcher ended", static_cast<int>(pid),
            command_name(pid).c_str());
      }
    }
    for (pid_t p : strays) {
      for (pid_t q : descendants(p)) {
        if (q > 1 && q != self) ::kill(q, SIGKILL);
      }
      ::kill(p, SIGKILL);
    }
    for (pid_t p : strays) ::waitpid(p, nullptr, 0);
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  }

  // Whether the job's launcher ended (then reaped, its status in *status).
  static bool ended(pid_t job, int* status) { return ::waitpid(job, status, WNOHANG) == job; }

  // Sleeps up to timeout, or until a stop signal arrives (then stop_ is set).
  void wait_for_signal(std::chrono::milliseconds timeout) {
    pollfd fd{signal_pipe_fd(), POLLIN, 0};
    if (::poll(&fd, 1, static_cast<int>(timeout.count())) > 0 && (fd.revents & POLLIN)) {
      unsigned char signal = 0;
      if (::read(signal_pipe_fd(), &signal, 1) == 1 && !stop_) {
        say("signal %d: stopping (not ready; the job drains)", static_cast<int>(signal));
        stop_ = true;
        job_ready_ = false;
        set_state(State::kStopping);
      }
    }
  }

  void set_state(State state, uint16_t port = 0) {
    // Rank 0 writes its gRPC port before its HTTP port: known once it is up.
    long grpc = state == State::kUp && o_.grpc_enabled ? read_number(job_file("job.grpc_port")) : 0;
    std::lock_guard<std::mutex> lock(job_mutex_);
    if (state == State::kUp) {
      port_ = port;
      grpc_port_ = grpc > 0 && grpc <= 65535 ? static_cast<uint16_t>(grpc) : 0;
    }
    state_ = state;
  }

  // Whether rank 0 of this launch listens and says ready; its port in *port.
  bool job_ready(Upstream& probe, uint64_t generation, uint16_t* port) {
    long number = read_number(job_file("job.port"));
    if (number <= 0 || number > 65535) return false;
    *port = static_cast<uint16_t>(number);
    return says_ready(probe, *port, generation);
  }

  static bool says_ready(Upstream& probe, uint16_t port, uint64_t generation) {
    HttpRequest get{"GET", "/v2/health/ready", "", {}};
    http::request<http::string_body> request = upstream_request(get);
    HttpResponse response;
    ExchangeResult result = probe.exchange(port, generation, request, std::chrono::seconds(2), response);
    return result.kind == ExchangeResult::kAnswered && response.status == 200;
  }

  // While the job is up, asks rank 0 every 250 ms whether it is ready (on a
  // thread of its own, so that a slow answer never delays noticing a lost job).
  void probe_readiness() {
    Upstream probe;
    std::unique_lock<std::mutex> lock(job_mutex_);
    while (!probing_stop_) {
      probe_wake_.wait_for(lock, std::chrono::milliseconds(250), [&] { return probing_stop_; });
      if (probing_stop_ || state_ != State::kUp) continue;
      uint16_t port = port_;
      uint64_t generation = generation_;
      lock.unlock();
      bool ready = says_ready(probe, port, generation);
      lock.lock();
      if (generation_ == generation && state_ == State::kUp && ready != job_ready_) {
        say("rank 0 says it is %s", ready ? "ready again" : "not ready");
        job_ready_ = ready;
      }
    }
  }

  // The job's rank 0, if it wrote its pid and is still below the launcher.
  pid_t rank0(pid_t job) const {
    pid_t pid = static_cast<pid_t>(read_number(job_file("job.pid")));
    if (pid <= 1) return -1;
    for (pid_t p : descendants(job)) {
      if (p == pid) return pid;
    }
    return -1;
  }

  // Drains the job (SIGTERM to rank 0), then kills what is left after stop_timeout.
  void stop_job(pid_t job) {
    pid_t first = rank0(job);
    if (first > 1) {
      say("SIGTERM to the job's rank 0 (pid %d): it drains, then the job exits", static_cast<int>(first));
      ::kill(first, SIGTERM);
    } else if (job > 1) {
      say("the job is not up yet: SIGTERM to %s (pid %d)", o_.mpirun.c_str(), static_cast<int>(job));
      ::kill(job, SIGTERM);
    }
    auto deadline = Clock::now() + o_.stop_timeout;
    int status = 0;
    bool done = false;
    while (!(done = ended(job, &status)) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (done) {
      say("the job %s", describe_status(status).c_str());
    } else {
      say("the job did not stop within %lld s: SIGKILL to all of it", static_cast<long long>(o_.stop_timeout.count()));
      kill_job(job);
      ::waitpid(job, &status, 0);
    }
    reap_strays();
  }

  int monitor() {
    Upstream probe;
    int launches = 0, restarts = 0;
    bool ever_ready = false;
    bool lost = false;  // and not up since
    Clock::time_point lost_at;
    while (!stop_) {
      std::error_code ignored;
      for (const char* name : {"job.port", "job.pid", "job.grpc_port"}) fs::remove(job_file(name), ignored);
      for (int r = 0; r < o_.ranks; ++r) fs::remove(job_file("job.pid." + std::to_string(r)), ignored);
      reap_strays();
      pid_t job = launch();
      ++launches;
      {
        std::lock_guard<std::mutex> lock(job_mutex_);
        ++generation_;
      }
      uint64_t generation = generation_;
      auto launched = Clock::now();
      if (job > 0) say("launch %d: %s started (pid %d)", launches, o_.mpirun.c_str(), static_cast<int>(job));
      bool up = false, done = job <= 0;
      int status = 0;
      while (!stop_ && !done) {
        if ((done = ended(job, &status))) break;
        uint16_t port = 0;
        if (!up && job_ready(probe, generation, &port)) {
          up = ever_ready = true;
          job_ready_ = true;
          set_state(State::kUp, port);
          if (lost) {
            say("launch %d ready after %.2f s (%.2f s since the job was lost); rank 0 at 127.0.0.1:%u", launches,
                seconds_between(launched, Clock::now()), seconds_between(lost_at, Clock::now()), static_cast<unsigned>(port));
          } else {
            say("launch %d ready after %.2f s; rank 0 at 127.0.0.1:%u", launches, seconds_between(launched, Clock::now()),
                static_cast<unsigned>(port));
          }
          lost = false;
        } else if (!up && Clock::now() - launched > o_.start_timeout) {
          say("launch %d not ready within %lld s: killing it", launches, static_cast<long long>(o_.start_timeout.count()));
          kill_job(job);
          ::waitpid(job, &status, 0);
          done = true;
          break;
        }
        wait_for_signal(std::chrono::milliseconds(up ? 20 : 50));
      }
      if (!done) {  // asked to stop
        stop_job(job);
        return 0;
      }
      job_ready_ = false;
      if (!stop_) set_state(State::kRestarting);
      if (!lost) {
        lost = true;
        lost_at = Clock::now();
      }
      if (job > 0) {
        say("the job (launch %d, %s pid %d) %s after %.2f s%s", launches, o_.mpirun.c_str(), static_cast<int>(job),
            describe_status(status).c_str(), seconds_between(launched, Clock::now()),
            up ? ", unasked: a rank was lost or the job stopped" : " before it was ready");
      }
      reap_strays();
      if (stop_) return 0;
      if (!ever_ready && launches == 1) {
        say("the first launch ended before it was ever ready: not relaunching (see the job's messages above)");
        return 2;
      }
      if (o_.max_restarts >= 0 && restarts >= o_.max_restarts) {
        say("%d restart(s) used up (--max-restarts): giving up", restarts);
        return 1;
      }
      ++restarts;
      ++restarts_total_;
      say("restarting the job in %lld ms (restart %d)", static_cast<long long>(o_.restart_delay.count()), restarts);
      auto until = Clock::now() + o_.restart_delay;
      while (!stop_ && Clock::now() < until) {
        wait_for_signal(std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()) +
                        std::chrono::milliseconds(1));
      }
    }
    return 0;
  }

  const SupervisorOptions& o_;
  fs::path work_dir_;
  bool own_work_dir_ = false;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<rpc::Relay> relay_;  // the public gRPC port, when on

  std::mutex job_mutex_;  // port_, grpc_port_, generation_ and state_ change together
  std::atomic<State> state_{State::kStarting};
  uint16_t port_ = 0, grpc_port_ = 0;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;  // the monitor's thread only

  std::condition_variable probe_wake_;  // with job_mutex_
  bool probing_stop_ = false;
  std::atomic<bool> job_ready_{false};  // rank 0's answer to the monitor's last readiness probe
  std::atomic<long long> restarts_total_{0}, unavailable_total_{0}, relay_failures_{0};

  std::mutex queue_mutex_;
  std::condition_variable queue_ready_;
  std::deque<Task> queue_;
  bool workers_stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

void install_supervisor_signal_handlers() {
  // SIGTERM and SIGINT write their number to the pipe the monitor polls.
  route_signals_to_pipe({SIGTERM, SIGINT});
  ::signal(SIGPIPE, SIG_IGN);
}

int run_supervisor(const SupervisorOptions& options) {
  MESHRT_CHECK_ARG(options.ranks >= 1, "--ranks must be at least 1, got ", options.ranks);
  // meshrt-serve takes 256 connections from one address (the supervisor's) by default.
  MESHRT_CHECK_ARG(options.proxy_threads >= 1 && options.proxy_threads <= 250, "--proxy-threads must be in [1, 250], got ",
                   options.proxy_threads);
  MESHRT_CHECK_ARG(options.retry_after_s >= 0, "--retry-after-s must not be negative");
  MESHRT_CHECK_ARG(!options.serve.empty() && !options.mpirun.empty(), "the launcher and meshrt-serve must be named");
  if (signal_pipe_fd() < 0) install_supervisor_signal_handlers();
  Supervisor supervisor(options);
  return supervisor.run();
}

}  // namespace meshrt::serving
