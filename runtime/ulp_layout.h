/* The structures shared by ulp-prepare (ulp/layout.py), prepared libraries,
 * the tracker (entry.S, tracker.c) and the rest of the runtime.  Layout
 * version 4; docs/prepared-layout.md describes them, and
 * tests/test_layout.py checks that ulp/layout.py agrees with every offset. */
#ifndef ULP_LAYOUT_H
#define ULP_LAYOUT_H

/* Offsets used by entry.S, which cannot include C declarations. */
#define FD_TLS_OFFSET   0
#define FD_VERSIONS     8
#define FD_ORIGINAL     16
#define FD_BODY_DELTA   48
#define FD_FLAGS        72
#define FD_CODE_START   80
#define FD_CODE_SIZE    88
#define FD_CURRENT      96
#define V_APPLIED_AT    0
#define V_REVERTED_AT   8
#define V_TARGET        16
#define V_NEXT          24
#define REC_UNIVERSE    0
#define REC_PENDING     8
#define REC_STACK_LOW   16
#define REC_STACK_HIGH  24
#define REC_HINT_SLOT   32
#define REC_HINT_WORD   40
#define REC_SIZE        64
/* NOPs the compiler leaves before each entry: the padding stub's room. */
#define ULP_PADDING_SIZE 14
/* Bytes of one trampoline in the .ulp section. */
#define ULP_TRAMPOLINE_SIZE 64
/* ulp_func_desc.flags: ENDBR64 from ulp-prepare; PATCHED set by the runtime
 * before it first links a version (the tracker then walks the list). */
#define ULP_FUNC_FLAG_ENDBR64 1
#define ULP_FUNC_FLAG_PATCHED 0x100

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>

#define ULP_LIB_MAGIC "ULPLIB\0\1"
#define ULP_LAYOUT_VERSION 4
#define ULP_UNIVERSE_NEVER UINT64_MAX

/* One version of a function, valid for threads whose universe lies in
 * [applied_at, reverted_at).  The tracker walks the list from the newest. */
struct ulp_version {
    uint64_t applied_at;
    uint64_t reverted_at;
    void *target;
    struct ulp_version *next;
};

struct ulp_func_desc {
    int64_t tls_offset;             /* %fs-relative thread record; 0: not registered */
    struct ulp_version *versions;   /* newest first, ends at &original */
    struct ulp_version original;    /* the unpatched body, valid in every universe */
    int64_t body_delta;             /* these three are offsets from this descriptor */
    int64_t entry_delta;
    int64_t lib_delta;
    uint32_t flags;
    uint32_t index;
    uintptr_t code_start;           /* the library's code, absolute: runtime */
    uint64_t code_size;
    /* Where a call goes now, as an offset from this descriptor (the
     * trampoline and the patched entry jump there): ulp-prepare points it
     * at the padding stub (the runtime registers the library), the runtime
     * at the body, at the newest version, or, during a transition, at the
     * tracker (docs/consistency.md). */
    int64_t current_delta;
    uint64_t reserved;              /* 0: keeps descriptors 16-byte aligned */
};

struct ulp_lib_desc {
    char magic[8];
    uint32_t layout_version;
    uint32_t nfuncs;
    void *entry_got;                /* ulp_entry, resolved by ld.so */
    int64_t state;                  /* 0: unregistered, n > 0: slot n-1, < 0: no slot */
    uint8_t identity[32];           /* SHA-256 of the library before preparing */
    uint8_t build_id_len;
    uint8_t pad[3];
    uint8_t build_id[20];
    int64_t funcs_delta;
    int64_t trampolines_delta;
    uint64_t *universe;             /* the global universe: runtime */
    int64_t code_delta;             /* the library's executable segments, */
    uint64_t code_size;             /* from this descriptor: ulp-prepare */
};

/* Per thread and per library (docs/consistency.md, "The tracker").  Only a
 * transition reads or writes it; all zero (a thread that never met one)
 * means: not pending.
 * pending: nonzero while the thread may still be inside an activation of
 *   the library that began before the current transition; it then runs in
 *   universe, and the tracker clears it at the first entry from outside
 *   that finds nothing of the library on the stack above it.
 * stack_low, stack_high: the thread's own stack, where that search looks.
 * hint_slot, hint_word: where the last search found a word of prepared
 *   code, and its complement (a still-equal word there settles the next
 *   search at once; never the word itself, which a search would find). */
struct ulp_thread_record {
    uint64_t universe;
    uint64_t pending;
    uintptr_t stack_low;
    uintptr_t stack_high;
    uintptr_t hint_slot;
    uintptr_t hint_word;
    uint64_t reserved[2];
};

_Static_assert(sizeof(struct ulp_func_desc) == 112, "func desc layout");
_Static_assert(offsetof(struct ulp_func_desc, current_delta) == FD_CURRENT, "fd");
_Static_assert(sizeof(struct ulp_lib_desc) == 128, "lib desc layout");
_Static_assert(offsetof(struct ulp_lib_desc, universe) == 104, "lib desc layout");
_Static_assert(offsetof(struct ulp_lib_desc, code_delta) == 112, "lib desc layout");
_Static_assert(offsetof(struct ulp_func_desc, versions) == FD_VERSIONS, "fd");
_Static_assert(offsetof(struct ulp_func_desc, original) == FD_ORIGINAL, "fd");
_Static_assert(offsetof(struct ulp_func_desc, body_delta) == FD_BODY_DELTA, "fd");
_Static_assert(offsetof(struct ulp_func_desc, flags) == FD_FLAGS, "fd");
_Static_assert(offsetof(struct ulp_func_desc, code_start) == FD_CODE_START, "fd");
_Static_assert(offsetof(struct ulp_func_desc, code_size) == FD_CODE_SIZE, "fd");
_Static_assert(offsetof(struct ulp_version, applied_at) == V_APPLIED_AT, "v");
_Static_assert(offsetof(struct ulp_version, reverted_at) == V_REVERTED_AT, "v");
_Static_assert(offsetof(struct ulp_version, target) == V_TARGET, "v");
_Static_assert(offsetof(struct ulp_version, next) == V_NEXT, "v");
_Static_assert(offsetof(struct ulp_thread_record, universe) == REC_UNIVERSE, "rec");
_Static_assert(offsetof(struct ulp_thread_record, pending) == REC_PENDING, "rec");
_Static_assert(offsetof(struct ulp_thread_record, stack_low) == REC_STACK_LOW, "rec");
_Static_assert(offsetof(struct ulp_thread_record, stack_high) == REC_STACK_HIGH, "rec");
_Static_assert(offsetof(struct ulp_thread_record, hint_slot) == REC_HINT_SLOT, "rec");
_Static_assert(offsetof(struct ulp_thread_record, hint_word) == REC_HINT_WORD, "rec");
_Static_assert(sizeof(struct ulp_thread_record) == REC_SIZE, "rec");

static inline struct ulp_lib_desc *ulp_func_lib(struct ulp_func_desc *fd)
{
    return (struct ulp_lib_desc *)((char *)fd + fd->lib_delta);
}

static inline struct ulp_func_desc *ulp_lib_func(struct ulp_lib_desc *lib, uint32_t i)
{
    return (struct ulp_func_desc *)((char *)lib + lib->funcs_delta) + i;
}
#endif
#endif
