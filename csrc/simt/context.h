// Fiber contexts: save the running stack, resume another one.
//
// x86-64 uses a hand-written switch (callee-saved registers + stack pointer, ~3 ns) because
// swapcontext makes a sigprocmask syscall on every switch (~100x slower). Other architectures,
// or -DSIMT_USE_UCONTEXT, fall back to <ucontext.h>. The FP control registers (MXCSR, x87 CW)
// are not switched: kernels do not change the rounding mode.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) && !defined(SIMT_USE_UCONTEXT)
#define SIMT_ASM_CONTEXT 1
#else
#include <ucontext.h>
#endif

namespace simt::detail {

using FiberMain = void (*)(void*);

#ifdef SIMT_ASM_CONTEXT

struct Context {
  void* sp = nullptr;
};

// Pushes the SysV callee-saved registers, stores rsp in *save, loads `load`, pops, returns
// into the other fiber.
__attribute__((naked, noinline)) inline void asm_switch(void** /*save*/, void* /*load*/) {
  asm("pushq %rbp\n\t"
      "pushq %rbx\n\t"
      "pushq %r12\n\t"
      "pushq %r13\n\t"
      "pushq %r14\n\t"
      "pushq %r15\n\t"
      "movq %rsp, (%rdi)\n\t"
      "movq %rsi, %rsp\n\t"
      "popq %r15\n\t"
      "popq %r14\n\t"
      "popq %r13\n\t"
      "popq %r12\n\t"
      "popq %rbx\n\t"
      "popq %rbp\n\t"
      "ret\n\t");
}

// First code a new fiber runs (asm_switch "returns" here): call fn(arg) from r13/r12. The
// fiber main never returns. `.cfi_undefined rip` marks this as the outermost frame so that
// unwinders and debuggers stop here instead of walking garbage.
__attribute__((naked, noinline)) inline void asm_fiber_start() {
  asm(".cfi_undefined %rip\n\t"
      "movq %r12, %rdi\n\t"
      "callq *%r13\n\t"
      "ud2\n\t");
}

inline void context_init(Context& c, void* stack_lo, size_t size, FiberMain fn, void* arg) {
  // After asm_switch pops 6 registers and returns, rsp must be 16-byte aligned so that the
  // `call` in asm_fiber_start gives fn the ABI's entry alignment (rsp ≡ 8 mod 16).
  auto top = (reinterpret_cast<uintptr_t>(stack_lo) + size) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top - 72);
  sp[0] = nullptr;                                          // r15
  sp[1] = nullptr;                                          // r14
  sp[2] = reinterpret_cast<void*>(fn);                      // r13
  sp[3] = arg;                                              // r12
  sp[4] = nullptr;                                          // rbx
  sp[5] = nullptr;                                          // rbp
  sp[6] = reinterpret_cast<void*>(&asm_fiber_start);        // return address
  c.sp = sp;
}

inline void context_switch(Context& from, Context& to) { asm_switch(&from.sp, to.sp); }

#else  // ucontext fallback

struct Context {
  ucontext_t uc;
};

// makecontext passes only int arguments: split the two pointers into 32-bit halves.
inline void ucontext_entry(unsigned fn_hi, unsigned fn_lo, unsigned arg_hi, unsigned arg_lo) {
  auto join = [](unsigned hi, unsigned lo) { return (uintptr_t(hi) << 32) | uintptr_t(lo); };
  auto fn = reinterpret_cast<FiberMain>(join(fn_hi, fn_lo));
  fn(reinterpret_cast<void*>(join(arg_hi, arg_lo)));
}

inline void context_init(Context& c, void* stack_lo, size_t size, FiberMain fn, void* arg) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack_lo;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  auto f = uint64_t(reinterpret_cast<uintptr_t>(fn));
  auto a = uint64_t(reinterpret_cast<uintptr_t>(arg));
  makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 4, unsigned(f >> 32),
              unsigned(f), unsigned(a >> 32), unsigned(a));
}

inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace simt::detail
