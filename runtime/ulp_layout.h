/* The structures shared by ulp-prepare (ulp/layout.py), prepared libraries,
 * the tracker (entry.S) and the rest of the runtime.  Layout version 1;
 * docs/prepared-layout.md describes them. */
#ifndef ULP_LAYOUT_H
#define ULP_LAYOUT_H

/* Offsets used by entry.S, which cannot include C declarations. */
#define FD_TLS_OFFSET   0
#define FD_VERSIONS     8
#define FD_ORIGINAL     16
#define V_APPLIED_AT    0
#define V_REVERTED_AT   8
#define V_TARGET        16
#define V_NEXT          24
#define REC_OUTER_SLOT  0
#define REC_OUTER_RET   8
#define REC_UNIVERSE    16
/* Slots farther than this above %rsp may be on another stack, one that may
 * be gone: the tracker reads them with a system call that cannot fault. */
#define NEAR_SLOT_DISTANCE (256 * 1024)
#define ALT_LOW         0
#define ALT_HIGH        8

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>

#define ULP_LIB_MAGIC "ULPLIB\0\1"
#define ULP_LAYOUT_VERSION 1
#define ULP_UNIVERSE_NEVER UINT64_MAX
#define ULP_FUNC_FLAG_ENDBR64 1u

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
};

struct ulp_lib_desc {
    char magic[8];
    uint32_t layout_version;
    uint32_t nfuncs;
    void *entry_got;                /* ulp_entry, resolved by ld.so */
    int64_t state;                  /* 0: unregistered, -1: registering, n > 0: slot n-1 */
    uint8_t identity[32];           /* SHA-256 of the library before preparing */
    uint8_t build_id_len;
    uint8_t pad[3];
    uint8_t build_id[20];
    int64_t funcs_delta;
    int64_t trampolines_delta;
    uint64_t *universe;             /* the global universe, for the trampolines */
    uint8_t reserved[16];
};

/* Per thread and per library: the outermost live activation and the
 * universe the thread sees in the library. */
struct ulp_thread_record {
    uintptr_t outer_slot;           /* stack address of its return address */
    uintptr_t outer_ret;            /* the return address stored there */
    uint64_t universe;
    uint64_t reserved;
};

/* Per thread: the alternate signal stack, as set through sigaltstack(). */
struct ulp_altstack {
    uintptr_t low;
    uintptr_t high;                 /* low == high: none */
};

_Static_assert(sizeof(struct ulp_func_desc) == 80, "func desc layout");
_Static_assert(sizeof(struct ulp_lib_desc) == 128, "lib desc layout");
_Static_assert(offsetof(struct ulp_lib_desc, universe) == 104, "lib desc layout");
_Static_assert(offsetof(struct ulp_func_desc, versions) == FD_VERSIONS, "fd");
_Static_assert(offsetof(struct ulp_func_desc, original) == FD_ORIGINAL, "fd");
_Static_assert(offsetof(struct ulp_version, target) == V_TARGET, "v");
_Static_assert(offsetof(struct ulp_version, next) == V_NEXT, "v");
_Static_assert(offsetof(struct ulp_thread_record, universe) == REC_UNIVERSE, "rec");
_Static_assert(sizeof(struct ulp_thread_record) == 32, "rec");
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
