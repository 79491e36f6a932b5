// The environment chains of the MPS simulator (heads/mps.py: `_left_chain`, `_right_chain` and their
// reverse passes) as XLA FFI handlers for the CPU: per example, the whole chain over the sites with the
// environment and the site in L1, every product a register-blocked loop over rows of 16 or 64 numbers.
// Every example is computed alone, so its bits do not depend on its batch, nor on which thread computes it:
// a `measure` call that finds a core idle (fewer threads in kernel calls than usable cores) shares its
// examples with helper threads of a small persistent pool (`CxrWork`), each taking the next example.
//
// Built three times over (x86-64: AVX-512, AVX2+FMA, the SSE2 baseline; elsewhere only the last), the
// variant picked once per process from the CPU's features, so one machine always runs the same code.

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// The shapes and static tables of one mps_ffi.measure call (see mps_chains_impl.inc).
struct CxrMeasure {
  long G, S, B, Dp, D, n;
  const int* ring;  // S·16 codes j·8 + k·4 + o, or nullptr (no ring)
  const int* plan;  // n × (j, c, h)
  bool rot_per_example;
  long sign_stride;
};

// The threads computing kernel examples now (callers and helpers, across every call in the process) and
// how many may (the usable cores, or CXR_MPS_THREADS, or cxr_mps_set_threads).
static std::atomic<int> cxr_running{0};
static std::atomic<int> cxr_limit{0};
static std::atomic<long> cxr_helped{0};  // examples computed by helper threads (for tests)

// The examples of one call, handed out one at a time: index g·B + b, or −1 when none is left. A helper
// stops taking (gives its core back) as soon as more threads compute than the limit allows, e.g. when
// another block's call starts; the caller takes until none is left.
struct CxrWork {
  std::atomic<long> next{0};
  long total = 0;
  long take(bool helper) {
    if (helper && cxr_running.load(std::memory_order_relaxed) > cxr_limit.load(std::memory_order_relaxed)) return -1;
    const long i = next.fetch_add(1, std::memory_order_relaxed);
    if (i >= total) return -1;
    if (helper) cxr_helped.fetch_add(1, std::memory_order_relaxed);
    return i;
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
#define CXR_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
namespace k_avx512 {
#define VB 64
#include "mps_chains_impl.inc"
#undef VB
}  // namespace k_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace k_avx2 {
#define VB 32
#include "mps_chains_impl.inc"
#undef VB
}  // namespace k_avx2
#pragma GCC pop_options
#endif

namespace k_base {
#define VB 16
#include "mps_chains_impl.inc"
#undef VB
}  // namespace k_base

namespace {

template <class T>
struct Impl {
  void (*fwd)(const k_base::Dims&, const T*, const T*, long, T*, T*, T*, T*);
  void (*bwd)(const k_base::Dims&, const T*, const T*, long, const T*, const T*, const T*, const T*, T*);
  void (*mfwd)(const CxrMeasure&, CxrWork&, bool, const T*, const T*, const T*, T*, T*, T*, T*, T*);
  void (*mbwd)(const CxrMeasure&, CxrWork&, bool, const T*, const T*, const T*, const T*, const T*, const T*, const T*,
               const T*, T*, T*);
};

// Every namespace's Dims is the same aggregate; the handlers pass k_base::Dims.
#define CXR_IMPL(ns, T)                                                                                     \
  Impl<T> {                                                                                                 \
    [](const k_base::Dims& d, const T* t, const T* s, long ss, T* l, T* r, T* xl, T* xr) {                  \
      ns::chains_fwd<T>(ns::Dims{d.G, d.S, d.B, d.D, 0, 0, 0, 0}, t, s, ss, l, r, xl, xr);                  \
    },                                                                                                      \
        [](const k_base::Dims& d, const T* t, const T* s, long ss, const T* xl, const T* xr, const T* lb,   \
           const T* rb, T* dt) {                                                                            \
          ns::chains_bwd<T>(ns::Dims{d.G, d.S, d.B, d.D, 0, 0, 0, 0}, t, s, ss, xl, xr, lb, rb, dt);        \
        },                                                                                                  \
        ns::measure_fwd<T>, ns::measure_bwd<T>                                                              \
  }

int pick() {
#ifdef CXR_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

int variant() {
  static const int v = [] {
    const char* force = std::getenv("CXR_MPS_ISA");  // for tests and comparisons: base, avx2, avx512
    int best = pick();
    if (force) {
      int want = std::strcmp(force, "base") == 0 ? 0 : std::strcmp(force, "avx2") == 0 ? 1 : 2;
      return std::min(want, best);
    }
    return best;
  }();
  return v;
}

template <class T>
const Impl<T>& impl() {
#ifdef CXR_X86
  static const Impl<T> table[3] = {CXR_IMPL(k_base, T), CXR_IMPL(k_avx2, T), CXR_IMPL(k_avx512, T)};
#else
  static const Impl<T> table[1] = {CXR_IMPL(k_base, T)};
#endif
  return table[variant()];
}

// ---------------------------------------------------------------- sharing a call's examples with idle cores
//
// A persistent pool of (limit − 1) helper threads, started on first use. A call posts its work when fewer
// threads compute than the limit; idle helpers join it and take examples until none is left or the
// machine's cores are all wanted (see CxrWork::take). Which thread computes an example does not change its
// bits: every example runs the same code on its own inputs and writes only its own outputs.

int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

int limit() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (cxr_limit.load() > 0) return;  // set by cxr_mps_set_threads
    const char* env = std::getenv("CXR_MPS_THREADS");
    const int n = env ? std::atoi(env) : 0;
    int expected = 0;
    cxr_limit.compare_exchange_strong(expected, n > 0 ? n : usable_cores());
  });
  return cxr_limit.load(std::memory_order_relaxed);
}

