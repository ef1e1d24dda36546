/* What the trigger and the runtime exchange (ABI version 6).
 *
 * The runtime exports one object, ulp_mailbox.  The trigger writes a request
 * into it through /proc/PID/mem, then makes the runtime's agent thread call
 * ulp_mailbox.dispatch (see trigger/agent.py).  The agent answers with a
 * status, a message and an incremented serial.  ulp/agent_abi.py mirrors
 * this file field by field; tests/test_provenance.py compiles this header
 * and checks every offset, size and value of the mirror. */
#ifndef ULP_ABI_H
#define ULP_ABI_H

#include <stdint.h>

#define ULP_MAILBOX_MAGIC "ULPMBOX"
#define ULP_ABI_VERSION 6
#define ULP_MESSAGE_MAX 512
#define ULP_REQUEST_MAX (256 * 1024)

enum ulp_agent_state {
    ULP_AGENT_STARTING = 0,
    ULP_AGENT_IDLE = 1,
    ULP_AGENT_BUSY = 2,
    ULP_AGENT_OFF = 3,          /* no agent: ULP_AGENT=off, or it could not start */
    ULP_AGENT_ENDED = 4,        /* it was the last thread and ended */
    ULP_AGENT_DEMAND = 5,       /* none yet: ULP_AGENT=demand, the trigger starts it
                                 * (runtime/demand.c) */
};

struct ulp_mailbox {
    char magic[8];
    uint32_t abi_version;
    uint32_t state;             /* enum ulp_agent_state */
    int32_t agent_tid;
    uint32_t serial;            /* incremented when a request is answered */
    int32_t status;             /* enum ulp_status of the last request */
    uint32_t request_size;
    uint64_t dispatch;          /* address the trigger makes the agent call */
    uint64_t call_stack_top;    /* the stack that call runs on */
    uint64_t universe_address;  /* where the global universe lives */
    int32_t staged_fd;          /* STAGE: the descriptor the trigger fills */
    uint32_t features;          /* ULP_FEATURE_*: what this runtime understands
                                 * beyond its ABI version (0 in older ones) */
    uint64_t idle_address;      /* %rip of the agent waiting in its idle ppoll */
    uint64_t applied_table;     /* struct ulp_applied_table (0 in older runtimes) */
    char message[ULP_MESSAGE_MAX];
    uint8_t request[ULP_REQUEST_MAX];
};

/* The applied patches, for readers outside the process (`ulp patches`,
 * `ulp check`: through /proc/PID/mem, the agent not asked).  Only the agent
 * writes it: GENERATION is odd while it does, so a reader reads again when
 * it sees it odd or changed by the end of its read (runtime/applied.c). */
#define ULP_APPLIED_MAGIC "ULPAPPL"
#define ULP_APPLIED_MAX 64
#define ULP_APPLIED_TEXT 96

struct ulp_applied_patch {
    uint8_t id[16];
    uint64_t lib_desc;          /* the target library's descriptor */
    uint64_t universe;          /* the universe its commit published */
    uint64_t time_ns;           /* when (CLOCK_REALTIME) */
    uint16_t part, nparts;      /* which target library of the patch, of how many */
    uint32_t reserved;
    char label[ULP_APPLIED_TEXT];       /* its labels, maybe cut */
    char object[ULP_APPLIED_TEXT];      /* its patch object's path when packed, maybe cut */
};

struct ulp_applied_table {
    char magic[8];
    uint32_t generation;
    uint32_t count;             /* entries in use, newest applied first */
    uint32_t more;              /* applied patches beyond ULP_APPLIED_MAX, not listed */
    uint32_t reserved;
    struct ulp_applied_patch entries[ULP_APPLIED_MAX];
};

enum ulp_op {
    ULP_OP_PREPARE = 1,         /* load a patch (one part: one target library); its
                                 * versions stay invisible */
    ULP_OP_COMMIT = 2,          /* publish every part of the prepared patch: G := G + 1 */
    ULP_OP_REVERT = 3,          /* every part of the patch, with one G := G + 1 */
    ULP_OP_ABORT = 4,           /* drop a prepared, uncommitted patch */
    ULP_OP_STATUS = 5,          /* list the applied patches in the message */
    ULP_OP_STAGE = 6,           /* create an empty sealable memfd for the patch object */
    ULP_OP_LIST = 7,            /* the applied patches of the library at lib_desc (ABI 4) */
};

enum ulp_status {
    ULP_OK = 0,
    ULP_E_BAD_REQUEST = 1,
    ULP_E_NOT_ULP_LIBRARY = 2,
    ULP_E_TARGET_MISMATCH = 3,
    ULP_E_PATCH_OPEN = 4,
    ULP_E_PATCH_HASH = 5,
    ULP_E_PATCH_LOAD = 6,
    ULP_E_PATCH_SYMBOL = 7,
    ULP_E_ALREADY_APPLIED = 8,
    ULP_E_NOT_APPLIED = 9,
    ULP_E_DEPENDENCY = 10,
    ULP_E_DEPENDENT = 11,
    ULP_E_NO_MEMORY = 12,
    ULP_E_TOO_MANY_LIBS = 13,
    ULP_E_NOT_PENDING = 14,
    ULP_E_STAGE = 15,           /* the patch object could not be staged or sealed */
    ULP_E_PATCH_ID = 16,        /* the patch id is not the one its content gives */
    ULP_E_UNLOADED = 17,        /* the patch's target library was unloaded */
    ULP_E_PRIVATE = 18,         /* a private function's entry is not one the runtime can route */
    ULP_E_REFERENCE = 19,       /* a data reference of the patch cannot be filled */
    ULP_E_PINS_RELEASED = 20,   /* a COMMIT/REVERT with every thread stopped came after
                                 * the agent let go of the pins kept for it: retry */
    ULP_E_COROUTINES = 21,      /* activations cannot be judged now: coroutine stacks,
                                   unnoted stacks, threads sharing a record */
};

