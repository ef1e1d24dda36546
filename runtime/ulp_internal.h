/* Declarations shared by the runtime's source files. */
#ifndef ULP_INTERNAL_H
#define ULP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ulp_abi.h"
#include "ulp_layout.h"
#include "ulp_log.h"

#define ULP_HIDDEN __attribute__((visibility("hidden")))
#define ULP_EXPORT __attribute__((visibility("default")))
#define ULP_MAX_LIBS 64

/* registry.c: prepared libraries and per-thread records */
extern uint64_t ulp_global_universe;
int ulp_register_library(struct ulp_lib_desc *lib);
struct ulp_lib_desc *ulp_find_loaded_library(uint64_t address, void **pin);
void ulp_register_function(struct ulp_func_desc *fd);

/* entry.S, tracker.c: the version a thread runs during a transition */
void ulp_tracker(void);
void *ulp_version_in(const struct ulp_func_desc *fd, uint64_t universe);
void *ulp_choose_version(const struct ulp_func_desc *fd, uintptr_t slot);

/* transition.c */
int ulp_is_prepared_code(uintptr_t word);
void ulp_add_code_range(uintptr_t low, uintptr_t high);
void ulp_add_code_of(const void *address);
/* A hash set of the stopped threads of a request by one 64-bit key of
 * each (their own stack's start, their thread pointer): slots hold a
 * thread's index + 1, 0 is free.  Sized twice the threads, a power of 2,
 * and only that much cleared: a process's first commit faults in every
 * page it touches. */
#define ULP_THREAD_INDEX_SLOTS 16384    /* more than twice the threads a request holds */
_Static_assert(ULP_THREAD_INDEX_SLOTS / 2 >= ULP_REQUEST_MAX / sizeof(struct ulp_request_thread),
               "every thread of a request has a slot");
struct ulp_thread_index {
    const struct ulp_request_thread *threads;
    uint64_t (*key)(const struct ulp_request_thread *t);
    uint32_t mask;
    uint32_t slots[ULP_THREAD_INDEX_SLOTS];
};
void ulp_thread_index_clear(struct ulp_thread_index *index,
                            const struct ulp_request_thread *threads, uint32_t n,
                            uint64_t (*key)(const struct ulp_request_thread *t));
uint32_t *ulp_thread_index_slot(struct ulp_thread_index *index, uint64_t key);
const char *ulp_threads_sharing_a_record(const struct ulp_request_thread *threads, uint32_t n,
                                         char *message, size_t size);
int ulp_begin_transition(struct ulp_lib_desc *const *libs, const int *slots, uint32_t nlibs,
                         const struct ulp_request_thread *threads, uint32_t n);
int ulp_transition_tick(void);
void ulp_transition_unlock_for_new_agent(void);
void ulp_transition_forget(int slot);
int ulp_in_transition(int slot);
int ulp_read_memory(uintptr_t address, void *buffer, size_t size);
ssize_t ulp_read_memory_vector(const struct iovec *local, const struct iovec *remote, size_t n);

/* config.c: whether this process gets the agent (ULP_AGENT, /etc/ulp/agent.conf);
 * ordered from the least to the most restrictive */
enum ulp_agent_mode { ULP_AGENT_MODE_START, ULP_AGENT_MODE_DEMAND, ULP_AGENT_MODE_OFF };
enum ulp_agent_mode ulp_agent_mode(char *why, size_t why_size);
const char *ulp_agent_mode_name(enum ulp_agent_mode mode);

/* applied.c */
uint64_t ulp_applied_table_address(void);
uint64_t ulp_applied_now(void);
void ulp_applied_begin(void);
void ulp_applied_add(const struct ulp_applied_patch *entry);
void ulp_applied_end(void);
void ulp_know_code_of(struct ulp_lib_desc *const *libs, uint32_t nlibs);
void ulp_prepared_code_bounds(uintptr_t *low, uintptr_t *high);
int ulp_for_each_code_range(void (*fn)(uintptr_t, uintptr_t, void *), void *arg);

/* foreign.c: activations on stacks the runtime was not told of */
void ulp_foreign_init(void);
const char *ulp_unnoted_stack_activation(const struct ulp_request_thread *threads, uint32_t n,
                                         char *message, size_t size);

/* threadstacks.c: the stopped threads' stacks, from /proc/self/maps */
struct ulp_mapping {
    uintptr_t low, high;
    uint64_t inode;             /* 0: anonymous */
    int writable;               /* readable and writable */
};
int ulp_fill_thread_stacks(struct ulp_request_thread *threads, uint32_t n);
const struct ulp_mapping *ulp_take_fresh_mappings(uint32_t *n);

