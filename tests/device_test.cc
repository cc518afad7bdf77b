// device/: dtypes, 16-bit floats, shapes, devices, errors, tensors, the caching
// allocator, memory-space rules, streams and events.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>
#include <mutex>
#include <condition_variable>
#include <atomic>
#include <limits>
#include <optional>
#include <thread>
#include <type_traits>

#include "device/allocator.h"
#include "device/copy_plan.h"
#include "device/stream.h"
#include "device/tensor.h"
#include "test_util.h"

namespace meshrt {
namespace {

using testing::throws_error;

template <class T>
concept HasHostElementAccess = requires(T t) { t.template data<float>(); };

TEST(DType, SizesNamesAndParsing) {
  EXPECT_EQ(size_of(DType::kF32), 4u);
  EXPECT_EQ(size_of(DType::kBF16), 2u);
  EXPECT_EQ(size_of(DType::kBool), 1u);
  for (DType d : kAllDTypes) EXPECT_EQ(parse_dtype(to_string(d)), d);
  EXPECT_EQ(parse_dtype("float32"), DType::kF32);
  EXPECT_EQ(parse_dtype("FP16"), DType::kF16);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { parse_dtype("f8"); },
                           {"unknown dtype 'f8'", "f32, f64"}));
}

TEST(Half, RoundTripsEveryHalfValue) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    Half h = Half::from_bits(static_cast<uint16_t>(bits));
    float f = static_cast<float>(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(static_cast<float>(Half(f))));
      continue;
    }
    ASSERT_EQ(Half(f).bits, bits) << "bits " << bits << " value " << f;
  }
}

TEST(Half, RoundsToNearestEvenAndSaturates) {
  EXPECT_EQ(static_cast<float>(Half(1.0f)), 1.0f);
  EXPECT_EQ(static_cast<float>(Half(65504.0f)), 65504.0f);     // largest half
  EXPECT_TRUE(std::isinf(static_cast<float>(Half(65520.0f))));  // rounds up to infinity
  EXPECT_EQ(static_cast<float>(Half(65519.0f)), 65504.0f);
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1).
  EXPECT_EQ(static_cast<float>(Half(1.0f + std::ldexp(1.0f, -11))), 1.0f);
  EXPECT_EQ(static_cast<float>(Half(std::ldexp(1.0f, -24))), std::ldexp(1.0f, -24));  // subnormal
  EXPECT_EQ(static_cast<float>(Half(std::ldexp(1.0f, -26))), 0.0f);
  EXPECT_EQ(Half(-0.0f).bits, 0x8000);
}

TEST(BFloat16, RoundTripsAndRounds) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    BFloat16 b = BFloat16::from_bits(static_cast<uint16_t>(bits));
    float f = static_cast<float>(b);
    if (std::isnan(f)) continue;
    ASSERT_EQ(BFloat16(f).bits, bits);
  }
  EXPECT_EQ(static_cast<float>(BFloat16(1.0f + std::ldexp(1.0f, -8))), 1.0f);  // tie to even
  EXPECT_EQ(static_cast<float>(BFloat16(1.0f + std::ldexp(3.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(static_cast<float>(BFloat16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(Shape, BasicsAndErrors) {
  Shape s{2, 3, 4};
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s[-1], 4);
  EXPECT_EQ(s.outer(1), 2);
  EXPECT_EQ(s.inner(1), 4);
  EXPECT_EQ(s.to_string(), "[2, 3, 4]");
  EXPECT_EQ(Shape{}.numel(), 1);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { (void)s[3]; }, {"axis 3", "[2, 3, 4]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [] { Shape{2, -1}; }, {"negative"}));
}

TEST(Device, Parsing) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  EXPECT_EQ(Device::cuda(1).to_string(), "cuda:1");
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { Device::parse("tpu"); }, {"'tpu'"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { Device::parse("cuda:x"); }, {"cuda:x"}));
}

TEST(Device, CudaAvailabilityIsReportedNotAssumed) {
  if (cuda_device_count() == 0) {
    EXPECT_FALSE(cuda_unavailable_reason().empty());
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable,
                             [] { check_device_usable(Device::cuda(0)); }, {"cuda:0"}));
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable,
                             [] { DeviceTensor::empty({4}, DType::kF32, Device::cuda(0)); },
                             {"cuda:0 is not available"}));
  } else {
    EXPECT_TRUE(cuda_unavailable_reason().empty());
  }
}

