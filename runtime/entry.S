/* ulp_entry: the tracker every call into a prepared library passes.
 *
 * A trampoline (or a patched function's entry) jumps here with
 *   %r10 = the function's descriptor (struct ulp_func_desc),
 *   %rsp = exactly as the caller left it: (%rsp) is the return address.
 * Only %r10, %r11 and the flags may be clobbered: every argument register,
 * %rax (the vector count of varargs calls) and the stack reach the chosen
 * body untouched, so unwinders, exceptions and debuggers see the caller's
 * frames as if the function had been called directly.
 *
 * External entry: the thread has no live activation of the library on this
 * stack.  The outermost activation is recorded as the stack slot holding its
 * return address and the value in it; it is still live while we are below
 * that slot and the slot still holds that value.  Only an external entry
 * takes the global universe.  Then the newest version whose interval
 * [applied_at, reverted_at) holds the thread's universe is chosen; the list
 * ends with the original body, valid in every universe. */

#include "ulp_layout.h"

    .text
    .globl  ulp_entry
    .type   ulp_entry, @function
    .p2align 4
ulp_entry:
    .cfi_startproc
    endbr64
    movq    FD_TLS_OFFSET(%r10), %r11
    testq   %r11, %r11
    jz      .Lregister
    cmpq    %fs:REC_OUTER_SLOT(%r11), %rsp
    jae     .Lexternal                  /* at or above the recorded slot */
    movq    %rax, %fs:REC_SCRATCH(%r11)
    movq    %fs:REC_OUTER_SLOT(%r11), %rax
    movq    (%rax), %rax
    cmpq    %fs:REC_OUTER_RET(%r11), %rax
    jne     .Lexternal_saved            /* the outer activation has returned */
    movq    %fs:REC_UNIVERSE(%r11), %rax    /* nested: keep the universe */
    jmp     .Lselect

.Lexternal:
    movq    %rax, %fs:REC_SCRATCH(%r11)
.Lexternal_saved:
    movq    %rsp, %fs:REC_OUTER_SLOT(%r11)
    movq    (%rsp), %rax
    movq    %rax, %fs:REC_OUTER_RET(%r11)
    incq    %fs:REC_ENTRIES(%r11)
    movq    ulp_global_universe(%rip), %rax
    movq    %rax, %fs:REC_UNIVERSE(%r11)

.Lselect:                               /* %rax = universe, %r10 = descriptor */
    movq    FD_VERSIONS(%r10), %r10
.Lnext_version:
    cmpq    V_APPLIED_AT(%r10), %rax
    jb      .Lskip                      /* applied after this universe */
    cmpq    V_REVERTED_AT(%r10), %rax
    jb      .Lfound
.Lskip:
    movq    V_NEXT(%r10), %r10
    jmp     .Lnext_version
.Lfound:
    movq    V_TARGET(%r10), %r10
    movq    %fs:REC_SCRATCH(%r11), %rax
    jmp     *%r10

/* First entry into a library not yet known to the runtime: register it in C
 * (code built without vector registers, so only the integer argument
 * registers need saving), then start over. */
.Lregister:
    pushq   %rbp
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbp, 0
    movq    %rsp, %rbp
    .cfi_def_cfa_register %rbp
    pushq   %rdi
    pushq   %rsi
    pushq   %rdx
    pushq   %rcx
    pushq   %r8
    pushq   %r9
    pushq   %rax
    pushq   %r10
    andq    $-16, %rsp
    movq    %r10, %rdi
    call    ulp_register_function
    leaq    -64(%rbp), %rsp
    popq    %r10
    popq    %rax
    popq    %r9
    popq    %r8
    popq    %rcx
    popq    %rdx
    popq    %rsi
    popq    %rdi
    popq    %rbp
    .cfi_def_cfa %rsp, 8
    jmp     ulp_entry
    .cfi_endproc
    .size   ulp_entry, .-ulp_entry

    .section .note.GNU-stack,"",@progbits