struct Job {
  void (*run)(void*, CxrWork&, bool);
  void* ctx;
  CxrWork* work;
  int want = 0;  // helpers that may still join
  std::atomic<int> active{0};
};

// Never destroyed: at exit the helpers still wait on the condition variable, whose destructor would wait
// for them forever.
std::mutex& pool_mu = *new std::mutex;
std::condition_variable& pool_cv = *new std::condition_variable;
Job* posted = nullptr;
int helpers = 0;  // started so far

void helper_loop() {
  pthread_setname_np(pthread_self(), "cxr_mps_helper");
  for (;;) {
    Job* job;
    {
      std::unique_lock<std::mutex> lk(pool_mu);
      pool_cv.wait(lk, [] { return posted != nullptr && posted->want > 0; });
      job = posted;
      --job->want;
      job->active.fetch_add(1);
      cxr_running.fetch_add(1);
    }
    job->run(job->ctx, *job->work, true);
    cxr_running.fetch_sub(1);
    job->active.fetch_sub(1, std::memory_order_release);
  }
}

// Runs run(ctx, work, helper) on this thread, and on idle helpers while cores are free.
void share(long total, void (*run)(void*, CxrWork&, bool), void* ctx) {
  CxrWork work;
  work.total = total;
  const int lim = limit();
  const int now = cxr_running.fetch_add(1) + 1;
  Job job{run, ctx, &work};
  bool shared = false;
  if (total > 1 && now < lim) {
    std::lock_guard<std::mutex> lk(pool_mu);
    if (posted == nullptr) {
      while (helpers < lim - 1) {
        std::thread(helper_loop).detach();
        ++helpers;
      }
      job.want = int(std::min<long>(lim - now, total - 1));
      posted = &job;
      shared = true;
    }
  }
  if (shared) pool_cv.notify_all();
  run(ctx, work, false);
  if (shared) {
    {
      std::lock_guard<std::mutex> lk(pool_mu);
      posted = nullptr;  // no helper joins after this; wait for those that did
    }
    while (job.active.load(std::memory_order_acquire) > 0) std::this_thread::yield();
  }
  cxr_running.fetch_sub(1);
}

