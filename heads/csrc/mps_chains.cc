// The environment chains of the MPS simulator (heads/mps.py: `_left_chain`, `_right_chain` and their
// reverse passes) as XLA FFI handlers for the CPU: per example, the whole chain over the sites with the
// environment and the site in L1, every product a register-blocked loop over rows of 16 or 64 numbers.
// Single-threaded per call; every example is computed alone, so its bits do not depend on its batch.
//
// Built three times over (x86-64: AVX-512, AVX2+FMA, the SSE2 baseline; elsewhere only the last), the
// variant picked once per process from the CPU's features, so one machine always runs the same code.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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
  void (*mfwd)(const CxrMeasure&, const T*, const T*, const T*, T*, T*, T*, T*, T*);
  void (*mbwd)(const CxrMeasure&, const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*, T*,
               T*);
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

ffi::Error MeasureFwdImpl(ffi::AnyBuffer tp, ffi::AnyBuffer rot, ffi::AnyBuffer signs, ffi::Span<const int32_t> ring,
                          ffi::Span<const int32_t> plan, ffi::Result<ffi::AnyBuffer> z, ffi::Result<ffi::AnyBuffer> lefts,
                          ffi::Result<ffi::AnyBuffer> rights, ffi::Result<ffi::AnyBuffer> xl,
                          ffi::Result<ffi::AnyBuffer> xr) {
  CxrMeasure m;
  if (auto e = measure_of(tp, rot, signs, ring, plan, &m); e.failure()) return e;
  CXR_DISPATCH(tp.element_type(), impl<T>().mfwd(m, in<T>(tp), in<T>(rot), in<T>(signs), out<T>(z), out<T>(lefts),
                                                 out<T>(rights), out<T>(xl), out<T>(xr)))
}

ffi::Error MeasureBwdImpl(ffi::AnyBuffer tp, ffi::AnyBuffer rot, ffi::AnyBuffer signs, ffi::AnyBuffer lefts,
                          ffi::AnyBuffer rights, ffi::AnyBuffer xl, ffi::AnyBuffer xr, ffi::AnyBuffer z_bar,
                          ffi::Span<const int32_t> ring, ffi::Span<const int32_t> plan,
                          ffi::Result<ffi::AnyBuffer> d_tp, ffi::Result<ffi::AnyBuffer> d_rot) {
  CxrMeasure m;
  if (auto e = measure_of(tp, rot, signs, ring, plan, &m); e.failure()) return e;
  CXR_DISPATCH(tp.element_type(),
               impl<T>().mbwd(m, in<T>(tp), in<T>(rot), in<T>(signs), in<T>(lefts), in<T>(rights), in<T>(xl),
                              in<T>(xr), in<T>(z_bar), out<T>(d_tp), out<T>(d_rot)))
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