TEST(Error, KindAndMessage) {
  Error e(ErrorKind::kShape, "x is wrong");
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_EQ(e.message(), "x is wrong");
  EXPECT_STREQ(e.what(), "meshrt shape error: x is wrong");
  try {
    throw_library_error(ErrorKind::kMpi, "MPI_Foo(x)", "comm/a.cc", 12, "it broke");
    FAIL();
  } catch (const Error& err) {
    std::string what = err.what();
    EXPECT_NE(what.find("MPI_Foo(x) failed at comm/a.cc:12"), std::string::npos) << what;
    EXPECT_NE(what.find("it broke"), std::string::npos);
    EXPECT_NE(what.find("on rank "), std::string::npos) << "the World sets the rank: " << what;
  }
}

TEST(Tensor, HostFromVectorAndViews) {
  HostTensor t = HostTensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {3, 2});
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(t.dtype(), DType::kF32);
  EXPECT_EQ(t.nbytes(), 24u);
  HostTensor rows = t.narrow(1, 2);
  EXPECT_EQ(rows.to_vector<float>(), (std::vector<float>{3, 4, 5, 6}));
  rows.data<float>()[0] = 30;  // a view shares storage
  EXPECT_EQ(t.data<float>()[2], 30);
  HostTensor copy = t.clone();
  copy.data<float>()[0] = -1;
  EXPECT_EQ(t.data<float>()[0], 1);
  EXPECT_EQ(t.reshape({6}).shape(), (Shape{6}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { t.reshape({4}); }, {"reshape", "[3, 2]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { t.narrow(2, 2); }, {"narrow(2, 2)"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { t.data<double>(); }, {"data<f64>", "f32"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape,
                           [] { HostTensor::from_vector<int32_t>({1, 2, 3}, {2, 2}); },
                           {"3 values", "[2, 2]"}));
  EXPECT_EQ(t.description(), "f32[3, 2] on host");
}

TEST(Tensor, ToDeviceAndBackOnCpu) {
  HostTensor h = testing::random_tensor({5, 7}, DType::kF32, 1);
  DeviceTensor d = to_device(h, Device::cpu());
  EXPECT_EQ(d.device(), Device::cpu());
  EXPECT_NE(d.raw_data(), h.raw_data()) << "to_device copies";
  HostTensor back = to_host(d);
  EXPECT_EQ(back.to_vector<float>(), h.to_vector<float>());
  EXPECT_EQ(d.description(), "f32[5, 7] on cpu");
  DeviceTensor z = DeviceTensor::zeros({3}, DType::kI64);
  EXPECT_EQ(to_host(z).to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 0}));
}

TEST(Tensor, MemorySpacesAreTypes) {
  // Host element access exists only on HostTensor.
  static_assert(HasHostElementAccess<HostTensor>);
  static_assert(!HasHostElementAccess<DeviceTensor>);
  static_assert(!std::is_convertible_v<DeviceTensor, HostTensor>);
  static_assert(!std::is_convertible_v<HostTensor, DeviceTensor>);
  // The cpu device's memory is device-typed at run time too.
  DeviceTensor d = DeviceTensor::empty({16}, DType::kF32, Device::cpu());
  HostTensor h = HostTensor::empty({16}, DType::kF32);
  EXPECT_EQ(pointer_space(d.raw_data()), MemorySpace::kDevice);
  EXPECT_EQ(pointer_space(static_cast<char*>(d.raw_data()) + 8), MemorySpace::kDevice);
  EXPECT_EQ(pointer_space(h.raw_data()), MemorySpace::kHost);
  int on_stack = 0;
  EXPECT_EQ(pointer_space(&on_stack), MemorySpace::kHost);
}

TEST(Tensor, ConcatRows) {
  HostTensor a = HostTensor::from_vector<int32_t>({1, 2}, {1, 2}), b = HostTensor::from_vector<int32_t>({3, 4, 5, 6}, {2, 2});
  HostTensor c = concat_rows({a, b});
  EXPECT_EQ(c.shape(), (Shape{3, 2}));
  EXPECT_EQ(c.to_vector<int32_t>(), (std::vector<int32_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { concat_rows({a, HostTensor::full<int32_t>({1, 3}, 0)}); },
                           {"does not stack onto", "i32[1, 2]"}));
}