/* The request: this header, then ndeps patch ids (16 bytes each), then
 * nunits struct ulp_request_unit, then nprivate struct ulp_request_private,
 * then nrefs struct ulp_request_ref, then nthreads struct
 * ulp_request_thread, then strings_size bytes of strings, then (PREPARE
 * with ULP_SO_INLINE) the patch object's so_size bytes. */
struct ulp_request {
    uint32_t op;
    uint32_t nunits;
    uint32_t ndeps;
    uint32_t strings_size;
    uint8_t patch_id[16];
    uint64_t lib_desc;          /* address of the target's struct ulp_lib_desc */
    uint8_t identity[32];
    uint8_t so_sha256[32];
    uint32_t so_path;           /* offset into the strings: the name shown in the link map */
    int32_t so_fd;              /* PREPARE: the descriptor STAGE returned, filled;
                                 * or ULP_SO_INLINE */
    uint64_t so_size;           /* PREPARE: size of the patch object */
    uint32_t nprivate;          /* functions without a descriptor in the target (ABI 3) */
    uint32_t nrefs;             /* data references the runtime fills (ABI 3) */
    uint32_t label;             /* offset of the patch's label in the strings (ABI 3) */
    uint16_t part;              /* PREPARE: which target library of the patch (ABI 5) */
    uint16_t nparts;            /* PREPARE: how many it has; 0 or 1: one */
    uint32_t nthreads;          /* COMMIT, REVERT: the stopped threads (ABI 6) */
    uint32_t flags;             /* ULP_REQUEST_KEEP_PINS (ABI 6), _TRUST_STACKS, _FILL_BOUNDS */
};

/* PREPARE's so_fd: the patch object is the request's last so_size bytes,
 * after the strings (no STAGE request before), if the mailbox announces
 * ULP_FEATURE_INLINE_OBJECT. */
#define ULP_SO_INLINE (-2)
#define ULP_FEATURE_INLINE_OBJECT 1
/* COMMIT and REVERT take ULP_REQUEST_FILL_BOUNDS (threadstacks.c). */
#define ULP_FEATURE_THREAD_BOUNDS 2

/* Keep the libraries this request pinned loaded until the next request is
 * answered: a COMMIT or REVERT sent while every thread is stopped then
 * needs no lock of the loader, which a stopped thread may hold. */
#define ULP_REQUEST_KEEP_PINS 1
#define ULP_REQUEST_TRUST_STACKS 2   /* no search for activations on unnoted stacks (foreign.c) */
/* COMMIT, REVERT: the threads' stack_low, stack_high and here_high are 0;
 * the runtime finds them in its own mappings (threadstacks.c). */
#define ULP_REQUEST_FILL_BOUNDS 4

struct ulp_request_unit {
    uint32_t index;             /* function index in the target library */
    uint32_t name;              /* offset of the replacement's name */
};

/* A function of the target that has no descriptor (a static or hidden
 * function, or any function of an executable): PREPARE gives it one and
 * writes its address into desc, where the trigger reads it back to write
 * the stub in the function's padding. */
struct ulp_request_private {
    int64_t entry_delta;        /* the function's entry - the library descriptor */
    uint32_t name;              /* offset of the replacement's name */
    uint32_t flags;             /* ULP_FUNC_FLAG_ENDBR64 */
    uint64_t desc;              /* out: the struct ulp_func_desc the runtime gave it */
    uint64_t size;              /* its code's size (symbol table), 0: unknown (ABI 6) */
};

enum ulp_ref_kind {
    ULP_REF_ADDRESS = 1,        /* the patch's pointer := the target's symbol */
    ULP_REF_TLS = 2,            /* the patch's tls_index := {module, offset} */
};

/* A variable of the patch object the runtime fills before any version can
 * be chosen (libpulp's #var:ref and #%tls:ref). */
struct ulp_request_ref {
    uint32_t kind;              /* enum ulp_ref_kind */
    uint32_t name;              /* offset of the patch variable's name */
    int64_t delta;              /* ADDRESS: symbol - library descriptor; TLS: offset in the block */
};

/* COMMIT and REVERT: one thread of the process, stopped by the trigger
 * for the whole request (runtime/transition.c). */
struct ulp_request_thread {
    int32_t tid;
    uint32_t reserved;          /* 0 */
    uint64_t rip;
    uint64_t rsp;
    uint64_t thread_pointer;    /* %fs base: its static TLS lies below */
    uint64_t stack_low;         /* its own stack (the mapping its thread */
    uint64_t stack_high;        /*   pointer or, for the main thread, [stack] is in) */
    uint64_t here_high;         /* the end of the mapping %rsp is in; 0: none */
};

_Static_assert(sizeof(struct ulp_request_thread) == 56, "request layout");
_Static_assert(sizeof(struct ulp_applied_patch) == 240, "applied table layout");
_Static_assert(sizeof(struct ulp_request) == 144, "request layout");
_Static_assert(sizeof(struct ulp_request_private) == 32, "request layout");
_Static_assert(sizeof(struct ulp_request_ref) == 16, "request layout");
_Static_assert(__builtin_offsetof(struct ulp_mailbox, message) == 80, "mailbox layout");
#endif
