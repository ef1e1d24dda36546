/* Calls into a prepared library from its own code and from its patch
 * objects, bound past the trampolines.
 *
 * The library's own PLT calls to its exports come from inside it: they are
 * nested by definition, and the trampoline sends them on to the entry NOPs
 * (docs/consistency.md, path 1) after a runtime check and a caller check.
 * Once the library is registered, the agent binds those PLT slots to the
 * entry NOPs themselves: the same place, eight instructions sooner (SQLite
 * calls its own exports all the time).  A slot that ld.so bound elsewhere
 * (a definition that interposes on the library's, an unresolved lazy slot)
 * is left alone; a lazy slot resolved later is bound at a later tick.
 *
 * For a patch object:
 * A replacement runs inside an activation of its library: the tracker
 * selected it at the activation's universe.  Its calls into the library go
 * through its own PLT, which ld.so bound to the library's trampolines; their
 * return addresses lie in the patch object, not in the library's code, so
 * every such call would look external to the tracker: a record update, an
 * anchor per level of recursion, the C judgment once the anchors saturate.
 * Yet such a call is nested by construction, and two bindings are exact:
 *
 *   a function this very patch replaces: the activation's universe selected
 *     this patch's version of the caller, so the same universe selects this
 *     patch's version of the callee too (a version is valid over one
 *     interval of universes, shared by every unit of its patch).  The call
 *     is bound to the replacement itself: a recursive fix runs at native
 *     speed.
 *   any other function of the library: bound to its entry NOPs, exactly
 *     where the trampoline sends calls that come from the library itself
 *     (the body while unpatched, the patched entry's stub otherwise).
 *
 * Only PLT slots (R_X86_64_JUMP_SLOT) are rebound: they serve calls alone.
 * An address the patch takes (GLOB_DAT) may be handed out and called from
 * outside, so it keeps pointing at the trampoline.  Runs on the agent
 * thread before any of the object's code can run; if the slots cannot be
 * made writable, nothing changes and the calls keep the slower, equally
 * correct way through the trampolines. */
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ulp_internal.h"

struct plt {
    const ElfW(Rela) *relocations;
    size_t count;
    uintptr_t base;                 /* the object's load bias */
    uintptr_t relro_start;          /* read-only after relocation: */
    uintptr_t relro_end;            /* made writable for the rebinding */
};

/* ld.so turns the dynamic section's pointers absolute once it has loaded
 * the object; accept either form. */
static uintptr_t dynamic_pointer(uintptr_t base, uintptr_t value)
{
    return value < base ? value + base : value;
}

static int read_plt(uintptr_t base, const ElfW(Dyn) *dynamic, const ElfW(Phdr) *phdr,
                    int phnum, struct plt *plt)
{
    uintptr_t jmprel = 0, size = 0, kind = 0;
    for (const ElfW(Dyn) *d = dynamic; d->d_tag != DT_NULL; d++) {
        if (d->d_tag == DT_JMPREL)
            jmprel = dynamic_pointer(base, d->d_un.d_ptr);
        else if (d->d_tag == DT_PLTRELSZ)
            size = d->d_un.d_val;
        else if (d->d_tag == DT_PLTREL)
            kind = d->d_un.d_val;
    }
    if (!jmprel || kind != DT_RELA)
        return -1;
    plt->relocations = (const ElfW(Rela) *)jmprel;
    plt->count = size / sizeof(ElfW(Rela));
    plt->base = base;
    plt->relro_start = plt->relro_end = 0;
    for (int i = 0; i < phnum; i++) {
        if (phdr[i].p_type == PT_GNU_RELRO) {
            plt->relro_start = base + phdr[i].p_vaddr;
            plt->relro_end = plt->relro_start + phdr[i].p_memsz;
        }
    }
    return 0;
}

static int set_relro(const struct plt *plt, int prot)
{
    if (plt->relro_start == plt->relro_end)
        return 0;
    /* ld.so protected the whole pages inside the segment only (the end
     * rounded down): the same pages, never the writable data after them. */
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = plt->relro_start & ~(page - 1);
    uintptr_t end = plt->relro_end & ~(page - 1);
    return end > start ? mprotect((void *)start, end - start, prot) : 0;
}

/* Where a call to FD goes instead of its trampoline: a replacement of the
 * same patch, else the entry NOPs. */
static uintptr_t bound_target(struct ulp_func_desc *fd, struct ulp_func_desc *const *replaced,
                              void *const *replacements, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (replaced[i] == fd)
            return (uintptr_t)replacements[i];
    uintptr_t entry = (uintptr_t)fd + fd->entry_delta;
    return entry + (fd->flags & ULP_FUNC_FLAG_ENDBR64 ? 4 : 0);
}

/* The descriptor of the function whose trampoline is at VALUE, or NULL. */
static struct ulp_func_desc *trampoline_function(struct ulp_lib_desc *lib, uintptr_t value)
{
    uintptr_t first = (uintptr_t)lib + lib->trampolines_delta;
    uintptr_t end = first + (uintptr_t)lib->nfuncs * ULP_TRAMPOLINE_SIZE;
    if (value < first || value >= end || (value - first) % ULP_TRAMPOLINE_SIZE)
        return NULL;
    return ulp_lib_func(lib, (uint32_t)((value - first) / ULP_TRAMPOLINE_SIZE));
}