TEST(Tensor, CastHost) {
  HostTensor f = HostTensor::from_vector<float>({-1.5f, 0.0f, 2.7f, 1e6f}, {4});
  EXPECT_EQ(cast_host(f, DType::kI32).to_vector<int32_t>(), (std::vector<int32_t>{-1, 0, 2, 1000000}));
  EXPECT_EQ(cast_host(f, DType::kBool).to_vector<bool>(), (std::vector<bool>{true, false, true, true}));
  HostTensor h = cast_host(f, DType::kF16);
  EXPECT_TRUE(std::isinf(static_cast<float>(h.data<Half>()[3])));
  EXPECT_EQ(static_cast<float>(cast_host(f, DType::kBF16).data<BFloat16>()[0]), -1.5f);
}

// copy_rows on a GPU: one copy when the rows are contiguous, a 2-D copy while
// both pitches fit the device's limit, a copy per row beyond it (pitches over
// ~2 GiB: cudaMemcpy2DAsync would refuse them).
TEST(CopyRows, PlanAvoidsPitchesTheDeviceRefuses) {
  using detail::plan_row_copy;
  using detail::RowCopy;
  const size_t two_gib = size_t{2} << 30;
  EXPECT_EQ(plan_row_copy(64, 100, 64, 64, two_gib), RowCopy::kContiguous);
  EXPECT_EQ(plan_row_copy(64, 1, 1 << 20, 64, two_gib), RowCopy::kContiguous);
  EXPECT_EQ(plan_row_copy(64, 100, 128, 64, two_gib), RowCopy::kPitched);
  // A 128256 x 8192 f32 embedding cut in two along its rows of 32 KiB: fine;
  // a [2, 2^30] f32 tensor cut along dimension 1: pitches of 4 GiB.
  EXPECT_EQ(plan_row_copy(16 << 10, 128256, 32 << 10, 16 << 10, two_gib), RowCopy::kPitched);
  EXPECT_EQ(plan_row_copy(size_t{2} << 30, 2, size_t{4} << 30, size_t{2} << 30, two_gib), RowCopy::kPerRow);
  EXPECT_EQ(plan_row_copy(64, 3, 64, two_gib + 64, two_gib), RowCopy::kPerRow);
}

TEST(CachingAllocator, ReusesFreedBlocksPerStream) {
  int backend_calls = 0;
  CachingAllocator a("test allocator", Device::cpu(),
                     [&](size_t n) { ++backend_calls; return std::aligned_alloc(64, n); },
                     [](void* p) { std::free(p); });
  void* p = a.allocate(1000);
  EXPECT_TRUE(a.owns(p));
  EXPECT_TRUE(a.owns(static_cast<char*>(p) + 999));
  EXPECT_EQ(a.stats().allocated_bytes, 1024u);  // rounded to the 512-byte granule
  a.deallocate(p);
  EXPECT_FALSE(a.owns(p));
  void* q = a.allocate(900);  // same size class: served from the cache
  EXPECT_EQ(q, p);
  EXPECT_EQ(a.stats().cache_hits, 1u);
  int stream_tag = 0;
  void* r = a.allocate(900, &stream_tag);  // another stream: a new block
  EXPECT_NE(r, q);
  a.deallocate(q);
  void* big = a.allocate(4096);  // the cached 1024-byte block is too small
  EXPECT_NE(big, q);
  a.deallocate(big);
  void* small = a.allocate(100);  // takes the 1024-byte block (at most twice its 512 bytes)
  EXPECT_EQ(small, q);
  void* tiny = a.allocate(10);  // the cached 4096-byte block is more than twice 512 bytes
  EXPECT_NE(tiny, big);
  EXPECT_EQ(backend_calls, 4);
  a.deallocate(r);
  a.deallocate(small);
  a.deallocate(tiny);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.allocated_bytes, 0u);
  EXPECT_EQ(s.reserved_bytes, 1024u + 1024u + 4096u + 512u);
  EXPECT_EQ(s.peak_allocated_bytes, 1024u + 4096u);  // r and big
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved_bytes, 0u);
  EXPECT_TRUE(throws_error(ErrorKind::kInternal, [&] { a.deallocate(&backend_calls); },
                           {"did not hand out"}));
}

