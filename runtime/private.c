/* Functions a prepared library has no descriptor for, and the data
 * references of patch objects.  Agent only (one request at a time).
 *
 * ulp-prepare makes a descriptor and a trampoline for each exported
 * function.  A static or hidden function (and every function of an
 * executable) has neither: its callers in the library call its entry
 * directly.  To patch one, the agent gives it a descriptor here, in memory
 * it maps within reach of a 32-bit displacement from the library's code,
 * and the trigger writes the stub ulp-prepare writes for exported functions
 * into its padding (lea r10, [rip -> descriptor + 1]; jmp [rip -> entry_got];
 * int3), then turns its entry NOP into a jump to that stub.  From then on
 * every call reaches the tracker with the descriptor, like a patched
 * exported function's.  One function keeps one descriptor for the life of
 * the library, whatever patches come and go: its version list and the stub
 * in its padding must agree.
 *
 * The descriptor carries the library's code range, so calls from the
 * library itself are nested (docs/consistency.md).  In the main program it
 * carries an empty range instead: the program's own code (main) is live on
 * every thread's stack for good, so an activation there is one of the
 * patched functions themselves, judged by the anchors
 * (docs/patching-private.md). */
#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>

#include "ulp_internal.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PADDING_SIZE ULP_PADDING_SIZE
#define NEAR_PAGE 4096
#define NEAR_STEP (1UL << 20)
#define NEAR_RANGE (1UL << 30)
#define PRIVATE_INDEX UINT32_MAX

struct private_fn {
    const struct ulp_lib_desc *lib;
    int64_t entry_delta;
    uint64_t size;              /* of its code, 0: unknown */
    struct ulp_func_desc *fd;
    struct private_fn *next;
};

struct near_page {
    const struct ulp_lib_desc *lib;
    char *base;
    size_t used;
    struct near_page *next;
};

static struct private_fn *privates;
static struct near_page *pages;