static uintptr_t *plt_slot(const struct plt *plt, size_t i)
{
    if (ELF64_R_TYPE(plt->relocations[i].r_info) != R_X86_64_JUMP_SLOT)
        return NULL;
    return (uintptr_t *)(plt->base + plt->relocations[i].r_offset);
}

/* Bind PLT's slots that lead to LIB's trampolines; nothing is written (no
 * page made writable) unless some slot does.  Returns how many were bound. */
static size_t bind_slots(const struct plt *plt, struct ulp_lib_desc *lib,
                       struct ulp_func_desc *const *replaced, void *const *replacements,
                       uint32_t n)
{
    size_t first = plt->count;
    int read_only = 0;              /* some slot to bind lies in the RELRO pages */
    for (size_t i = 0; i < plt->count; i++) {
        uintptr_t *slot = plt_slot(plt, i);
        if (slot && trampoline_function(lib, *slot)) {
            first = i < first ? i : first;
            read_only |= (uintptr_t)slot >= plt->relro_start && (uintptr_t)slot < plt->relro_end;
        }
    }
    if (first == plt->count || (read_only && set_relro(plt, PROT_READ | PROT_WRITE) != 0))
        return 0;
    size_t bound = 0;
    for (size_t i = first; i < plt->count; i++) {
        uintptr_t *slot = plt_slot(plt, i);
        struct ulp_func_desc *fd = slot ? trampoline_function(lib, *slot) : NULL;
        if (fd) {
            __atomic_store_n(slot, bound_target(fd, replaced, replacements, n),
                             __ATOMIC_RELAXED);
            bound++;
        }
    }
    if (read_only)
        set_relro(plt, PROT_READ);
    return bound;
}

static int object_phdrs(struct dl_phdr_info *info, size_t size, void *data)
{
    struct dl_phdr_info *found = data;
    (void)size;
    if (info->dlpi_addr != found->dlpi_addr)
        return 0;
    *found = *info;
    return 1;
}

ULP_HIDDEN void ulp_rebind_patch_calls(const struct link_map *map, struct ulp_lib_desc *lib,
                                       struct ulp_func_desc *const *replaced,
                                       void *const *replacements, uint32_t n)
{
    struct dl_phdr_info info = {.dlpi_addr = map->l_addr};
    struct plt plt;
    if (dl_iterate_phdr(object_phdrs, &info) == 1 &&
        read_plt(map->l_addr, map->l_ld, info.dlpi_phdr, info.dlpi_phnum, &plt) == 0)
        bind_slots(&plt, lib, replaced, replacements, n);
}

/* The slots of the patch object MAP that hold FROM[k] (a replacement it was
 * bound to) go to the entry of FDS[k] instead, for k < N: a later patch
 * replaces that function again, and only its descriptor knows which
 * version a universe runs. */
ULP_HIDDEN void ulp_unbind_patch_calls(const struct link_map *map, void *const *from,
                                       struct ulp_func_desc *const *fds, uint32_t n)
{
    struct dl_phdr_info info = {.dlpi_addr = map->l_addr};
    struct plt plt;
    if (dl_iterate_phdr(object_phdrs, &info) != 1 ||
        read_plt(map->l_addr, map->l_ld, info.dlpi_phdr, info.dlpi_phnum, &plt) != 0)
        return;
    int found = 0, read_only = 0;
    for (size_t i = 0; i < plt.count; i++) {
        uintptr_t *slot = plt_slot(&plt, i);
        for (uint32_t k = 0; slot && k < n; k++)
            if (*slot == (uintptr_t)from[k]) {
                found = 1;
                read_only |= (uintptr_t)slot >= plt.relro_start &&
                             (uintptr_t)slot < plt.relro_end;
            }
    }
    if (!found || (read_only && set_relro(&plt, PROT_READ | PROT_WRITE) != 0))
        return;
    for (size_t i = 0; i < plt.count; i++) {
        uintptr_t *slot = plt_slot(&plt, i);
        for (uint32_t k = 0; slot && k < n; k++)
            if (*slot == (uintptr_t)from[k])
                __atomic_store_n(slot, bound_target(fds[k], NULL, NULL, 0), __ATOMIC_RELAXED);
    }
    if (read_only)
        set_relro(&plt, PROT_READ);
}

/* dl_iterate_phdr holds ld.so's lock: no object is unloaded while its
 * slots are bound here. */
static int bind_own_calls(struct dl_phdr_info *info, size_t size, void *data)
{
    size_t *bound = data;
    (void)size;
    const ElfW(Dyn) *dynamic = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            dynamic = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    struct ulp_lib_desc *lib = dynamic ? ulp_registered_library_of(info) : NULL;
    struct plt plt;
    if (lib && read_plt(info->dlpi_addr, dynamic, info->dlpi_phdr, info->dlpi_phnum, &plt) == 0)
        *bound += bind_slots(&plt, lib, NULL, NULL, 0);
    return 0;
}

/* The agent's tick: every registered library's own PLT calls to its exports
 * go to their entries.  Returns how many slots were bound now. */
ULP_HIDDEN size_t ulp_rebind_library_calls(void)
{
    size_t bound = 0;
    dl_iterate_phdr(bind_own_calls, &bound);
    return bound;
}
