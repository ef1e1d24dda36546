/* Calls from a patch object into its library, bound past the tracker.
 *
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
    uintptr_t relro_start;          /* read-only after relocation: */
    uintptr_t relro_end;            /* made writable for the rebinding */
};

/* ld.so turns the dynamic section's pointers absolute once it has loaded
 * the object; accept either form. */
static uintptr_t dynamic_pointer(const struct link_map *map, uintptr_t value)
{
    return value < map->l_addr ? value + map->l_addr : value;
}

static int find_relro(struct dl_phdr_info *info, size_t size, void *data)
{
    struct plt *plt = data;
    (void)size;
    if (info->dlpi_addr != plt->relro_start)
        return 0;
    plt->relro_start = plt->relro_end = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_GNU_RELRO) {
            plt->relro_start = info->dlpi_addr + ph->p_vaddr;
            plt->relro_end = plt->relro_start + ph->p_memsz;
        }
    }
    return 1;
}

static int read_plt(const struct link_map *map, struct plt *plt)
{
    uintptr_t jmprel = 0, size = 0, kind = 0;
    for (const ElfW(Dyn) *d = map->l_ld; d->d_tag != DT_NULL; d++) {
        if (d->d_tag == DT_JMPREL)
            jmprel = dynamic_pointer(map, d->d_un.d_ptr);
        else if (d->d_tag == DT_PLTRELSZ)
            size = d->d_un.d_val;
        else if (d->d_tag == DT_PLTREL)
            kind = d->d_un.d_val;
    }
    if (!jmprel || kind != DT_RELA)
        return -1;
    plt->relocations = (const ElfW(Rela) *)jmprel;
    plt->count = size / sizeof(ElfW(Rela));
    plt->relro_start = map->l_addr;     /* the key find_relro looks for */
    dl_iterate_phdr(find_relro, plt);
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

/* Where a call from the patch to FD goes instead of its trampoline. */
static uintptr_t bound_target(struct ulp_func_desc *fd, struct ulp_func_desc *const *replaced,
                              void *const *replacements, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (replaced[i] == fd)
            return (uintptr_t)replacements[i];
    uintptr_t entry = (uintptr_t)fd + fd->entry_delta;
    return entry + (fd->flags & ULP_FUNC_FLAG_ENDBR64 ? 4 : 0);
}

ULP_HIDDEN void ulp_rebind_patch_calls(const struct link_map *map, struct ulp_lib_desc *lib,
                                       struct ulp_func_desc *const *replaced,
                                       void *const *replacements, uint32_t n)
{
    struct plt plt;
    if (read_plt(map, &plt) != 0 || set_relro(&plt, PROT_READ | PROT_WRITE) != 0)
        return;
    uintptr_t first = (uintptr_t)lib + lib->trampolines_delta;
    uintptr_t end = first + (uintptr_t)lib->nfuncs * ULP_TRAMPOLINE_SIZE;
    for (size_t i = 0; i < plt.count; i++) {
        if (ELF64_R_TYPE(plt.relocations[i].r_info) != R_X86_64_JUMP_SLOT)
            continue;
        uintptr_t *slot = (uintptr_t *)(map->l_addr + plt.relocations[i].r_offset);
        uintptr_t value = *slot;
        if (value < first || value >= end || (value - first) % ULP_TRAMPOLINE_SIZE)
            continue;
        struct ulp_func_desc *fd = ulp_lib_func(lib, (value - first) / ULP_TRAMPOLINE_SIZE);
        *slot = bound_target(fd, replaced, replacements, n);
    }
    set_relro(&plt, PROT_READ);
}
