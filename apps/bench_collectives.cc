// meshrt-bench-collectives: collective bandwidth in the style of nccl-tests, with
// the raw library call (MPI_Allreduce ... on the cpu, ncclAllReduce ... on GPUs)
// timed at the same sizes in the same run, and the ratio of the two.
//
//   mpirun -np 4 meshrt-bench-collectives -b 8 -e 64M -f 2
//
// Columns: size (bytes of the whole buffer), count (elements), type, redop, root,
// then for meshrt and for the raw call: time (us per operation, averaged over
// ranks), algbw = size / time, busbw = algbw x the nccl-tests factor of the
// collective (all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all (n-1)/n;
// broadcast 1), and #wrong (elements differing from the expected result, summed
// over ranks, when -c 1). our/raw is meshrt's time over the raw time. Times are
// OSU's: loops of back-to-back operations, meshrt's and the raw call's taking
// turns by blocks of 500.
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/communicator.h"
#include "comm/mpi_check.h"
#include "comm/mpi_types.h"
#include "comm/world.h"

#if MESHRT_WITH_CUDA
#include <cuda_runtime.h>
#include "comm/nccl_check.h"
#include "comm/nccl_types.h"
#include "device/cuda_check.h"
#endif

namespace meshrt::apps {
namespace {

struct Options {
  std::string min_bytes = "8", max_bytes = "32M";
  double factor = 2;
  std::string increment;
  int iters = 20, warmup = 5, check = 1, root = 0;
  std::string op = "sum", dtype = "f32", collective = "all_reduce", device;
  bool no_raw = false;
  bool abortable = false;
};

// The value rank r holds at element i, and what every reduction of them gives:
// small integers, so every dtype (f16 and bf16 too) represents results exactly.
double value_of(int rank, int64_t i, ReduceOp op) {
  if (op == ReduceOp::kProd) return 1 + ((i + rank) % 2);
  if (op == ReduceOp::kSum) return 1 + ((i + rank) % 7);
  return (i * 7 + rank) % 13;
}

double reduced(int ranks, int64_t i, ReduceOp op, DType dtype) {
  double acc = value_of(0, i, op);
  for (int r = 1; r < ranks; ++r) {
    double v = value_of(r, i, op);
    bool boolean = dtype == DType::kBool;
    switch (op) {
      case ReduceOp::kSum: acc = boolean ? std::max(acc, v) : acc + v; break;
      case ReduceOp::kProd: acc = boolean ? std::min(acc, v) : acc * v; break;
      case ReduceOp::kMax: acc = std::max(acc, v); break;
      case ReduceOp::kMin: acc = std::min(acc, v); break;
      case ReduceOp::kAvg: break;  // refused at the command line
    }
  }
  return acc;
}

HostTensor filled(int64_t count, DType dtype, const std::function<double(int64_t)>& f) {
  HostTensor d = HostTensor::empty({count}, DType::kF64);
  for (int64_t i = 0; i < count; ++i) d.data<double>()[i] = f(i);
  return cast_host(d, dtype);
}

int64_t count_wrong(const HostTensor& got, const HostTensor& expected) {
  HostTensor a = cast_host(got, DType::kF64), b = cast_host(expected, DType::kF64);
  int64_t wrong = 0;
  for (int64_t i = 0; i < a.numel(); ++i) wrong += a.data<double>()[i] != b.data<double>()[i];
  return wrong;
}

// The buffers of one size: send and receive on the device, and the expected
// receive buffer for the check.
struct Buffers {
  DeviceTensor send, recv;
  HostTensor expected;
  int64_t total = 0;  // elements in the "size" column
};

// One row per collective, as nccl-tests' struct testColl: the buffers and the
// expected result for a size (init), the nccl-tests bus bandwidth factor, and
// the operation through meshrt and through the raw library. The engine below
// (run) knows no collective by name.
struct CollectiveRow {
  const char* name;
  const char* raw_mpi;
  const char* raw_nccl;
  bool chunked;  // the element count is a multiple of the ranks (one chunk per rank)
  bool reduces;  // takes a reduction op
  bool rooted;   // has a root rank
  double (*bus_factor)(int n);
  Buffers (*init)(int64_t count, DType dtype, ReduceOp op, int root, int rank, int n, const Device& device);
  Work (*run)(const Communicator& comm, Buffers& b, ReduceOp op, int root);
  void (*run_mpi)(Buffers& b, MPI_Datatype t, MPI_Op reduce, int root, int n, MPI_Comm comm);
#if MESHRT_WITH_CUDA
  void (*run_nccl)(Buffers& b, ncclDataType_t t, ncclRedOp_t reduce, int root, int n, ncclComm_t comm, cudaStream_t s);
#endif
};

DeviceTensor filled_on(const Device& device, int64_t count, DType dtype, const std::function<double(int64_t)>& f) {
  return to_device(filled(count, dtype, f), device);
}

void* data(const DeviceTensor& t) { return t.raw_data(); }
int as_int(int64_t v) { return static_cast<int>(v); }

#if MESHRT_WITH_CUDA
#define MESHRT_RAW_NCCL(...) , [](Buffers & b, ncclDataType_t t, ncclRedOp_t reduce, int root, int n, ncclComm_t comm, cudaStream_t s) { __VA_ARGS__; }
#else
#define MESHRT_RAW_NCCL(...)
#endif

const CollectiveRow kCollectives[] = {
    {"all_reduce", "MPI_Allreduce", "ncclAllReduce", false, true, false, [](int n) { return 2.0 * (n - 1) / n; },
     [](int64_t count, DType dtype, ReduceOp op, int, int rank, int n, const Device& device) {
       return Buffers{filled_on(device, count, dtype, [&](int64_t i) { return value_of(rank, i, op); }),
                      DeviceTensor::zeros({count}, dtype, device),
                      filled(count, dtype, [&](int64_t i) { return reduced(n, i, op, dtype); }), count};
     },
     [](const Communicator& c, Buffers& b, ReduceOp op, int) { return c.all_reduce(b.send, b.recv, op); },
     [](Buffers& b, MPI_Datatype t, MPI_Op reduce, int, int, MPI_Comm comm) {
       MESHRT_MPI_CHECK(MPI_Allreduce(data(b.send), data(b.recv), as_int(b.total), t, reduce, comm));
     } MESHRT_RAW_NCCL(MESHRT_NCCL_CHECK(ncclAllReduce(data(b.send), data(b.recv), b.total, t, reduce, comm, s)))},
    {"all_gather", "MPI_Allgather", "ncclAllGather", true, false, false, [](int n) { return static_cast<double>(n - 1) / n; },
     [](int64_t count, DType dtype, ReduceOp op, int, int rank, int n, const Device& device) {
       int64_t part = count / n;
       return Buffers{filled_on(device, part, dtype, [&](int64_t i) { return value_of(rank, i, op); }),
                      DeviceTensor::zeros({count}, dtype, device),
                      filled(count, dtype, [&](int64_t i) { return value_of(static_cast<int>(i / part), i % part, op); }),
                      count};
     },
     [](const Communicator& c, Buffers& b, ReduceOp, int) { return c.all_gather(b.send, b.recv); },
     [](Buffers& b, MPI_Datatype t, MPI_Op, int, int n, MPI_Comm comm) {
       MESHRT_MPI_CHECK(MPI_Allgather(data(b.send), as_int(b.total / n), t, data(b.recv), as_int(b.total / n), t, comm));
     } MESHRT_RAW_NCCL(MESHRT_NCCL_CHECK(ncclAllGather(data(b.send), data(b.recv), b.total / n, t, comm, s)))},
    {"reduce_scatter", "MPI_Reduce_scatter", "ncclReduceScatter", true, true, false,
     [](int n) { return static_cast<double>(n - 1) / n; },
     [](int64_t count, DType dtype, ReduceOp op, int, int rank, int n, const Device& device) {
       int64_t part = count / n;
       return Buffers{filled_on(device, count, dtype, [&](int64_t i) { return value_of(rank, i, op); }),
                      DeviceTensor::zeros({part}, dtype, device),
                      filled(part, dtype, [&](int64_t i) { return reduced(n, rank * part + i, op, dtype); }), count};
     },
     [](const Communicator& c, Buffers& b, ReduceOp op, int) { return c.reduce_scatter(b.send, b.recv, op); },
     [](Buffers& b, MPI_Datatype t, MPI_Op reduce, int, int n, MPI_Comm comm) {
       // The fastest MPI call for it (OpenMPI: up to 2x MPI_Reduce_scatter_block's speed).
       static thread_local std::vector<int> counts;
       counts.assign(static_cast<size_t>(n), as_int(b.total / n));
       MESHRT_MPI_CHECK(MPI_Reduce_scatter(data(b.send), data(b.recv), counts.data(), t, reduce, comm));
     } MESHRT_RAW_NCCL(MESHRT_NCCL_CHECK(ncclReduceScatter(data(b.send), data(b.recv), b.total / n, t, reduce, comm, s)))},
    {"broadcast", "MPI_Bcast", "ncclBroadcast", false, false, true, [](int) { return 1.0; },
     [](int64_t count, DType dtype, ReduceOp op, int root, int rank, int, const Device& device) {
       DeviceTensor send = filled_on(device, count, dtype, [&](int64_t i) { return rank == root ? value_of(root, i, op) : 0; });
       return Buffers{send, send, filled(count, dtype, [&](int64_t i) { return value_of(root, i, op); }), count};
     },
     [](const Communicator& c, Buffers& b, ReduceOp, int root) { return c.broadcast(b.send, root); },
     [](Buffers& b, MPI_Datatype t, MPI_Op, int root, int, MPI_Comm comm) {
       MESHRT_MPI_CHECK(MPI_Bcast(data(b.send), as_int(b.total), t, root, comm));
     } MESHRT_RAW_NCCL(MESHRT_NCCL_CHECK(ncclBroadcast(data(b.send), data(b.send), b.total, t, root, comm, s)))},
    {"all_to_all", "MPI_Alltoall", "ncclSend/ncclRecv (grouped)", true, false, false,
     [](int n) { return static_cast<double>(n - 1) / n; },
     [](int64_t count, DType dtype, ReduceOp, int, int rank, int n, const Device& device) {
       // Chunk p of rank r holds (31 r + p) mod 100: rank me receives chunk me of each rank.
       int64_t part = count / n;
       return Buffers{filled_on(device, count, dtype, [&](int64_t i) { return (rank * 31 + i / part) % 100; }),
                      DeviceTensor::zeros({count}, dtype, device),
                      filled(count, dtype, [&](int64_t i) { return (static_cast<int>(i / part) * 31 + rank) % 100; }),
                      count};
     },
     [](const Communicator& c, Buffers& b, ReduceOp, int) { return c.all_to_all(b.send, b.recv); },
     [](Buffers& b, MPI_Datatype t, MPI_Op, int, int n, MPI_Comm comm) {
       MESHRT_MPI_CHECK(MPI_Alltoall(data(b.send), as_int(b.total / n), t, data(b.recv), as_int(b.total / n), t, comm));
     } MESHRT_RAW_NCCL(
         size_t part = static_cast<size_t>(b.total / n); size_t bytes = part * size_of(b.send.dtype());
         MESHRT_NCCL_CHECK(ncclGroupStart());
         for (int p = 0; p < n; ++p) {
           MESHRT_NCCL_CHECK(ncclSend(static_cast<char*>(data(b.send)) + p * bytes, part, t, p, comm, s));
           MESHRT_NCCL_CHECK(ncclRecv(static_cast<char*>(data(b.recv)) + p * bytes, part, t, p, comm, s));
         }
         MESHRT_NCCL_CHECK(ncclGroupEnd()))},
};
#undef MESHRT_RAW_NCCL

double average_over_ranks(double value, MPI_Comm comm, int n) {
  double sum = 0;
  MPI_Allreduce(&value, &sum, 1, MPI_DOUBLE, MPI_SUM, comm);
  return sum / n;
}

void print_rank_lines(const World& world, const Device& device, MPI_Comm comm) {
  char line[256];
  std::snprintf(line, sizeof line, "#  Rank %2d Group  0 Pid %6d on %10s device %s", world.rank(),
                static_cast<int>(getpid()), world.host_name().c_str(), device.to_string().c_str());
  std::vector<char> all(static_cast<size_t>(world.size()) * sizeof line);
  MPI_Gather(line, sizeof line, MPI_CHAR, all.data(), sizeof line, MPI_CHAR, 0, comm);
  if (world.rank() == 0) {
    for (int r = 0; r < world.size(); ++r) std::printf("%s\n", all.data() + r * sizeof line);
  }
}

int run(const Options& o) {
  World& world = World::get();
  int rank = world.rank(), n = world.size();
  Device device = world.device(o.device);
  DType dtype = parse_dtype(o.dtype);
  ReduceOp op = parse_reduce_op(o.op);
  MESHRT_CHECK_ARG(op != ReduceOp::kAvg, "--op avg: communicators run sum, prod, max and min");
  int64_t min_bytes = parse_size(o.min_bytes), max_bytes = parse_size(o.max_bytes);
  int64_t increment = o.increment.empty() ? 0 : parse_size(o.increment);
  MESHRT_CHECK_ARG(min_bytes > 0 && max_bytes >= min_bytes, "need 0 < -b (", min_bytes, ") <= -e (", max_bytes, ")");
  MESHRT_CHECK_ARG(increment > 0 || o.factor > 1, "the step factor -f must be > 1 (or give -i)");
  MESHRT_CHECK_ARG(o.iters > 0 && o.warmup >= 0, "-n must be > 0 and -w >= 0");
  MESHRT_CHECK_ARG(o.root >= 0 && o.root < n, "root ", o.root, " is not a rank of ", n);

  std::vector<const CollectiveRow*> selected;
  std::string names;
  for (const auto& c : kCollectives) {
    if (o.collective == "all" || o.collective == c.name) selected.push_back(&c);
    names += std::string(c.name) + ", ";
  }
  MESHRT_CHECK_ARG(!selected.empty(), "unknown collective '", o.collective, "': expected ", names, "or all");

  MPI_Comm raw_comm = MPI_COMM_NULL;
  MESHRT_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &raw_comm));
  Communicator comm = Communicator::world(device, "bench");
  if (o.abortable) comm.set_abortable_collectives(true);
#if MESHRT_WITH_CUDA
  ncclComm_t raw_nccl = nullptr;
  cudaStream_t raw_stream = nullptr;
  if (device.is_cuda() && !o.no_raw) {
    ncclUniqueId id{};
    if (rank == 0) MESHRT_NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, raw_comm);
    MESHRT_CUDA_CHECK(cudaSetDevice(device.index()));
    MESHRT_NCCL_CHECK(ncclCommInitRank(&raw_nccl, n, id, rank));
    raw_stream = static_cast<cudaStream_t>(Stream::default_for(device).native_handle());
  }
