/* Prepared libraries known to the runtime, and the per-thread records the
 * tracker keeps for each of them.
 *
 * A library registers itself the first time any thread enters it (the
 * tracker's slow path) or when a patch for it is prepared.  Registration
 * gives the library a slot in every thread's static TLS and completes its
 * function descriptors in place.  It runs on arbitrary application threads
 * at a function entry, maybe in a signal handler that interrupted another
 * registration, so it waits for nothing: every step is a store of a value
 * any thread would store, or a compare-and-swap, and any thread that finds
 * a descriptor incomplete completes it itself.  No vector registers (the
 * tracker saves only the integer registers), no locks, no system calls
 * (a seccomp filter may forbid them: docs/consistency.md). */
#pragma GCC target("general-regs-only")

#include <dlfcn.h>
#include <link.h>
#include <string.h>

#include "ulp_internal.h"

/* The global universe G.  It only grows; a thread takes its value at an
 * external entry into a library. */
ULP_HIDDEN uint64_t ulp_global_universe = 1;

/* One record per thread, for every library: a thread pending in a
 * transition runs every activation, of any library, in its universe
 * (docs/consistency.md), so a chain of calls through several libraries
 * sees one universe.  Each descriptor keeps its %fs-relative offset. */
static __thread struct ulp_thread_record thread_record
    __attribute__((tls_model("initial-exec"), aligned(64)));

/* The library table: slot i holds the library whose state is i + 1.  A
 * slot is claimed by registration (any thread, lock-free) and freed by the
 * agent once the library is unloaded (ulp_forget_slot). */
static struct ulp_lib_desc *libraries[ULP_MAX_LIBS];

#define STATE_OVERFLOW (-2)
#define STATE_REFUSED (-3)

/* The %fs-relative offset of the thread record, which registration stores
 * in every descriptor (and private.c in those it makes). */
ULP_HIDDEN int64_t ulp_thread_record_offset(void)
{
    char *thread_pointer;
    __asm__("movq %%fs:0, %0" : "=r"(thread_pointer));
    return (char *)&thread_record - thread_pointer;
}

/* Every store here writes what any other registering thread writes too. */
static void complete_descriptors(struct ulp_lib_desc *lib, int64_t tls_offset)
{
    uintptr_t code_start = (uintptr_t)lib + lib->code_delta;
    /* The trigger reads it once the library is registered: store it first. */
    __atomic_store_n(&lib->universe, &ulp_global_universe, __ATOMIC_RELEASE);
    for (uint32_t i = 0; i < lib->nfuncs; i++) {
        struct ulp_func_desc *fd = ulp_lib_func(lib, i);
        if (__atomic_load_n(&fd->tls_offset, __ATOMIC_ACQUIRE) == tls_offset)
            continue;
        struct ulp_version *none = NULL;
        fd->original.target = (char *)fd + fd->body_delta;
        fd->code_start = code_start;
        fd->code_size = lib->code_size;
        /* Never over a version the agent linked already. */
        __atomic_compare_exchange_n(&fd->versions, &none, &fd->original, 0, __ATOMIC_RELEASE,
                                    __ATOMIC_RELAXED);
        /* Calls go straight to the body from now on; before the TLS offset,
         * which the padding stub's path (entry.S) takes as "done". */
        int64_t unregistered = fd->entry_delta - ULP_PADDING_SIZE;
        __atomic_compare_exchange_n(&fd->current_delta, &unregistered, fd->body_delta, 0,
                                    __ATOMIC_RELEASE, __ATOMIC_RELAXED);
        __atomic_store_n(&fd->tls_offset, tls_offset, __ATOMIC_RELEASE);
    }
}

/* A free slot of the table for LIB, or -1 if every slot is taken.  Taken
 * with one compare-and-swap per slot: registration runs on application
 * threads. */