// t (..., S, B, D, 4, D); signs (..., P) or (P,) with P = 4 (left) or 8 (right).
ffi::Error dims_of(const ffi::AnyBuffer& t, const ffi::AnyBuffer& signs, long P, k_base::Dims* d, long* stride) {
  auto dims = t.dimensions();
  const long r = long(dims.size());
  if (r < 5) return ffi::Error::InvalidArgument("mps chains: the sites must have rank >= 5 (S, B, D, 4, D)");
  d->S = dims[r - 5], d->B = dims[r - 4], d->D = dims[r - 3];
  if (dims[r - 2] != 4 || dims[r -1] != d->D)
    return ffi::Error::InvalidArgument("mps chains: a site must be (D, 4, D)");
  d->G = 1;
  for (long i = 0; i < r - 5; ++i) d->G *= dims[i];
  const long n = long(signs.element_count());
  if (n == P) {
    *stride = 0;
  } else if (n == P * d->G) {
    *stride = P;
  } else {
    return ffi::Error::InvalidArgument("mps chains: the signs do not match the sites' leading axes");
  }
  if (signs.element_type() != t.element_type())
    return ffi::Error::InvalidArgument("mps chains: sites and signs differ in type");
  return ffi::Error::Success();
}

template <class T>
const T* in(const ffi::AnyBuffer& b) {
  return static_cast<const T*>(b.untyped_data());
}
template <class T>
T* out(ffi::Result<ffi::AnyBuffer>& b) {
  return static_cast<T*>(b->untyped_data());
}

#define CXR_DISPATCH(type, CALL)                                                       \
  switch (type) {                                                                      \
    case ffi::DataType::F32: {                                                         \
      using T = float;                                                                 \
      CALL;                                                                            \
      return ffi::Error::Success();                                                    \
    }                                                                                  \
    case ffi::DataType::F64: {                                                         \
      using T = double;                                                                \
      CALL;                                                                            \
      return ffi::Error::Success();                                                    \
    }                                                                                  \
    default:                                                                           \
      return ffi::Error::InvalidArgument("mps chains: only float32 and float64 sites"); \
  }

ffi::Error FwdImpl(ffi::AnyBuffer t, ffi::AnyBuffer signs, ffi::Result<ffi::AnyBuffer> lefts,
                   ffi::Result<ffi::AnyBuffer> rights, ffi::Result<ffi::AnyBuffer> xl, ffi::Result<ffi::AnyBuffer> xr) {
  k_base::Dims d;
  long stride;
  if (auto e = dims_of(t, signs, 12, &d, &stride); e.failure()) return e;
  CXR_DISPATCH(t.element_type(), impl<T>().fwd(d, in<T>(t), in<T>(signs), stride, out<T>(lefts), out<T>(rights),
                                               out<T>(xl), out<T>(xr)))
}

ffi::Error BwdImpl(ffi::AnyBuffer t, ffi::AnyBuffer signs, ffi::AnyBuffer xl, ffi::AnyBuffer xr,
                   ffi::AnyBuffer lefts_bar, ffi::AnyBuffer rights_bar, ffi::Result<ffi::AnyBuffer> d_t) {
  k_base::Dims d;
  long stride;
  if (auto e = dims_of(t, signs, 12, &d, &stride); e.failure()) return e;
  CXR_DISPATCH(t.element_type(), impl<T>().bwd(d, in<T>(t), in<T>(signs), stride, in<T>(xl), in<T>(xr),
                                               in<T>(lefts_bar), in<T>(rights_bar), out<T>(d_t)))
}

