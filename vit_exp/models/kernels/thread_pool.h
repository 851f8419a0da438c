// The thread pool shared by vit-exp's CPU kernels (cpu_kernels.cc, onednn_kernels.cc; each
// library has its own): threads that sleep between kernel calls, and parallel loops over them.
#pragma once

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

namespace {

int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int thread_count() {
  static const int cpus = std::min(usable_cpus(), 16);
  return cpus;
}

// thread_count() - 1 workers that sleep between jobs (a thread per job cost ~40 us, as much as a
// small GEMM); the calling thread takes part. Never destroyed: its workers sleep through exit.
class Pool {
 public:
  static Pool &instance() {
    static Pool *pool = new Pool(thread_count() - 1);
    return *pool;
  }

  // job(c) for c in [0, chunks), chunks <= thread_count(): chunk 0 on the caller, the others on
  // workers. A second MindSpore thread arriving while a job runs, a forked child or a worker
  // itself runs the chunks inline instead, one after the other.
  void run(int chunks, const std::function<void(int)> &job) {
    if (chunks <= 1 || getpid() != owner_ || in_worker_ || !busy_.try_lock()) {
      for (int c = 0; c < chunks; ++c) job(c);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      chunks_ = chunks;
      pending_ = chunks - 1;
      ++generation_;
    }
    wake_.notify_all();
    job(0);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_ == 0; });
      job_ = nullptr;
    }
    busy_.unlock();
  }

 private:
  explicit Pool(int workers) : owner_(getpid()) {
    for (int i = 1; i <= workers; ++i) std::thread([this, i] { work(i); }).detach();
  }

  void work(int index) {
    in_worker_ = true;
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)> *job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (index >= chunks_) continue;
        job = job_;
      }
      (*job)(index);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const pid_t owner_;
  std::mutex busy_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)> *job_ = nullptr;
  int chunks_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  inline static thread_local bool in_worker_ = false;
};

// Run body(begin, end, chunk) over [0, n) in contiguous chunks of at least min_chunk, one per
// thread (chunk < thread_count()).
template <typename Body>
void parallel_chunks(int64_t n, int64_t min_chunk, Body body) {
  const int64_t chunks = std::min<int64_t>(thread_count(), std::max<int64_t>(1, n / min_chunk));
  if (chunks <= 1) {
    body(0, n, 0);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  Pool::instance().run(static_cast<int>(chunks), [&](int c) {
    const int64_t begin = c * step, end = std::min(n, begin + step);
    if (begin < end) body(begin, end, c);
  });
}

// Run body(begin, end) over [0, n) in contiguous chunks of at least min_chunk, one per thread.
template <typename Body>
void parallel_for(int64_t n, int64_t min_chunk, Body body) {
  parallel_chunks(n, min_chunk, [&](int64_t begin, int64_t end, int64_t) { body(begin, end); });
}

}  // namespace