static int take_free_slot(struct ulp_lib_desc *lib)
{
    for (int slot = 0; slot < ULP_MAX_LIBS; slot++) {
        struct ulp_lib_desc *expected = NULL;
        if (__atomic_compare_exchange_n(&libraries[slot], &expected, lib, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return slot;
    }
    return -1;
}

/* The library's state: its slot + 1 once it has one.  The first thread to
 * install a slot wins; a thread that loses the race (another thread, or a
 * handler that interrupted it) gives its table slot back. */
static int64_t claim_slot(struct ulp_lib_desc *lib)
{
    int64_t state = __atomic_load_n(&lib->state, __ATOMIC_ACQUIRE);
    if (state != 0)
        return state;
    if (lib->layout_version != ULP_LAYOUT_VERSION) {
        __atomic_store_n(&lib->state, STATE_REFUSED, __ATOMIC_RELEASE);
        return STATE_REFUSED;
    }
    int slot = take_free_slot(lib);
    int64_t wanted = slot >= 0 ? slot + 1 : STATE_OVERFLOW;
    if (__atomic_compare_exchange_n(&lib->state, &state, wanted, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        return wanted;
    if (slot >= 0)
        ulp_forget_slot(slot, lib);
    return state;
}

/* Register LIB (again: it is idempotent).  Returns 1 if it can be patched. */
ULP_HIDDEN int ulp_register_library(struct ulp_lib_desc *lib)
{
    int64_t state = claim_slot(lib);
    if (state == STATE_REFUSED)
        return 0;
    complete_descriptors(lib, ulp_thread_record_offset());
    return state > 0;
}


/* Called by the tracker with a descriptor whose library is not registered. */
ULP_HIDDEN void ulp_register_function(struct ulp_func_desc *fd)
{
    ulp_register_library(ulp_func_lib(fd));
}

struct search {
    uint64_t address;
    int found;
    int64_t state;              /* of the descriptor found, read while it is listed */
};

/* Does a library descriptor at ADDRESS lie in a writable segment of the
 * object INFO describes? */
static int holds_descriptor(const struct dl_phdr_info *info, uint64_t address)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uint64_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W) && address >= start &&
            address + sizeof(struct ulp_lib_desc) <= start + ph->p_memsz)
            return 1;
    }
    return 0;
}

static int find_writable_segment(struct dl_phdr_info *info, size_t size, void *data)
{
    struct search *search = data;
    (void)size;
    if (!holds_descriptor(info, search->address))
        return 0;
    /* dlclose unlists an object before it unmaps it: while it is listed
     * here, its memory can be read. */
    const struct ulp_lib_desc *lib = (const void *)(uintptr_t)search->address;
    search->found = memcmp(lib->magic, ULP_LIB_MAGIC, 8) == 0;
    search->state = __atomic_load_n(&lib->state, __ATOMIC_ACQUIRE);
    return 1;
}

/* --- the library table, as the agent sees it ------------------------------
 * Everything below runs on the agent only (it takes the loader's locks). */

/* Keep the object holding ADDRESS loaded: a handle to dlclose later, or
 * NULL.  *GONE tells whether no loaded object holds ADDRESS (asked under
 * the loader's lock, which dlclose holds from unmapping to unlinking).  An
 * object found but not reopened by its name (NULL, *GONE == 0) is there,
 * but its memory is left alone. */
ULP_HIDDEN void *ulp_pin_object(uint64_t address, int *gone)
{
    Dl_info info;
    struct link_map *map = NULL, *pinned_map = NULL;
    *gone = 0;
    if (!dladdr1((void *)(uintptr_t)address, &info, (void **)&map, RTLD_DL_LINKMAP) || !map) {
        *gone = 1;
        return NULL;
    }
    const char *name = map->l_name;     /* read under no lock: only compared below */
    void *handle = dlopen(name && name[0] ? name : NULL, RTLD_LAZY | RTLD_NOLOAD);
    if (!handle)
        return NULL;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &pinned_map) != 0 || pinned_map != map) {
        dlclose(handle);
        return NULL;
    }
    return handle;
}

/* The library descriptor at ADDRESS, if it lies in a loaded object and
 * looks like one; NULL otherwise.  ADDRESS comes from the trigger.  The
 * object is kept loaded (*PIN, to dlclose) so that a dlclose by the
 * program cannot unmap it while the agent uses it. */
ULP_HIDDEN struct ulp_lib_desc *ulp_find_loaded_library(uint64_t address, void **pin)
{
    struct search search = {address, 0, 0};
    int gone;
    *pin = NULL;
    if (address % 8 != 0)
        return NULL;
    void *handle = ulp_pin_object(address, &gone);
    if (!handle)
        return NULL;
    dl_iterate_phdr(find_writable_segment, &search);
    struct ulp_lib_desc *lib = (struct ulp_lib_desc *)address;
    /* found: the magic was checked */
    if (!search.found || lib->layout_version != ULP_LAYOUT_VERSION) {
        dlclose(handle);
        return NULL;
    }
    *pin = handle;
    return lib;
}

