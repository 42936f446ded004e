// Warp collectives (__shfl_*_sync, __syncwarp, votes): a rendezvous of the lanes named in the
// mask. It completes when every lane of the mask has arrived; lanes outside the mask run on, as
// under independent thread scheduling (sm_70+), so lanes may arrive from different call sites.
// Errors: the caller is not in its mask, the mask names lanes that do not exist or have exited,
// or lanes named by each other's masks disagree on the operation, mask or width.
#pragma once

#include <cstring>
#include <string>
#include <type_traits>

#include "scheduler.h"

namespace simt::detail {

enum class WarpKind : uint8_t { Sync, Idx, Up, Down, Xor, Ballot, Any, All };

inline const char* warp_op_name(WarpKind k) {
  switch (k) {
    case WarpKind::Sync: return "__syncwarp";
    case WarpKind::Idx: return "__shfl_sync";
    case WarpKind::Up: return "__shfl_up_sync";
    case WarpKind::Down: return "__shfl_down_sync";
    case WarpKind::Xor: return "__shfl_xor_sync";
    case WarpKind::Ballot: return "__ballot_sync";
    case WarpKind::Any: return "__any_sync";
    case WarpKind::All: return "__all_sync";
  }
  return "?";
}

// The lane a shuffle reads, per the CUDA/PTX rules: the warp is split into segments of `width`
// lanes; idx wraps inside the segment, up/down out of it return the caller's own value, xor may
// read earlier segments but not later ones.
inline int source_lane(WarpKind k, int lane, int width, int arg) {
  int seg = lane & ~(width - 1), pos = lane & (width - 1);
  unsigned delta = unsigned(arg);
  switch (k) {
    case WarpKind::Idx: return seg + (arg & (width - 1));
    case WarpKind::Up: return unsigned(pos) >= delta ? lane - int(delta) : lane;
    case WarpKind::Down: return uint64_t(pos) + delta < unsigned(width) ? lane + int(delta) : lane;
    case WarpKind::Xor: {
      unsigned s = unsigned(lane) ^ unsigned(arg);
      return s < unsigned(seg + width) ? int(s) : lane;
    }
    default: return lane;
  }
}

inline std::string lanes(uint32_t m) {
  std::vector<uint64_t> ids;
  for (int l = 0; l < 32; ++l)
    if (m >> l & 1) ids.push_back(uint64_t(l));
  return "[" + id_ranges(ids) + "]";
}

inline void complete(Warp& w, const WarpOp& op, WarpKind kind, Thread& caller) {
  uint32_t votes = 0;
  for (int l = 0; l < 32; ++l)
    if ((op.mask >> l & 1) && w.lanes[l]->value != 0) votes |= 1u << l;
  for (int l = 0; l < 32; ++l) {
    if (!(op.mask >> l & 1)) continue;
    Thread& o = *w.lanes[l];
    switch (kind) {
      case WarpKind::Sync: o.result = 0; break;
      case WarpKind::Ballot: o.result = votes; break;
      case WarpKind::Any: o.result = votes != 0; break;
      case WarpKind::All: o.result = votes == op.mask; break;
      default:
        // Reading a lane outside the mask is undefined: return NaN/all-ones bytes, which the
        // tests' comparisons catch if the value is used.
        o.result = (op.mask >> o.src & 1) ? w.lanes[o.src]->value : ~uint64_t(0);
    }
    if (&o != &caller) wake(o);
  }
}

inline uint64_t warp_collective(WarpKind kind, uint32_t mask, int width, uint64_t value, int arg,
                                Site site) {
  const char* name = warp_op_name(kind);
  Thread& t = self(name);
  Block& b = *t.block;
  Warp& w = b.warps[t.linear / 32];
  int lane = int(t.linear % 32);
  uint32_t bit = 1u << lane;
  auto fail = [&](const std::string& why) {
    throw Error("simt: " + std::string(name) + "(mask " + hex(mask) + ", width " +
                std::to_string(width) + ") at " + site.str() + " in " + describe(t) + " (lane " +
                std::to_string(lane) + "): " + why);
  };
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail("width must be a power of two in [1, 32]");
  if (!(mask & bit)) fail("the mask does not include the calling lane");
  if (mask & ~w.present)
    fail("the mask names lanes " + lanes(mask & ~w.present) + " that do not exist (block of " +
         std::to_string(b.threads.size()) + " threads)");
  if (mask & w.exited) fail("the mask names lanes " + lanes(mask & w.exited) + " that have exited");

  WarpOp* op = nullptr;
  for (WarpOp& p : w.pending) {
    if (p.mask & bit) {
      op = &p;
      if ((p.op != name && std::strcmp(p.op, name) != 0) || p.mask != mask || p.width != width)
        fail("lanes " + lanes(p.arrived) + " wait for this lane in " + p.op + "(mask " +
             hex(p.mask) + ", width " + std::to_string(p.width) + ")");
    } else if (p.mask & mask) {
      fail("lanes " + lanes(p.arrived) + " of the mask wait in " + p.op + "(mask " +
           hex(p.mask) + ")");
    }
  }
  if (op == nullptr) {
    w.pending.push_back({name, mask, width, 0});
    op = &w.pending.back();
  }
  t.mask = mask;
  t.value = value;
  t.src = source_lane(kind, lane, width, arg);
  op->arrived |= bit;
  if (op->arrived != mask) {
    suspend(t, Wait::Warp, name, site);
    return t.result;
  }
  complete(w, *op, kind, t);
  w.pending.erase(w.pending.begin() + (op - w.pending.data()));
  return t.result;
}

template <class T>
T shuffle(WarpKind kind, uint32_t mask, T var, int arg, int width, Site site) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "warp shuffles move trivially copyable values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, static_cast<const void*>(&var), sizeof(T));
  bits = warp_collective(kind, mask, width, bits, arg, site);
  std::memcpy(static_cast<void*>(&var), &bits, sizeof(T));
  return var;
}

}  // namespace simt::detail