/* quiet.c: whether every other thread slept through a search */
int ulp_quiet_begin(void);
int ulp_quiet_end(void);
int ulp_quiet_thread_on(uintptr_t low, uintptr_t high);

/* coroutine.c: stacks made with makecontext */
#define ULP_MAX_COROUTINE_STACKS 4096
extern uint32_t ulp_pending_coroutine_stacks;
const char *ulp_coroutine_stacks_judgeable(void);
void ulp_coroutine_stacks_unjudged(void);
void ulp_mark_coroutine_stacks(uint64_t g, const struct ulp_request_thread *threads, uint32_t n);
uint32_t ulp_coroutine_tick(int threads_pending);
struct ulp_coroutine_stack;
struct ulp_coroutine_stack *ulp_coroutine_stack_of(uintptr_t address, uintptr_t *high);
int ulp_coroutine_stack_pending(struct ulp_coroutine_stack *s, uint64_t *universe);
void ulp_mark_coroutine_stack(struct ulp_coroutine_stack *s, uint64_t universe);
void ulp_clear_coroutine_stack(struct ulp_coroutine_stack *s);

/* registry.c: the library table (agent side) */
struct ulp_lib_desc *ulp_library_in_slot(int slot);
int ulp_library_slot(const struct ulp_lib_desc *lib);
void ulp_forget_slot(int slot, struct ulp_lib_desc *lib);
void *ulp_pin_object(uint64_t address, int *gone);
int ulp_library_registered_in(const struct ulp_lib_desc *lib, int slot);
void ulp_with_library_in_slot(int slot, void (*fn)(struct ulp_lib_desc *));
int64_t ulp_thread_record_offset(void);

/* private.c: descriptors for functions the prepared library has none for,
 * and the data references of patch objects */
struct ulp_func_desc *ulp_private_desc(struct ulp_lib_desc *lib, int64_t entry_delta,
                                       uint32_t flags, uint64_t size, const char **problem);
int ulp_is_main_program(const struct ulp_lib_desc *lib);
void ulp_add_private_code(const struct ulp_lib_desc *lib);
void ulp_forget_private(const struct ulp_lib_desc *lib);
void ulp_for_each_private(const struct ulp_lib_desc *lib, void (*fn)(struct ulp_func_desc *));
int ulp_make_global(const struct ulp_lib_desc *lib);
int ulp_fill_reference(void *patch_handle, struct ulp_lib_desc *lib,
                       const struct ulp_request_ref *ref, const char *name,
                       const char **problem);


/* patch.c: patches, their versions and universes */
int ulp_handle_request(const struct ulp_request *req, uint32_t size,
                       char *message, size_t message_size);
void ulp_forget_unloaded(void);
void ulp_release_kept_pins(void);

/* patch.c: what the agent returns besides status and message */
extern int32_t ulp_staged_fd;

/* rebind.c */
struct link_map;
struct dl_phdr_info;
struct ulp_lib_desc *ulp_registered_library_of(const struct dl_phdr_info *info);
size_t ulp_rebind_library_calls(void);
void ulp_unbind_patch_calls(const struct link_map *map, void *const *from,
                            struct ulp_func_desc *const *fds, uint32_t n);
void ulp_rebind_patch_calls(const struct link_map *map, struct ulp_lib_desc *lib,
                            struct ulp_func_desc *const *replaced, void *const *replacements,
                            uint32_t n);

/* sha256.c */
struct ulp_sha256 {
    uint32_t state[8];
    uint64_t length;
    uint8_t block[64];
    size_t used;
};
void ulp_sha256_init(struct ulp_sha256 *h);
void ulp_sha256_update(struct ulp_sha256 *h, const void *data, size_t n);
void ulp_sha256_final(struct ulp_sha256 *h, uint8_t digest[32]);
int ulp_sha256_fd(int fd, uint8_t digest[32]);
extern int ulp_sha256_sha_ni;

/* log.c: the message log `ulp messages` reads (ulp_log.h) */
void ulp_log_message(uint32_t kind, uint64_t address, const char *text_format, ...)
    __attribute__((format(printf, 3, 4)));
void ulp_log_libraries(void);
void ulp_log_patch(uint32_t kind, const uint8_t id[16], const char *label,
                   const struct ulp_lib_desc *lib, unsigned long number);
void ulp_log_refusal(const struct ulp_request *req, int status, const char *reason);

/* agent.c */
extern struct ulp_mailbox ulp_mailbox;
void ulp_start_agent(void);
#endif
