/* ulp_entry: the tracker every call into a prepared library passes.
 *
 * A trampoline (or a patched function's entry stub) jumps here with
 *   %r10 = the function's descriptor (struct ulp_func_desc),
 *   %rsp = exactly as the caller left it: (%rsp) is the return address.
 * Only %r10, %r11 and the flags may be clobbered: every argument register,
 * %rax (the vector count of varargs calls) and the stack reach the chosen
 * body untouched, so unwinders, exceptions and debuggers see the caller's
 * frames as if the function had been called directly.
 *
 * An entry is nested when the thread still has a live activation of the
 * library: its outermost activation is recorded as the stack slot holding
 * its return address and the value stored there, and it is live while
 *   - we are below that slot on the same stack and the slot still holds
 *     that value, or
 *   - we run on the alternate signal stack and the slot is not on it (a
 *     handler interrupted the activation).
 * Otherwise the entry is external: the thread takes the global universe.
 * Then the newest version whose interval [applied_at, reverted_at) holds
 * the thread's universe is chosen; the list ends with the original body,
 * valid in every universe. */

#include "ulp_layout.h"


/* Save the registers C code may clobber (it uses no vector registers) and
 * align the stack. */
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

/* Below %rsp is free at a function entry (signal frames skip the red zone):
 * the tracker spills there instead of moving %rsp. */
#define SPILL1 -8(%rsp)
#define SPILL2 -16(%rsp)

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
    movq    FD_VERSIONS(%r10), %r10     /* from here %r10 walks the versions */
    cmpq    %fs:REC_OUTER_SLOT(%r11), %rsp
    jne     .Lnot_at_slot
    /* At the slot: the same call site called again after returning. */

.Lexternal:                             /* %r11 = record */
    movq    %rsp, %fs:REC_OUTER_SLOT(%r11)
    movq    %rax, SPILL1
    movq    (%rsp), %rax
    movq    %rax, %fs:REC_OUTER_RET(%r11)
    movq    ulp_global_universe(%rip), %rax
    movq    %rax, %fs:REC_UNIVERSE(%r11)
    movq    %rax, %r11
    movq    SPILL1, %rax

.Lselect:                               /* %r10 = version, %r11 = universe */
    cmpq    V_APPLIED_AT(%r10), %r11
    jb      .Lskip                      /* applied after this universe */
    cmpq    V_REVERTED_AT(%r10), %r11
    jae     .Lskip                      /* reverted at or before it */
    jmp     *V_TARGET(%r10)
.Lskip:
    movq    V_NEXT(%r10), %r10
    jmp     .Lselect

.Lnot_at_slot:
    ja      .Labove
    /* Below the slot: nested if the slot still holds its return address. */
    movq    %rax, SPILL1
    movq    %fs:REC_OUTER_SLOT(%r11), %rax
    subq    %rsp, %rax
    cmpq    $NEAR_SLOT_DISTANCE, %rax
    ja      .Lfar_below
    movq    %fs:REC_OUTER_SLOT(%r11), %rax
    movq    (%rax), %rax
    cmpq    %fs:REC_OUTER_RET(%r11), %rax
    movq    SPILL1, %rax
    jne     .Lexternal                  /* the outer activation has returned */

.Lnested:                               /* keep the thread's universe */
    movq    %fs:REC_UNIVERSE(%r11), %r11
    jmp     .Lselect

/* Above the slot: nested only on an alternate signal stack that holds %rsp
 * but not the slot (a handler interrupted the activation).  ulp_altstack
 * is kept by the runtime's sigaltstack(). */
.Labove:
    movq    %rax, SPILL1
    movq    %r10, SPILL2
    movq    %fs:REC_OUTER_SLOT(%r11), %r10
    movq    ulp_altstack@gottpoff(%rip), %rax
    cmpq    %fs:ALT_LOW(%rax), %r10
    jb      1f
    cmpq    %fs:ALT_HIGH(%rax), %r10
    jb      2f                          /* the slot is on the altstack too */
1:  cmpq    %fs:ALT_LOW(%rax), %rsp
    jb      2f
    cmpq    %fs:ALT_HIGH(%rax), %rsp
    jae     2f
    movq    SPILL2, %r10
    movq    SPILL1, %rax
    jmp     .Lnested
2:  movq    SPILL2, %r10
    movq    SPILL1, %rax
    jmp     .Lexternal

/* The slot is far above: maybe on a stack since switched away from, or
 * freed.  Read it without risking a fault. */
.Lfar_below:
    movq    SPILL1, %rax
    SAVE_INTEGER_REGISTERS
    movq    %fs:REC_OUTER_SLOT(%r11), %rdi
    movq    %fs:REC_OUTER_RET(%r11), %rsi
    call    ulp_slot_holds
    testl   %eax, %eax
    RESTORE_INTEGER_REGISTERS
    jnz     .Lnested
    jmp     .Lexternal

/* First entry into a library not yet known to the runtime: register it,
 * then start over. */
.Lregister:
    SAVE_INTEGER_REGISTERS
    movq    %r10, %rdi
    call    ulp_register_function
    RESTORE_INTEGER_REGISTERS
    jmp     ulp_entry
    .cfi_endproc
    .size   ulp_entry, .-ulp_entry

    .section .note.GNU-stack,"",@progbits
