/* The tracker's two entry points (docs/consistency.md, "The paths").
 *
 * Outside a transition no call comes here but for a patched function's
 * internal calls: the trampoline (toolchain/templates/trampoline.s.j2)
 * jumps straight to where its descriptor's current_delta points, the body
 * or the newest version.  Two kinds of jump come here, with
 *   %rsp = exactly as the caller left it: (%rsp) is the return address,
 *   %r10 = the function's descriptor (struct ulp_func_desc), either
 *     odd (descriptor + 1), to ulp_entry: from the padding stub before the
 *       function's entry, reached by a call to the entry of a patched
 *       function, or by any call into a library not yet registered;
 *     even, to ulp_tracker: the descriptor's current target during a
 *       transition (transition.c points it here).
 * Only %r10, %r11 and the flags may be clobbered: every argument register,
 * %rax (the vector count of varargs calls) and the stack reach the chosen
 * body untouched, so unwinders, exceptions and debuggers see the caller's
 * frames as if the function had been called directly.
 *
 * No endbr64: the runtime is not built for IBT, so a process that loads it
 * does not enforce IBT. */

#include "ulp_layout.h"

/* Save the registers C code may clobber (it uses no vector registers) and
 * align the stack.  The saved %r11 is at -72(%rbp). */
.macro SAVE_INTEGER_REGISTERS
    pushq   %rbp
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbp, 0
    movq    %rsp, %rbp
    .cfi_def_cfa_register %rbp
    pushq   %rax
    pushq   %rdi
    pushq   %rsi
    pushq   %rdx
    pushq   %rcx
    pushq   %r8
    pushq   %r9
    pushq   %r10
    pushq   %r11
    andq    $-16, %rsp
.endm

/* Restore them; leaves the flags alone. */
.macro RESTORE_INTEGER_REGISTERS
    leaq    -72(%rbp), %rsp
    popq    %r11
    popq    %r10
    popq    %r9
    popq    %r8
    popq    %rcx
    popq    %rdx
    popq    %rsi
    popq    %rdi
    popq    %rax
    popq    %rbp
    .cfi_def_cfa %rsp, 8
    .cfi_restore %rbp
.endm

/* Jump where the descriptor in %r10 sends calls now. */
.macro JUMP_CURRENT
    movq    FD_CURRENT(%r10), %r11
    addq    %r10, %r11
    jmp     *%r11
.endm


/* Both entry points and tracker.c live in their own section: a thread whose
 * %rip, or a word of whose stack, lies there may be choosing a version
 * (transition.c); the rest of the runtime's code says nothing. */
    .section ulp_tracker_text, "ax", @progbits
    .globl  ulp_entry
    .type   ulp_entry, @function
    .p2align 4
ulp_entry:                              /* %r10 = descriptor + 1 */
    .cfi_startproc
    subq    $1, %r10
    cmpq    $0, FD_TLS_OFFSET(%r10)
    je      .Lregister
    JUMP_CURRENT

/* First entry into a library not yet known to the runtime: register it and
 * go on where its descriptor now points; a library that cannot be
 * registered runs its original body. */
.Lregister:
    SAVE_INTEGER_REGISTERS
    movq    %r10, %rdi
    call    ulp_register_function
    RESTORE_INTEGER_REGISTERS
    cmpq    $0, FD_TLS_OFFSET(%r10)
    je      .Lunregistered
    JUMP_CURRENT
.Lunregistered:
    movq    FD_BODY_DELTA(%r10), %r11
    addq    %r10, %r11
    jmp     *%r11
    .cfi_endproc
    .size   ulp_entry, .-ulp_entry


/* During a transition: tracker.c chooses the version for this thread. */
    .globl  ulp_tracker
    .hidden ulp_tracker
    .type   ulp_tracker, @function
    .p2align 4
ulp_tracker:                            /* %r10 = descriptor */
    .cfi_startproc
    SAVE_INTEGER_REGISTERS
    movq    %r10, %rdi
    leaq    8(%rbp), %rsi               /* the entry's %rsp: its return address */
    call    ulp_choose_version
    movq    %rax, -72(%rbp)             /* into the saved %r11 */
    RESTORE_INTEGER_REGISTERS
    jmp     *%r11
    .cfi_endproc
    .size   ulp_tracker, .-ulp_tracker

    .section .note.GNU-stack,"",@progbits