// tp (..., S, B, Dp, 4, Dp); rot (..., S, 4, 4) or (..., S, B, 4, 4); signs (..., 6, 4) or (6, 4); ring: S·16
// codes or one −1 (no ring); plan: n × 3.
ffi::Error measure_of(const ffi::AnyBuffer& tp, const ffi::AnyBuffer& rot, const ffi::AnyBuffer& signs,
                      ffi::Span<const int32_t> ring, ffi::Span<const int32_t> plan, CxrMeasure* m) {
  auto dims = tp.dimensions();
  const long r = long(dims.size());
  if (r < 5) return ffi::Error::InvalidArgument("mps measure: the sites must have rank >= 5 (S, B, Dp, 4, Dp)");
  m->S = dims[r - 5], m->B = dims[r - 4], m->Dp = dims[r - 3];
  if (dims[r - 2] != 4 || dims[r - 1] != m->Dp)
    return ffi::Error::InvalidArgument("mps measure: a site must be (Dp, 4, Dp)");
  m->G = 1;
  for (long i = 0; i < r - 5; ++i) m->G *= dims[i];
  const bool has_ring = !(ring.size() == 1 && ring[0] < 0);
  if (has_ring && long(ring.size()) != 16 * m->S)
    return ffi::Error::InvalidArgument("mps measure: the ring table must hold 16 codes per site");
  if (has_ring)  // 4× sparse: the bits a site sends (j, k) depend on its new physical index p alone
    for (long s = 0; s < m->S; ++s)
      for (int x = 0; x < 16; ++x)
        if (ring[s * 16 + x] < 0 || ring[s * 16 + x] > 15 || (ring[s * 16 + x] >> 2) != (ring[s * 16 + x % 4] >> 2))
          return ffi::Error::InvalidArgument("mps measure: a ring code is out of range or not 4x sparse");
  m->ring = has_ring ? ring.begin() : nullptr;
  m->D = has_ring ? 4 * m->Dp : m->Dp;
  if (plan.size() % 3 != 0) return ffi::Error::InvalidArgument("mps measure: the plan must be n × (j, c, h)");
  m->n = long(plan.size()) / 3;
  m->plan = plan.begin();
  for (long k = 0; k < m->n; ++k)
    if (plan[3 * k] < 0 || plan[3 * k] > m->S || plan[3 * k + 1] < 0 || plan[3 * k + 1] > 1 || plan[3 * k + 2] > 2 ||
        (plan[3 * k + 2] >= 0 && (plan[3 * k] != 1 || m->S < 1)))
      return ffi::Error::InvalidArgument("mps measure: a plan entry is out of range");
  const long rr = long(rot.dimensions().size());
  if (rr == r - 2) {
    m->rot_per_example = false;
  } else if (rr == r - 1) {
    m->rot_per_example = true;
  } else {
    return ffi::Error::InvalidArgument("mps measure: the rotations must be (S, 4, 4) or (S, B, 4, 4)");
  }
  if (long(rot.element_count()) != m->G * m->S * (m->rot_per_example ? m->B : 1) * 16)
    return ffi::Error::InvalidArgument("mps measure: the rotations do not match the sites");
  const long n = long(signs.element_count());
  if (n == 24) {
    m->sign_stride = 0;
  } else if (n == 24 * m->G) {
    m->sign_stride = 24;
  } else {
    return ffi::Error::InvalidArgument("mps measure: the signs do not match the sites' leading axes");
  }
  if (signs.element_type() != tp.element_type() || rot.element_type() != tp.element_type())
    return ffi::Error::InvalidArgument("mps measure: sites, rotations and signs differ in type");
  return ffi::Error::Success();
}

template <class F>
void trampoline(void* f, CxrWork& w, bool helper) {
  (*static_cast<F*>(f))(w, helper);
}

ffi::Error MeasureFwdImpl(ffi::AnyBuffer tp, ffi::AnyBuffer rot, ffi::AnyBuffer signs, ffi::Span<const int32_t> ring,
                          ffi::Span<const int32_t> plan, ffi::Result<ffi::AnyBuffer> z, ffi::Result<ffi::AnyBuffer> lefts,
                          ffi::Result<ffi::AnyBuffer> rights, ffi::Result<ffi::AnyBuffer> xl,
                          ffi::Result<ffi::AnyBuffer> xr) {
  CxrMeasure m;
  if (auto e = measure_of(tp, rot, signs, ring, plan, &m); e.failure()) return e;
  CXR_DISPATCH(tp.element_type(), {
    auto call = [&](CxrWork& w, bool helper) {
      impl<T>().mfwd(m, w, helper, in<T>(tp), in<T>(rot), in<T>(signs), out<T>(z), out<T>(lefts), out<T>(rights),
                     out<T>(xl), out<T>(xr));
    };
    share(m.G * m.B, trampoline<decltype(call)>, &call);
  })
}