static void *map_at(uintptr_t address)
{
    void *page = mmap((void *)address, NEAR_PAGE, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (page == MAP_FAILED)
        return NULL;
    if ((uintptr_t)page != address) {       /* a kernel that took it as a hint */
        munmap(page, NEAR_PAGE);
        return NULL;
    }
    return page;
}

/* A page within 1 GiB below the code or above its end: every function of
 * the library (at most 1 GiB of code, docs/prepared-layout.md) then
 * reaches it with a 32-bit displacement.  Below first: above an executable
 * lies the brk heap, which a page there would keep from growing. */
static void *map_near(uintptr_t code_start, uint64_t code_size)
{
    void *page;
    for (uintptr_t step = NEAR_STEP; step < NEAR_RANGE; step += NEAR_STEP) {
        uintptr_t below = (code_start & ~(NEAR_STEP - 1)) - step;
        if (below < code_start && (page = map_at(below)) != NULL)
            return page;
    }
    for (uintptr_t step = NEAR_STEP; step < NEAR_RANGE; step += NEAR_STEP) {
        uintptr_t above = ((code_start + code_size) & ~(NEAR_STEP - 1)) + step;
        if (above > code_start && (page = map_at(above)) != NULL)
            return page;
    }
    return NULL;
}

static struct ulp_func_desc *new_desc(const struct ulp_lib_desc *lib, uintptr_t code_start,
                                      uint64_t code_size)
{
    struct near_page *page = pages;
    while (page && (page->lib != lib || page->used + sizeof(struct ulp_func_desc) > NEAR_PAGE))
        page = page->next;
    if (!page) {
        char *base = map_near(code_start, code_size);
        if (!base)
            return NULL;
        page = calloc(1, sizeof *page);
        if (!page) {
            munmap(base, NEAR_PAGE);
            return NULL;
        }
        page->lib = lib;
        page->base = base;
        page->next = pages;
        pages = page;
    }
    struct ulp_func_desc *fd = (struct ulp_func_desc *)(page->base + page->used);
    page->used += sizeof *fd;
    return fd;
}

/* Is LIB's descriptor in the main program?  From the program headers the
 * kernel gave it (getauxval takes no lock: a commit asks this while every
 * other thread is stopped, maybe one inside the loader). */
ULP_HIDDEN int ulp_is_main_program(const struct ulp_lib_desc *lib)
{
    const ElfW(Phdr) *phdr = (const ElfW(Phdr) *)getauxval(AT_PHDR);
    unsigned long phnum = getauxval(AT_PHNUM);
    uintptr_t bias = 0, address = (uintptr_t)lib;
    if (!phdr)
        return 0;
    for (unsigned long i = 0; i < phnum; i++)
        if (phdr[i].p_type == PT_PHDR)
            bias = (uintptr_t)phdr - phdr[i].p_vaddr;
    for (unsigned long i = 0; i < phnum; i++)
        if (phdr[i].p_type == PT_LOAD && address - (bias + phdr[i].p_vaddr) < phdr[i].p_memsz)
            return 1;
    return 0;
}

static const uint8_t NOPS[PADDING_SIZE] = {
    0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90};
static const uint8_t ENDBR64[4] = {0xf3, 0x0f, 0x1e, 0xfa};

/* Is the code at ENTRY what -fpatchable-function-entry=16,14 leaves: 14
 * NOPs before it, two one-byte NOPs (or the two-byte NOP ulp-prepare
 * writes) at it, after endbr64 if FLAGS says so? */
static int entry_is_untouched(const uint8_t *entry, uint32_t flags)
{
    const uint8_t *nop = entry;
    if (memcmp(entry - PADDING_SIZE, NOPS, PADDING_SIZE) != 0)
        return 0;
    if (flags & ULP_FUNC_FLAG_ENDBR64) {
        if (memcmp(entry, ENDBR64, 4) != 0)
            return 0;
        nop += 4;
    }
    return (nop[0] == 0x90 && nop[1] == 0x90) || (nop[0] == 0x66 && nop[1] == 0x90);
}

/* The descriptor of the function whose entry is at LIB + ENTRY_DELTA; made
 * on first use.  NULL with *PROBLEM when the entry cannot be routed. */
ULP_HIDDEN struct ulp_func_desc *ulp_private_desc(struct ulp_lib_desc *lib, int64_t entry_delta,
                                                  uint32_t flags, uint64_t size,
                                                  const char **problem)
{
    for (struct private_fn *p = privates; p; p = p->next)
        if (p->lib == lib && p->entry_delta == entry_delta)
            return p->fd;
    uintptr_t code_start = (uintptr_t)lib + lib->code_delta;
    uintptr_t entry = (uintptr_t)lib + entry_delta;
    uintptr_t body = entry + 2 + ((flags & ULP_FUNC_FLAG_ENDBR64) ? 4 : 0);
    if ((flags & ~ULP_FUNC_FLAG_ENDBR64) || entry < code_start + PADDING_SIZE ||
        body > code_start + lib->code_size) {
        *problem = "is not in the library's code";
        return NULL;
    }
    if (!entry_is_untouched((const uint8_t *)entry, flags)) {
        *problem = "has no untouched patchable entry (padding and entry NOPs)";
        return NULL;
    }
    int main_program = ulp_is_main_program(lib);
    struct private_fn *record = calloc(1, sizeof *record);
    struct ulp_func_desc *fd = record ? new_desc(lib, code_start, lib->code_size) : NULL;
    if (!fd) {
        free(record);
        *problem = "cannot get memory near the library for its descriptor";
        return NULL;
    }
    fd->original.applied_at = 0;
    fd->original.reverted_at = ULP_UNIVERSE_NEVER;
    fd->original.target = (void *)body;
    fd->original.next = NULL;
    fd->versions = &fd->original;
    fd->body_delta = (int64_t)(body - (uintptr_t)fd);
    fd->entry_delta = (int64_t)(entry - (uintptr_t)fd);
    fd->lib_delta = (int64_t)((uintptr_t)lib - (uintptr_t)fd);
    fd->flags = flags;
    fd->current_delta = fd->body_delta;
    fd->index = PRIVATE_INDEX;
    fd->code_start = main_program ? 0 : code_start;
    fd->code_size = main_program ? 0 : lib->code_size;
    /* last: a descriptor with a TLS offset is complete (entry.S) */
    __atomic_store_n(&fd->tls_offset, ulp_thread_record_offset(), __ATOMIC_RELEASE);
    record->lib = lib;
    record->entry_delta = entry_delta;
    record->size = size;
    record->fd = fd;
    record->next = privates;
    privates = record;
    return fd;
}

/* LIB is unloaded: a library loaded later at its address gets descriptors
 * of its own.  The old ones stay mapped (a thread may still be in the
 * tracker with one). */
ULP_HIDDEN void ulp_forget_private(const struct ulp_lib_desc *lib)
{
    struct private_fn **link = &privates;
    while (*link) {
        struct private_fn *p = *link;
        if (p->lib == lib) {
            *link = p->next;
            free(p);
        } else {
            link = &p->next;
        }
    }
    for (struct near_page *page = pages; page; page = page->next)
        if (page->lib == lib)
            page->lib = NULL;
}

/* The code of the main program's patched functions: there, and not in the
 * rest of the program (main is on every stack for good), lies what a live
 * activation leaves on a stack (transition.c).  A function of unknown size
 * counts as the whole program. */
ULP_HIDDEN void ulp_add_private_code(const struct ulp_lib_desc *lib)
{
    uintptr_t code_start = (uintptr_t)lib + lib->code_delta;
    for (struct private_fn *p = privates; p; p = p->next) {
        if (p->lib != lib)
            continue;
        uintptr_t entry = (uintptr_t)lib + p->entry_delta;
        if (p->size)
            ulp_add_code_range(entry, entry + p->size);
        else
            ulp_add_code_range(code_start, code_start + lib->code_size);
    }
}

/* FN(descriptor) for each private function of LIB given one. */
ULP_HIDDEN void ulp_for_each_private(const struct ulp_lib_desc *lib,
                                     void (*fn)(struct ulp_func_desc *))
{
    for (struct private_fn *p = privates; p; p = p->next)
        if (p->lib == lib)
            fn(p->fd);
}

/* Make LIB's symbols global, as if the program had opened it with
 * RTLD_GLOBAL, so that a patch object that calls its exported functions by
 * name resolves them.  Lasts for the life of the process: later loads may
 * resolve a symbol no earlier object defines to LIB's.  1 if done. */
ULP_HIDDEN int ulp_make_global(const struct ulp_lib_desc *lib)
{
    Dl_info info;
    struct link_map *map = NULL;
    if (!dladdr1(lib, &info, (void **)&map, RTLD_DL_LINKMAP) || !map || !map->l_name ||
        !map->l_name[0])
        return 0;       /* the main program's symbols are global already */
    void *handle = dlopen(map->l_name, RTLD_LAZY | RTLD_NOLOAD | RTLD_GLOBAL);
    if (!handle)
        return 0;
    dlclose(handle);
    return 1;
}

/* The variable NAME defined by the patch object itself, with at least SIZE
 * bytes; NULL if there is none. */
static void *patch_variable(void *handle, const char *name, size_t size)
{
    struct link_map *map;
    Dl_info info;
    const ElfW(Sym) *symbol = NULL;
    void *address = dlsym(handle, name);
    if (!address || dlinfo(handle, RTLD_DI_LINKMAP, &map) != 0 ||
        !dladdr1(address, &info, (void **)&symbol, RTLD_DL_SYMENT) || !symbol)
        return NULL;
    if ((uintptr_t)info.dli_fbase != map->l_addr || info.dli_saddr != address ||
        ELF64_ST_TYPE(symbol->st_info) != STT_OBJECT || symbol->st_size < size)
        return NULL;
    return address;
}

/* glibc's tls_index, what __tls_get_addr takes. */
struct tls_reference {
    unsigned long module;
    unsigned long offset;
};

/* Fill the patch object's variable NAME as REF says.  Runs before any
 * version of the patch can be chosen. */
ULP_HIDDEN int ulp_fill_reference(void *patch_handle, struct ulp_lib_desc *lib,
                                  const struct ulp_request_ref *ref, const char *name,
                                  const char **problem)
{
    if (ref->kind == ULP_REF_ADDRESS) {
        void **variable = patch_variable(patch_handle, name, sizeof(void *));
        if (!variable) {
            *problem = "is not a pointer-sized variable defined by the patch object";
            return -1;
        }
        __atomic_store_n(variable, (char *)lib + ref->delta, __ATOMIC_RELEASE);
        return 0;
    }
    if (ref->kind != ULP_REF_TLS || ref->delta < 0) {
        *problem = "has an unknown reference kind";
        return -1;
    }
    struct tls_reference *variable = patch_variable(patch_handle, name, sizeof *variable);
    if (!variable) {
        *problem = "is not a tls_index variable (16 bytes) defined by the patch object";
        return -1;
    }
    int gone;
    size_t module = 0;
    void *target = ulp_pin_object((uint64_t)(uintptr_t)lib, &gone);
    if (target) {
        if (dlinfo(target, RTLD_DI_TLS_MODID, &module) != 0)
            module = 0;
        dlclose(target);
    }
    if (module == 0) {
        *problem = "refers to thread-local data, and the target has no TLS block";
        return -1;
    }
    variable->module = module;
    variable->offset = (unsigned long)ref->delta;
    return 0;
}