TEST(CachingAllocator, OutOfMemoryEmptiesCacheThenFailsClearly) {
  size_t budget = 4096;
  CachingAllocator a("budget allocator", Device::cpu(),
                     [&](size_t n) -> void* {
                       if (n > budget) return nullptr;
                       budget -= n;
                       return std::aligned_alloc(64, n);
                     },
                     [&](void* p) { std::free(p); budget += 2048; });
  void* p = a.allocate(2048);
  a.deallocate(p);                  // cached: budget still 2048
  void* q = a.allocate(4096);       // needs the cached block returned first
  EXPECT_NE(q, nullptr);
  EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { a.allocate(1 << 20); },
                           {"budget allocator", "out of memory", "1048576 bytes"}));
  a.deallocate(q);
}

TEST(Tensor, DeviceTensorsComeFromTheCachingAllocator) {
  CachingAllocator& a = device_allocator(Device::cpu());
  uint64_t before = a.stats().allocations;
  { DeviceTensor t = DeviceTensor::empty({1000}, DType::kF32); }
  { DeviceTensor t = DeviceTensor::empty({1000}, DType::kF32); }
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.allocations, before + 2);
  EXPECT_GE(s.cache_hits, 1u);
}

// cpu streams behave as CUDA streams: work runs in order on the stream's
// worker, asynchronously to the caller; events record a point of a stream;
// block() makes another stream wait; waits are bounded; a task's exception is
// sticky. (Before, cpu work ran synchronously and a cpu stream was a no-op.)
using testing::Gate;

TEST(StreamEvent, CpuStreamsRunInOrderAsynchronously) {
  Stream s = Stream::create(Device::cpu());
  EXPECT_NE(s.native_handle(), nullptr);
  EXPECT_NE(s.native_handle(), Stream::default_for(Device::cpu()).native_handle());
  EXPECT_TRUE(s.query());
  Gate gate;
  std::vector<int> order;
  std::mutex order_mutex;
  s.enqueue([&] {
    gate.wait();
    std::lock_guard<std::mutex> lock(order_mutex);
    order.push_back(1);
  });
  s.enqueue([&] {
    std::lock_guard<std::mutex> lock(order_mutex);
    order.push_back(2);
  }, true);  // small, but the stream is busy: queued behind the first
  Event after(Device::cpu());
  after.record(s);
  EXPECT_FALSE(after.query());
  EXPECT_FALSE(s.query());
  EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { s.synchronize(std::chrono::milliseconds(30)); },
                           {"did not finish within 30 ms"}));
  gate.release();
  after.synchronize();
  EXPECT_TRUE(after.query());
  EXPECT_EQ(order, (std::vector<int>{1, 2}));

  Event start(Device::cpu(), true), end(Device::cpu(), true);
  start.record(s);
  end.record(s);
  end.synchronize();
  EXPECT_GE(start.elapsed_ms(end), 0.0f);
  Event untimed(Device::cpu());
  untimed.record(s);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { untimed.elapsed_ms(end); }, {"timing"}));
}

// Small work on an idle stream runs at once on the caller's thread (no thread
// hop per small kernel on the serving path), except in the delayed mode; big
// work, or work behind other work, goes to the stream's worker.
TEST(StreamEvent, SmallWorkOnAnIdleCpuStreamRunsAtOnce) {
  Stream s = Stream::create(Device::cpu());
  std::thread::id small_on, big_on;
  s.enqueue([&] { small_on = std::this_thread::get_id(); }, true);
  s.synchronize();
  s.enqueue([&] { big_on = std::this_thread::get_id(); }, false);
  s.synchronize();
  EXPECT_NE(big_on, std::this_thread::get_id());
  if (cpu_streams_delayed()) {
    EXPECT_NE(small_on, std::this_thread::get_id());
  } else {
    EXPECT_EQ(small_on, std::this_thread::get_id());
  }
  // A small task that throws at once reports to its caller.
  if (!cpu_streams_delayed()) {
    EXPECT_TRUE(throws_error(ErrorKind::kInternal,
                             [&] { s.enqueue([] { throw Error(ErrorKind::kInternal, "small failed"); }, true); },
                             {"small failed"}));
  }
}