/* Is LIB still loaded and registered in SLOT (or being registered)?  Asked
 * by the agent's idle check, which must not allocate (dlopen would: a
 * first malloc on the agent creates an arena, and the process's memory map
 * would change on its own) or keep anything loaded. */
ULP_HIDDEN int ulp_library_registered_in(const struct ulp_lib_desc *lib, int slot)
{
    struct search search = {(uint64_t)(uintptr_t)lib, 0, 0};
    dl_iterate_phdr(find_writable_segment, &search);
    return search.found && (search.state == slot + 1 || search.state == 0);
}

/* Is LIB, registered in SLOT, a descriptor of the object INFO describes
 * (and not of another copy loaded since at its address)? */
static int registered_in_object(const struct dl_phdr_info *info, const struct ulp_lib_desc *lib,
                                int slot)
{
    return holds_descriptor(info, (uint64_t)(uintptr_t)lib) &&
           memcmp(lib->magic, ULP_LIB_MAGIC, 8) == 0 &&
           __atomic_load_n(&lib->state, __ATOMIC_ACQUIRE) == slot + 1;
}

struct visit {
    struct ulp_lib_desc *lib;
    int slot;
    void (*fn)(struct ulp_lib_desc *);
};

static int visit_registered(struct dl_phdr_info *info, size_t size, void *data)
{
    struct visit *visit = data;
    (void)size;
    if (!registered_in_object(info, visit->lib, visit->slot))
        return 0;
    visit->fn(visit->lib);
    return 1;
}

/* Run FN on the library in SLOT, under the loader's lock (no dlclose can
 * unmap it meanwhile), if the copy loaded there is the one registered in
 * SLOT: a copy unloaded and another loaded at the same address, not
 * registered yet or in another slot, is not touched. */
ULP_HIDDEN void ulp_with_library_in_slot(int slot, void (*fn)(struct ulp_lib_desc *))
{
    struct visit visit = {ulp_library_in_slot(slot), slot, fn};
    if (visit.lib)
        dl_iterate_phdr(visit_registered, &visit);
}

/* The library registered in a slot whose descriptor lies in the object
 * INFO describes, or NULL.  Called under dl_iterate_phdr (the object
 * stays loaded meanwhile). */
ULP_HIDDEN struct ulp_lib_desc *ulp_registered_library_of(const struct dl_phdr_info *info)
{
    for (int slot = 0; slot < ULP_MAX_LIBS; slot++) {
        struct ulp_lib_desc *lib = ulp_library_in_slot(slot);
        if (lib && registered_in_object(info, lib, slot))
            return lib;
    }
    return NULL;
}

/* The library registered in SLOT, NULL if the slot is free. */
ULP_HIDDEN struct ulp_lib_desc *ulp_library_in_slot(int slot)
{
    return __atomic_load_n(&libraries[slot], __ATOMIC_ACQUIRE);
}

/* LIB's slot, -1 if it has none (not registered, or registered while the
 * table was full).  LIB must be loaded (pinned). */
ULP_HIDDEN int ulp_library_slot(const struct ulp_lib_desc *lib)
{
    int64_t state = __atomic_load_n(&lib->state, __ATOMIC_ACQUIRE);
    return state > 0 && state <= ULP_MAX_LIBS ? (int)state - 1 : -1;
}

/* Free SLOT, which held LIB, once LIB is unloaded or no longer registered
 * there. */
ULP_HIDDEN void ulp_forget_slot(int slot, struct ulp_lib_desc *lib)
{
    __atomic_compare_exchange_n(&libraries[slot], &lib, NULL, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
}

/* For tests: where the global universe lives (the single-stepping test
 * moves it at chosen instructions, as a commit does). */
ULP_EXPORT uint64_t *ulp_global_universe_address(void)
{
    return &ulp_global_universe;
}

/* For tests and the ulp command: the current global universe. */
ULP_EXPORT uint64_t ulp_global_universe_value(void)
{
    return __atomic_load_n(&ulp_global_universe, __ATOMIC_ACQUIRE);
}