ffi::Error MeasureBwdImpl(ffi::AnyBuffer tp, ffi::AnyBuffer rot, ffi::AnyBuffer signs, ffi::AnyBuffer lefts,
                          ffi::AnyBuffer rights, ffi::AnyBuffer xl, ffi::AnyBuffer xr, ffi::AnyBuffer z_bar,
                          ffi::Span<const int32_t> ring, ffi::Span<const int32_t> plan,
                          ffi::Result<ffi::AnyBuffer> d_tp, ffi::Result<ffi::AnyBuffer> d_rot) {
  CxrMeasure m;
  if (auto e = measure_of(tp, rot, signs, ring, plan, &m); e.failure()) return e;
  CXR_DISPATCH(tp.element_type(), {
    auto call = [&](CxrWork& w, bool helper) {
      impl<T>().mbwd(m, w, helper, in<T>(tp), in<T>(rot), in<T>(signs), in<T>(lefts), in<T>(rights), in<T>(xl),
                     in<T>(xr), in<T>(z_bar), out<T>(d_tp), out<T>(d_rot));
    };
    share(m.G * m.B, trampoline<decltype(call)>, &call);
  })
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CxrMpsChainsFwd, FwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // t (..., S, B, D, 4, D)
                                  .Arg<ffi::AnyBuffer>()  // signs (..., 3, 4)
                                  .Ret<ffi::AnyBuffer>()  // lefts (..., S + 1, B, D, D)
                                  .Ret<ffi::AnyBuffer>()  // rights (..., S + 1, B, 2, D, D)
                                  .Ret<ffi::AnyBuffer>()  // xl (..., S, B, D, 4, D)
                                  .Ret<ffi::AnyBuffer>());  // xr (..., S, B, 2, D, 4, D)
XLA_FFI_DEFINE_HANDLER_SYMBOL(CxrMpsChainsBwd, BwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // t
                                  .Arg<ffi::AnyBuffer>()  // signs
                                  .Arg<ffi::AnyBuffer>()  // xl
                                  .Arg<ffi::AnyBuffer>()  // xr
                                  .Arg<ffi::AnyBuffer>()  // the cotangent of lefts
                                  .Arg<ffi::AnyBuffer>()  // the cotangent of rights
                                  .Ret<ffi::AnyBuffer>());  // d_t

XLA_FFI_DEFINE_HANDLER_SYMBOL(CxrMpsMeasureFwd, MeasureFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // tp (..., S, B, Dp, 4, Dp): the sites before the last ring
                                  .Arg<ffi::AnyBuffer>()  // rot (..., S, [B,] 4, 4)
                                  .Arg<ffi::AnyBuffer>()  // signs (..., 6, 4)
                                  .Attr<ffi::Span<const int32_t>>("ring")
                                  .Attr<ffi::Span<const int32_t>>("plan")
                                  .Ret<ffi::AnyBuffer>()  // z (..., B, n)
                                  .Ret<ffi::AnyBuffer>()  // lefts (..., S + 1, B, D, D)
                                  .Ret<ffi::AnyBuffer>()  // rights (..., S + 1, B, 2, D, D)
                                  .Ret<ffi::AnyBuffer>()  // yl (..., S, B, 4, D, D/2)
                                  .Ret<ffi::AnyBuffer>());  // yr (..., S, B, 2, 4, D, D/2)
XLA_FFI_DEFINE_HANDLER_SYMBOL(CxrMpsMeasureBwd, MeasureBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // tp
                                  .Arg<ffi::AnyBuffer>()  // rot
                                  .Arg<ffi::AnyBuffer>()  // signs
                                  .Arg<ffi::AnyBuffer>()  // lefts
                                  .Arg<ffi::AnyBuffer>()  // rights
                                  .Arg<ffi::AnyBuffer>()  // xl
                                  .Arg<ffi::AnyBuffer>()  // xr
                                  .Arg<ffi::AnyBuffer>()  // the cotangent of z
                                  .Attr<ffi::Span<const int32_t>>("ring")
                                  .Attr<ffi::Span<const int32_t>>("plan")
                                  .Ret<ffi::AnyBuffer>()  // d_tp (..., S, B, Dp, 4, Dp)
                                  .Ret<ffi::AnyBuffer>());  // d_rot (..., S, B, 4, 4)

extern "C" __attribute__((visibility("default"))) const char* cxr_mps_isa() {
  static const char* names[3] = {"base", "avx2", "avx512"};
  return names[variant()];
}

// The most threads kernel calls may compute with at once (1: every call on its caller's thread alone);
// n <= 0 keeps the setting. Returns the setting before. For tests and comparisons (mps_ffi.set_threads).
extern "C" __attribute__((visibility("default"))) int cxr_mps_set_threads(int n) {
  const int before = limit();
  if (n > 0) cxr_limit.store(n);
  return before;
}

// Examples computed by helper threads since the library was loaded (for tests).
extern "C" __attribute__((visibility("default"))) long cxr_mps_helped() { return cxr_helped.load(); }
