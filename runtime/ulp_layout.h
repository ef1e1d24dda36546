/* The structures shared by ulp-prepare (ulp/layout.py), prepared libraries,
 * the tracker (entry.S, tracker.c) and the rest of the runtime.  Layout
 * version 3; docs/prepared-layout.md describes them, and
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
#define V_APPLIED_AT    0
#define V_REVERTED_AT   8
#define V_TARGET        16
#define V_NEXT          24
#define REC_UNIVERSE    0
#define REC_CLAIM       8
#define REC_DEPTH       16
#define REC_ANCHORS     24
#define ANCHOR_SLOT     0
#define ANCHOR_RET      8
#define ANCHOR_SIZE     16
/* Live activations a record can hold an anchor for (callback nesting). */
#define ULP_MAX_ANCHORS 6
#define REC_SIZE        (REC_ANCHORS + ULP_MAX_ANCHORS * ANCHOR_SIZE)
/* Slots farther than this above %rsp may be on another stack, one that may
 * be gone: the tracker never reads them (docs/consistency.md). */
#define NEAR_SLOT_DISTANCE (256 * 1024)
/* Bytes of one trampoline in the .ulp section. */
#define ULP_TRAMPOLINE_SIZE 64
#define ALT_LOW         0
#define ALT_HIGH        8
/* ulp_func_desc.flags: ENDBR64 from ulp-prepare; PATCHED set by the runtime
 * before it first links a version (the tracker then walks the list). */
#define ULP_FUNC_FLAG_ENDBR64 1
#define ULP_FUNC_FLAG_PATCHED 0x100

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>

#define ULP_LIB_MAGIC "ULPLIB\0\1"
#define ULP_LAYOUT_VERSION 3
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

/* A live activation of a library entered from outside it: the stack slot
 * of its return address and the value stored there. */
struct ulp_anchor {
    uintptr_t slot;
    uintptr_t ret;
};

/* Per thread and per library (docs/consistency.md, "The tracker").
 * universe: the universe the thread sees in the library.
 * claim: nonzero (the claimer's %rsp) while an entry updates the record; an
 *   entry that finds it set interrupted that update (it runs in a signal
 *   handler) and neither writes nor changes universe.
 * anchors[0..depth): the thread's live activations entered from outside,
 *   outermost first; depth ULP_MAX_ANCHORS + 1 (saturated): more were live
 *   than fit, anchors[0..ULP_MAX_ANCHORS) hold the outermost ones. */
struct ulp_thread_record {
    uint64_t universe;
    uintptr_t claim;
    uint64_t depth;
    struct ulp_anchor anchors[ULP_MAX_ANCHORS];
};

/* Per thread: the alternate signal stack, as set through sigaltstack(). */
struct ulp_altstack {
    uintptr_t low;
    uintptr_t high;                 /* low == high: none */
};

_Static_assert(sizeof(struct ulp_func_desc) == 96, "func desc layout");
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
_Static_assert(offsetof(struct ulp_thread_record, claim) == REC_CLAIM, "rec");
_Static_assert(offsetof(struct ulp_thread_record, depth) == REC_DEPTH, "rec");
_Static_assert(offsetof(struct ulp_thread_record, anchors) == REC_ANCHORS, "rec");
_Static_assert(sizeof(struct ulp_anchor) == ANCHOR_SIZE, "anchor");
_Static_assert(offsetof(struct ulp_anchor, ret) == ANCHOR_RET, "anchor");
_Static_assert(sizeof(struct ulp_thread_record) == REC_SIZE, "rec");
_Static_assert(offsetof(struct ulp_altstack, high) == ALT_HIGH, "alt");

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