#endif
  bool raw_available = !o.no_raw;
  const char* backend = comm.backend_name();

  if (rank == 0) {
    std::printf("# meshrt-bench-collectives: %d rank(s) on %d node(s), device %s, backend %s\n", n,
                world.node_count(), device.is_cpu() ? "cpu" : "cuda", backend);
    std::printf("# minBytes %lld maxBytes %lld step: %s warmup iters: %d iters: %d validation: %d dtype %s op %s\n",
                static_cast<long long>(min_bytes), static_cast<long long>(max_bytes),
                increment ? (std::to_string(increment) + " (bytes)").c_str() : (std::to_string(o.factor) + "(factor)").c_str(),
                o.warmup, o.iters, o.check, to_string(dtype), to_string(op));
    std::printf("#\n# Using devices\n");
  }
  print_rank_lines(world, device, raw_comm);

  int64_t total_wrong = 0;
  for (const CollectiveRow* info : selected) {
    const char* raw_name = device.is_cuda() ? info->raw_nccl : info->raw_mpi;
    double bus_sum = 0;
    int rows = 0;
    if (rank == 0) {
      std::printf("#\n# %s: meshrt %s vs raw %s%s\n", info->name, backend, raw_name,
                  raw_available ? "" : " (not run: --no-raw)");
      std::printf("#%11s %12s %6s %6s %5s %10s %8s %8s %7s %10s %8s %8s %8s\n", "size", "count", "type",
                  "redop", "root", "time", "algbw", "busbw", "#wrong", "raw time", "algbw", "busbw", "our/raw");
      std::printf("#%11s %12s %6s %6s %5s %10s %8s %8s %7s %10s %8s %8s %8s\n", "(B)", "(elements)", "", "",
                  "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "");
    }
    for (int64_t bytes = min_bytes; bytes <= max_bytes;
         bytes = increment ? bytes + increment : static_cast<int64_t>(std::ceil(bytes * o.factor))) {
      int64_t count = bytes / static_cast<int64_t>(size_of(dtype));
      if (info->chunked) count -= count % n;
      if (count == 0) continue;
      Buffers b = info->init(count, dtype, op, o.root, rank, n, device);
      int64_t size = count * static_cast<int64_t>(size_of(dtype));

      int64_t wrong = 0;
      if (o.check) {
        Buffers fresh = info->init(count, dtype, op, o.root, rank, n, device);
        info->run(comm, fresh, op, o.root).wait();
        wrong = count_wrong(to_host(fresh.recv), fresh.expected);
      }
      auto raw_call = [&] {
#if MESHRT_WITH_CUDA
        if (device.is_cuda()) {
          info->run_nccl(b, detail::nccl_datatype(dtype), detail::nccl_reduce_op(dtype, op), o.root, n, raw_nccl, raw_stream);
          Stream::default_for(device).synchronize();
          return;
        }
#endif
        info->run_mpi(b, detail::mpi_datatype(dtype), detail::mpi_reduce_op(dtype, op), o.root, n, raw_comm);
      };
      for (int i = 0; i < o.warmup; ++i) {
        info->run(comm, b, op, o.root).wait();
        if (raw_available) raw_call();
      }
      // OSU's method: a loop of back-to-back operations timed as a whole. meshrt
      // and the raw call take turns by blocks of kBlock operations, so drifts of
      // the machine (other load, caches, clocks) fall on both alike, while
      // within a block each runs after its own kind (one operation each in
      // turn measured the second one ~10% slower, whichever it was).
      constexpr int kBlock = 500;
      comm.barrier();
      double ours = 0, raw = 0;
      for (int done = 0; done < o.iters; done += kBlock) {
        int block = std::min(kBlock, o.iters - done);
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < block; ++i) info->run(comm, b, op, o.root).wait();
        ours += seconds_since(start);
        if (raw_available) {
          start = std::chrono::steady_clock::now();
          for (int i = 0; i < block; ++i) raw_call();
          raw += seconds_since(start);
        }
      }
      ours = average_over_ranks(ours / o.iters, raw_comm, n);
      raw = average_over_ranks(raw / o.iters, raw_comm, n);
      int64_t wrong_all = 0;
      MPI_Allreduce(&wrong, &wrong_all, 1, MPI_INT64_T, MPI_SUM, raw_comm);
      total_wrong += wrong_all;
      double algbw = size / ours / 1e9, busbw = algbw * info->bus_factor(n);
      bus_sum += busbw;
      ++rows;
      if (rank == 0) {
        char root_text[16] = "-1";
        if (info->rooted) std::snprintf(root_text, sizeof root_text, "%d", o.root);
        std::printf("%12lld %12lld %6s %6s %5s %10.1f %8.2f %8.2f %7s", static_cast<long long>(size),
                    static_cast<long long>(count), to_string(dtype), info->reduces ? to_string(op) : "none",
                    root_text, ours * 1e6, algbw, busbw, o.check ? std::to_string(wrong_all).c_str() : "N/A");
        if (raw_available) {
          double raw_algbw = size / raw / 1e9;
          std::printf(" %10.1f %8.2f %8.2f %8.3f\n", raw * 1e6, raw_algbw, raw_algbw * info->bus_factor(n), ours / raw);
        } else {
          std::printf(" %10s %8s %8s %8s\n", "N/A", "N/A", "N/A", "N/A");
        }
        std::fflush(stdout);
      }
    }
    if (rank == 0 && rows > 0) std::printf("# Avg bus bandwidth    : %g GB/s\n", bus_sum / rows);
  }
  if (rank == 0) {
    std::printf("#\n# Out of bounds values : %lld %s\n#\n", static_cast<long long>(total_wrong),
                total_wrong == 0 ? "OK" : "FAILED");
  }