// Stream::run_if_idle runs at once on the calling thread when the cpu stream
// is idle, in its order (work queued meanwhile runs after it), and refuses,
// running nothing, when the stream is busy (or in the delayed mode).
TEST(StreamEvent, RunIfIdleRunsAtOnceOnlyOnAnIdleStream) {
  Stream s = Stream::create(Device::cpu());
  std::mutex mutex;
  std::vector<int> order;
  auto note = [&](int i) {
    std::lock_guard<std::mutex> lock(mutex);
    order.push_back(i);
  };
  std::thread::id ran_on;
  bool ran = s.run_if_idle([&] {
    ran_on = std::this_thread::get_id();
    s.enqueue([&] { note(2); });  // queued while it runs: after it
    note(1);
  });
  EXPECT_EQ(ran, !cpu_streams_delayed());
  s.synchronize();
  if (ran) {
    EXPECT_EQ(ran_on, std::this_thread::get_id());
    EXPECT_EQ(order, (std::vector<int>{1, 2}));
  }
  Gate gate;
  s.enqueue([&] { gate.wait(); });
  bool called = false;
  EXPECT_FALSE(s.run_if_idle([&] { called = true; }));  // busy
  EXPECT_FALSE(called);
  gate.release();
  s.synchronize();
  if (!cpu_streams_delayed()) {
    EXPECT_TRUE(throws_error(ErrorKind::kInternal,
                             [&] { s.run_if_idle([] { throw Error(ErrorKind::kInternal, "inline failed"); }); },
                             {"inline failed"}));
    s.synchronize();  // reported to the caller, not sticky
  }
}

