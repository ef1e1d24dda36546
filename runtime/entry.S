/* ulp_entry: the fast paths of the tracker every call into a prepared
 * library from outside it passes (the judgment itself is in tracker.c).
 *
 * Calls whose return address lies in the library's own code never come
 * here unpatched: the trampoline (toolchain/templates/trampoline.s.j2)
 * sends them straight on, nested, without touching any record.  Two kinds
 * of jump come here, with
 *   %rsp = exactly as the caller left it: (%rsp) is the return address,
 *   %r10 = the function's descriptor (struct ulp_func_desc), either
 *     even: from a trampoline, whose caller is outside the library;
 *     odd (descriptor + 1): from a patched function's entry stub, reached
 *       by any call, from inside or outside: the return address decides.
 * Only %r10, %r11 and the flags may be clobbered: every argument register,
 * %rax (the vector count of varargs calls) and the stack reach the chosen
 * body untouched, so unwinders, exceptions and debuggers see the caller's
 * frames as if the function had been called directly.
 *
 * The paths, each with what it may conclude (docs/consistency.md proves
 * them):
 *   from the library: the caller is an activation of the library: nested,
 *     keep the thread's universe.  Writes nothing.
 *   from outside, record claimed: this entry interrupted an update of the
 *     record (it runs in a signal handler): it writes nothing and keeps the
 *     universe (tracker.c decides whether the claimer is gone for good).
 *   from outside, the only anchor's slot is this entry's own (the loop):
 *     its activation has returned: external, take G.
 *   from outside, one anchor (and no alternate signal stack): below this
 *     entry, or near above and overwritten, so the activation it anchored
 *     has returned: external, take G.
 *   from outside, anything else: tracker.c judges, under the claim.
 * Every write to the record happens between the claim (one store) and its
 * release (one store), so a signal handler entering the library in the
 * middle sees either the whole old record or a claimed one.
 *
 * No endbr64: the runtime is not built for IBT, so a process that loads it
 * does not enforce IBT. */

#include "ulp_layout.h"

/* Below %rsp is free at a function entry (signal frames skip the red zone):
 * the tracker spills there instead of moving %rsp. */
#define SPILL1 -8(%rsp)


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

/* Call FUNC(record, entry %rsp) with every register saved (%rax from its
 * spill slot); its result (a universe) comes back in %r11. */
.macro CALL_JUDGE func
    movq    SPILL1, %rax
    SAVE_INTEGER_REGISTERS
    movq    %fs:0, %rdi
    addq    %r11, %rdi
    leaq    8(%rbp), %rsi
    call    \func
    movq    %rax, -72(%rbp)
    RESTORE_INTEGER_REGISTERS
.endm


    .text
    .globl  ulp_entry
    .type   ulp_entry, @function
    .p2align 4
ulp_entry:
    .cfi_startproc
    testb   $1, %r10b
    jnz     .Lfrom_anywhere

.Lfrom_outside:                         /* %r10 = descriptor, even */
    movq    %rax, SPILL1
    movq    FD_TLS_OFFSET(%r10), %r11
    testq   %r11, %r11
    jz      .Lregister
    cmpq    $0, %fs:REC_CLAIM(%r11)
    jne     .Lclaimed
    movq    %rsp, %fs:REC_CLAIM(%r11)
    cmpq    %rsp, %fs:REC_ANCHORS+ANCHOR_SLOT(%r11)
    jne     .Lother_slot
    cmpq    $1, %fs:REC_DEPTH(%r11)
    jne     .Ljudge
    /* The loop: the only anchor is this very slot: its activation has
     * returned. */
    movq    (%rsp), %rax
    movq    %rax, %fs:REC_ANCHORS+ANCHOR_RET(%r11)

.Lexternal:                             /* the only anchor is this entry's */
    movq    ulp_global_universe(%rip), %rax
    movq    %rax, %fs:REC_UNIVERSE(%r11)
    movq    $0, %fs:REC_CLAIM(%r11)     /* release */
    movq    %rax, %r11
    movq    SPILL1, %rax

.Lselect:                               /* %r10 = descriptor, %r11 = universe */
    testl   $ULP_FUNC_FLAG_PATCHED, FD_FLAGS(%r10)
    jnz     .Lwalk
    jmp     *FD_ORIGINAL+V_TARGET(%r10) /* never patched: the one version */
.Lwalk:
    movq    FD_VERSIONS(%r10), %r10
.Lversion:
    cmpq    V_APPLIED_AT(%r10), %r11
    jb      .Lskip                      /* applied after this universe */
    cmpq    V_REVERTED_AT(%r10), %r11
    jae     .Lskip                      /* reverted at or before it */
    jmp     *V_TARGET(%r10)
.Lskip:
    movq    V_NEXT(%r10), %r10
    jmp     .Lversion

.Lfrom_anywhere:                        /* a patched entry: who called? */
    subq    $1, %r10
    movq    (%rsp), %r11
    subq    FD_CODE_START(%r10), %r11
    cmpq    FD_CODE_SIZE(%r10), %r11
    jae     .Lfrom_outside
    movq    FD_TLS_OFFSET(%r10), %r11   /* from the library itself: nested */
    movq    %fs:REC_UNIVERSE(%r11), %r11
    jmp     .Lwalk

.Lother_slot:
    /* One anchor, and no alternate signal stack to reason about: its
     * activation has returned if its slot is below this entry's, or near
     * above and overwritten.  Anything else: tracker.c. */
    cmpq    $1, %fs:REC_DEPTH(%r11)
    jne     .Ljudge
    movq    ulp_altstack@gottpoff(%rip), %rax
    cmpq    $0, %fs:ALT_HIGH(%rax)
    jne     .Ljudge
    movq    %fs:REC_ANCHORS+ANCHOR_SLOT(%r11), %rax
    cmpq    %rsp, %rax
    jb      .Lnew_anchor                /* below this entry: popped */
    subq    %rsp, %rax
    cmpq    $NEAR_SLOT_DISTANCE, %rax
    ja      .Ljudge
    movq    %fs:REC_ANCHORS+ANCHOR_SLOT(%r11), %rax
    movq    (%rax), %rax
    cmpq    %fs:REC_ANCHORS+ANCHOR_RET(%r11), %rax
    je      .Ljudge                     /* may be live */
.Lnew_anchor:                           /* no live activation */
    movq    %rsp, %fs:REC_ANCHORS+ANCHOR_SLOT(%r11)
    movq    (%rsp), %rax
    movq    %rax, %fs:REC_ANCHORS+ANCHOR_RET(%r11)
    jmp     .Lexternal

.Ljudge:
    CALL_JUDGE ulp_judge_entry
    jmp     .Lselect

.Lclaimed:
    CALL_JUDGE ulp_judge_claimed_entry
    jmp     .Lselect

/* First entry into a library not yet known to the runtime: register it and
 * start over; a library that cannot be registered runs its original body. */
.Lregister:
    movq    SPILL1, %rax
    SAVE_INTEGER_REGISTERS
    movq    %r10, %rdi
    call    ulp_register_function
    RESTORE_INTEGER_REGISTERS
    cmpq    $0, FD_TLS_OFFSET(%r10)
    jne     ulp_entry
    movq    FD_BODY_DELTA(%r10), %r11
    addq    %r10, %r11
    jmp     *%r11
    .cfi_endproc
    .size   ulp_entry, .-ulp_entry

    .section .note.GNU-stack,"",@progbits