#if MESHRT_WITH_CUDA
  if (raw_nccl) ncclCommDestroy(raw_nccl);
#endif
  MPI_Comm_free(&raw_comm);
  return total_wrong == 0 ? 0 : 1;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-bench-collectives: bandwidth of meshrt's collectives against the raw library call\n"
      "(MPI_Allreduce ... on the cpu device, ncclAllReduce ... on CUDA devices) in the same run.\n"
      "Run it under mpirun, e.g.: mpirun -np 4 meshrt-bench-collectives -b 8 -e 64M -f 2"};
  app.add("-b,--minbytes", o.min_bytes, "smallest buffer size, with K/M/G suffixes").show_default();
  app.add("-e,--maxbytes", o.max_bytes, "largest buffer size, with K/M/G suffixes").show_default();
  app.add("-f,--stepfactor", o.factor, "multiply the size by this factor between rows").show_default();
  app.add("-i,--stepbytes", o.increment, "add this many bytes between rows instead of -f");
  app.add("-n,--iters", o.iters, "timed iterations per size").show_default();
  app.add("-w,--warmup_iters", o.warmup, "untimed iterations per size").show_default();
  app.add("-c,--check", o.check, "check results (1) or not (0)").show_default();
  app.add("-o,--op", o.op, "reduction: sum, prod, max, min").show_default();
  app.add("-d,--datatype", o.dtype, "f32, f64, f16, bf16, i32, i64, u8, bool").show_default();
  app.add("-r,--root", o.root, "root of broadcast").show_default();
  app.add("-C,--collective", o.collective,
                 "all_reduce, all_gather, reduce_scatter, broadcast, all_to_all or all").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  app.flag("--no-raw", o.no_raw, "skip the raw library baseline");
  app.flag("--abortable", o.abortable,
           "MPI: run meshrt's collectives as abortable non-blocking calls (as a server's are), against the same raw "
           "blocking baseline");
  return meshrt::apps::run_mpi_app("meshrt-bench-collectives", app, argc, argv, [&] { return meshrt::apps::run(o); });
}