// Threads racing on one cpu stream: run_if_idle (its claim of an idle stream
// takes no lock), small and big work, waits for another stream and for events.
// The stream's rules hold throughout: one task at a time, each thread's work in
// the order it was issued, an event waits for everything queued before it
// (no wake-up lost while a task runs on a caller's thread), nothing lost.
TEST(StreamEvent, RacingThreadsKeepACpuStreamsOrder) {
  Stream s = Stream::create(Device::cpu()), other = Stream::create(Device::cpu());
  constexpr int kThreads = 4, kOps = 4000;
  std::atomic<int> inside{0}, overlaps{0}, out_of_order{0}, ran{0}, inline_ran{0}, unfinished{0};
  std::atomic<int> last[kThreads];
  for (auto& l : last) l = -1;
  auto task = [&](int t, int i) {
    if (inside.fetch_add(1) != 0) ++overlaps;
    if (last[t].load(std::memory_order_relaxed) >= i) ++out_of_order;
    last[t].store(i, std::memory_order_relaxed);
    ++ran;
    inside.fetch_sub(1);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kOps; ++i) {
        switch ((i + t) % 8) {
          case 0:
          case 1:
          case 2:
            if (s.run_if_idle([&] { task(t, i); })) {
              ++inline_ran;
            } else {
              s.enqueue([&, t, i] { task(t, i); }, true);
            }
            break;
          case 3:
            s.enqueue([&, t, i] { task(t, i); }, true);
            break;
          case 4:
            s.enqueue([&, t, i] { task(t, i); });
            break;
          case 5: {  // a wait for the other stream, then work behind it
            other.enqueue([] {});
            Event e(Device::cpu());
            e.record(other);
            e.block(s);
            s.enqueue([&, t, i] { task(t, i); }, true);
            break;
          }
          default: {  // everything this thread queued is done once its event is
            s.enqueue([&, t, i] { task(t, i); }, true);
            Event e(Device::cpu());
            e.record(s);
            e.synchronize(std::chrono::seconds(30));
            if (last[t].load(std::memory_order_relaxed) != i) ++unfinished;
            break;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  s.synchronize(std::chrono::seconds(30));

  // Asleep while a task runs on its caller's thread: a wait for that task,
  // and the worker for work queued behind it, are woken when it ends (nothing
  // else happens on the stream meanwhile that could wake them).
  if (!cpu_streams_delayed()) {
    std::atomic<bool> behind{false}, waited_inline{false}, waited_behind{false};
    std::vector<std::thread> waiters;
    EXPECT_TRUE(s.run_if_idle([&] {
      waiters.emplace_back([&] {
        Event e(Device::cpu());
        e.record(s);  // this task
        try {
          e.synchronize(std::chrono::seconds(10));
          waited_inline = true;
        } catch (const Error&) {
        }
      });
      waiters.emplace_back([&] {
        s.enqueue([&] { behind = true; });
        Event e(Device::cpu());
        e.record(s);
        try {
          e.synchronize(std::chrono::seconds(10));
          waited_behind = true;
        } catch (const Error&) {
        }
      });
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // both asleep by now
    }));
    for (auto& w : waiters) w.join();
    EXPECT_TRUE(waited_inline);
    EXPECT_TRUE(waited_behind);
    EXPECT_TRUE(behind);
  }
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(out_of_order.load(), 0);
  EXPECT_EQ(unfinished.load(), 0);
  EXPECT_EQ(ran.load(), kThreads * kOps);
  if (cpu_streams_delayed()) {
    EXPECT_EQ(inline_ran.load(), 0);
  }
  EXPECT_TRUE(s.query());
}

TEST(StreamEvent, BlockOrdersOneCpuStreamAfterAnother) {
  Stream a = Stream::create(Device::cpu()), b = Stream::create(Device::cpu());
  Gate gate;
  std::atomic<int> value{0};
  a.enqueue([&] {
    gate.wait();
    value = 1;
  });
  Event e(Device::cpu());
  e.record(a);
  e.block(b);  // returns at once: b waits, not the caller
  std::atomic<int> seen{-1};
  b.enqueue([&] { seen = value.load(); }, true);  // small, but behind the wait: queued
  EXPECT_FALSE(b.query());
  gate.release();
  b.synchronize();
  EXPECT_EQ(seen.load(), 1);

  // A wait for work that is already done costs nothing: small work queued
  // after it still runs at once on this thread (outside the delayed mode).
  Event done(Device::cpu());
  done.record(a);
  done.synchronize();
  done.block(b);
  std::thread::id ran_on;
  b.enqueue([&] { ran_on = std::this_thread::get_id(); }, true);
  b.synchronize();
  EXPECT_EQ(ran_on == std::this_thread::get_id(), !cpu_streams_delayed());

  // A wait nobody woke the worker for is settled by whoever looks: polling
  // query() alone sees the stream finish once the other one has.
  Gate second;
  a.enqueue([&] { second.wait(); });
  Event later(Device::cpu());
  later.record(a);
  later.block(b);
  EXPECT_FALSE(b.query());
  second.release();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!b.query() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  EXPECT_TRUE(b.query());
}

TEST(StreamEvent, AFailedCpuTaskIsReportedByTheNextWait) {
  Stream s = Stream::create(Device::cpu());
  Gate gate;
  s.enqueue([&] { gate.wait(); });
  s.enqueue([] { throw Error(ErrorKind::kInternal, "a kernel failed"); });
  gate.release();
  EXPECT_TRUE(throws_error(ErrorKind::kInternal, [&] { s.synchronize(); }, {"a kernel failed"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInternal, [&] { s.synchronize(); }, {"a kernel failed"}));  // sticky
}

// The allocator's stream rules hold for cpu streams: a block used on a side
// stream (record_stream) is not handed out again before that stream passes
// the point where it was freed.
TEST(StreamEvent, ABlockUsedOnACpuSideStreamWaitsForIt) {
  Stream side = Stream::create(Device::cpu());
  Gate gate;
  side.enqueue([&] { gate.wait(); });
  void* first = nullptr;
  {
    DeviceTensor x = DeviceTensor::empty({4096}, DType::kF32);
    first = x.raw_data();
    prepare_stream_use(&side, {&x});
    float* data = static_cast<float*>(x.raw_data());
    side.enqueue([data] { data[0] = 42.0f; });  // uses x after the gate
  }  // x freed while the side stream still holds it
  DeviceTensor y = DeviceTensor::empty({4096}, DType::kF32);
  EXPECT_NE(y.raw_data(), first);
  gate.release();
  side.synchronize();
}

// A stream whose last handle goes inside one of its own tasks runs what is
// queued behind that task and ends cleanly (the worker holds the queue).
TEST(StreamEvent, ACpuStreamMayGoInsideItsOwnTask) {
  auto holder = std::make_shared<std::optional<Stream>>(Stream::create(Device::cpu()));
  Gate gate;
  std::atomic<bool> dropped{false}, after{false};
  Stream& s = **holder;
  s.enqueue([&gate] { gate.wait(); });
  Event timed(Device::cpu(), true);
  timed.record(s);
  s.enqueue([holder, &dropped] {
    holder->reset();  // the last handle, on the stream's own worker
    dropped = true;
  });
  s.enqueue([&after] { after = true; });
  holder.reset();
  gate.release();
  timed.synchronize();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!after && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  EXPECT_TRUE(dropped);
  EXPECT_TRUE(after);
}

// Work that failed is still done with its memory: a block used on a stream
// whose task failed is reused, and allocating never rethrows that failure.
TEST(StreamEvent, AFailedCpuStreamDoesNotStopAllocations) {
  Stream side = Stream::create(Device::cpu());
  {
    DeviceTensor x = DeviceTensor::empty({1024}, DType::kF32);
    prepare_stream_use(&side, {&x});
    side.enqueue([] { throw Error(ErrorKind::kInternal, "a kernel failed"); });
  }
  EXPECT_TRUE(throws_error(ErrorKind::kInternal, [&] { side.synchronize(); }, {"a kernel failed"}));
  for (int i = 0; i < 4; ++i) {
    DeviceTensor y = DeviceTensor::empty({1024}, DType::kF32);
    EXPECT_EQ(to_host(y).numel(), 1024);
  }
}

// The delayed test mode makes a missing synchronisation visible: a device
// tensor read on the host through raw_data() right after the work that writes
// it still holds unwritten memory (0xff bytes, NaN); to_host waits and sees the
// value. (In the normal mode small work runs at once, and the planted bug passes.)
TEST(StreamEvent, TheDelayedModeExposesAMissingSynchronize) {
  if (!cpu_streams_delayed()) GTEST_SKIP() << "runs in the delayed mode (MESHRT_CPU_STREAMS=delayed)";
  DeviceTensor src = to_device(HostTensor::full<float>({16}, 3.0f), Device::cpu());
  DeviceTensor dst = DeviceTensor::empty({16}, DType::kF32);
  copy(src, dst);
  float unsynchronized = static_cast<const float*>(dst.raw_data())[0];  // the planted bug
  EXPECT_TRUE(std::isnan(unsynchronized)) << "read " << unsynchronized << " before the copy ran";
  EXPECT_EQ(to_host(dst).data<float>()[0], 3.0f);
}

// A Storage never throws from its destructor; a block whose users cannot be
// ordered is abandoned: neither cached for reuse nor freed.
static_assert(std::is_nothrow_destructible_v<Storage>);

TEST(CachingAllocator, AbandonedBlocksAreNeverHandedOutAgain) {
  int frees = 0;
  CachingAllocator alloc("test", Device::cpu(), [](size_t bytes) { return std::aligned_alloc(64, bytes); },
                         [&](void* p) {
                           ++frees;
                           std::free(p);
                         });
  void* a = alloc.allocate(1000);
  alloc.abandon(a);
  EXPECT_EQ(alloc.stats().allocated_bytes, 0u);
  EXPECT_EQ(alloc.stats().reserved_bytes, 0u);
  void* b = alloc.allocate(1000);
  EXPECT_EQ(alloc.stats().cache_hits, 0u);
  EXPECT_NE(b, a);
  alloc.abandon(nullptr);
  alloc.abandon(&frees);  // not its block: ignored
  alloc.deallocate(b);
  alloc.empty_cache();
  EXPECT_EQ(frees, 1);
  std::free(a);
}

// ---- CUDA (skipped with the reason when no GPU is usable) ----

TEST(CudaDevice, RoundTripThroughPinnedStaging) {
  MESHRT_REQUIRE_CUDA();
  for (DType dtype : kAllDTypes) {
    HostTensor h = testing::random_tensor({33, 17}, dtype, 5, -10, 10);
    DeviceTensor d = to_device(h, Device::cuda(0));
    EXPECT_EQ(pointer_space(d.raw_data()), MemorySpace::kDevice);
    DeviceTensor c = d.clone();
    HostTensor back = to_host(c);
    EXPECT_EQ(std::memcmp(back.raw_data(), h.raw_data(), h.nbytes()), 0) << to_string(dtype);
  }
  EXPECT_EQ(pointer_space(HostTensor::empty({4}, DType::kF32).raw_data()), MemorySpace::kHost);
}

// Host tensors are ordinary memory (only the staging buffers are pinned), and
// copies larger than a staging buffer go through both buffers in turn.
TEST(CudaDevice, HostTensorsArePageableAndLargeCopiesAreStaged) {
  MESHRT_REQUIRE_CUDA();
  HostTensor h = HostTensor::empty({(int64_t{21} << 20) + 7}, DType::kU8);
  for (int64_t i = 0; i < h.numel(); ++i) static_cast<uint8_t*>(h.raw_data())[i] = static_cast<uint8_t>(i * 31 + 7);
  EXPECT_EQ(std::string(host_allocator().name()), "host allocator");
  DeviceTensor d = to_device(h, Device::cuda(0));
  HostTensor back = to_host(d);
  EXPECT_EQ(std::memcmp(back.raw_data(), h.raw_data(), h.nbytes()), 0);
  Stream side = Stream::create(Device::cuda(0));
  HostTensor again = to_host(d, &side);
  EXPECT_EQ(std::memcmp(again.raw_data(), h.raw_data(), h.nbytes()), 0);
}

// copy_rows with a pitch over 2 GiB (rows of a tensor longer than the device's
// maximum pitch): one copy per row, where cudaMemcpy2DAsync would refuse.
TEST(CudaDevice, CopyRowsWithAPitchOverTwoGiB) {
  MESHRT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  const int64_t cols = (int64_t{1} << 29) + 16;  // a row of 2 GiB + 64 bytes in f32
  DeviceTensor src = DeviceTensor::zeros({2, cols}, DType::kF32, gpu);
  HostTensor tail = HostTensor::from_vector<float>(std::vector<float>(16, 0.0f), {16});
  for (int r = 0; r < 2; ++r) {
    for (int i = 0; i < 16; ++i) tail.data<float>()[i] = static_cast<float>(100 * r + i);
    DeviceTensor t = to_device(tail, gpu);
    copy_rows(gpu, static_cast<char*>(src.raw_data()) + (r * cols + cols - 16) * 4, 64, t.raw_data(), 64, 64, 1);
  }
  DeviceTensor dst = DeviceTensor::empty({2, 16}, DType::kF32, gpu);
  copy_rows(gpu, dst.raw_data(), 64, static_cast<char*>(src.raw_data()) + (cols - 16) * 4, static_cast<size_t>(cols) * 4,
            64, 2);
  HostTensor got = to_host(dst);
  for (int r = 0; r < 2; ++r) {
    for (int i = 0; i < 16; ++i) EXPECT_EQ(got.data<float>()[r * 16 + i], static_cast<float>(100 * r + i));
  }
}

// A block freed after use on a side stream is reused only once that stream's
// work is done (record_stream), and blocks allocate, free and come back.
TEST(CudaDevice, AllocateFreeReuseOnASideStream) {
  MESHRT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  Stream side = Stream::create(gpu);
  HostTensor ones = HostTensor::full<float>({1 << 22}, 1.0f);
  for (int round = 0; round < 4; ++round) {
    DeviceTensor result = DeviceTensor::empty({1 << 22}, DType::kF32, gpu);
    {
      DeviceTensor input = to_device(ones, gpu);
      copy(input, result, &side);  // input used on the side stream, then freed at once
    }
    // A new tensor of the same size must not be the block the side stream still reads.
    DeviceTensor other = DeviceTensor::zeros({1 << 22}, DType::kF32, gpu);
    side.synchronize();
    HostTensor r = to_host(result);
    for (float v : r.span<float>()) ASSERT_EQ(v, 1.0f) << "round " << round;
  }
}

TEST(CudaDevice, StreamsEventsAndAllocatorCache) {
  MESHRT_REQUIRE_CUDA();
  Stream s = Stream::create(Device::cuda(0));
  EXPECT_NE(s.native_handle(), nullptr);
  Event a(Device::cuda(0), true), b(Device::cuda(0), true);
  a.record(s);
  DeviceTensor z = DeviceTensor::zeros({1 << 20}, DType::kF32, Device::cuda(0));
  b.record(s);
  b.synchronize();
  EXPECT_TRUE(b.query());
  EXPECT_GE(a.elapsed_ms(b), 0.0f);
  CachingAllocator& alloc = device_allocator(Device::cuda(0));
  uint64_t hits = alloc.stats().cache_hits;
  { DeviceTensor t = DeviceTensor::empty({1 << 16}, DType::kF32, Device::cuda(0)); }
  { DeviceTensor t = DeviceTensor::empty({1 << 16}, DType::kF32, Device::cuda(0)); }
  EXPECT_GT(alloc.stats().cache_hits, hits);
}

}  // namespace
}  // namespace meshrt
