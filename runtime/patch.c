/* Patches and their versions: prepare, commit, revert.
 *
 * Only the agent thread runs this file, one request at a time, so the patch
 * list needs no lock.  Application threads read the version lists
 * concurrently through the tracker: a version is linked in before it can be
 * chosen (its interval is empty until commit), intervals change only by
 * single aligned stores, and nothing a tracker may still hold is freed.
 *
 * The program may dlclose a prepared library at any time.  Each request
 * (and each idle tick of the agent) first looks which registered libraries
 * are still loaded: the patches of one that is gone become UNLOADED (never
 * touched again: their versions lived in its memory), its slot is freed,
 * and those still loaded stay pinned (dlopen RTLD_NOLOAD) until the request
 * is answered.  Patch objects are never dlclosed, not even when their
 * target is gone: a thread may still run a replacement it entered before,
 * and a replacement may have left pointers into itself (atexit handlers,
 * callbacks) that nothing tracks.
 *
 * A patch of several target libraries is prepared part by part, one
 * PREPARE per library (part 0 loads the patch object, the others share it),
 * and each part is a struct patch of its own with the patch's id.  COMMIT
 * and REVERT take every part of the patch at once: one G := G + 1 for all
 * of them, so no universe holds some of its versions and not the others. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ulp_internal.h"

#define ULP_LABEL_MAX 96

enum patch_state { PATCH_PENDING, PATCH_APPLIED, PATCH_REVERTED, PATCH_DISCARDED, PATCH_UNLOADED };

struct patch_version {
    struct ulp_version version;     /* first: the tracker reads it */
    struct ulp_func_desc *fd;
};

struct patch {
    uint8_t id[16];
    uint8_t part_id[16];            /* what its id would be with only this library */
    uint8_t so_sha256[32];
    uint16_t part, nparts;          /* which target library of the patch, of how many */
    enum patch_state state;
    struct ulp_lib_desc *lib;
    int slot;                       /* lib's slot in the library table */
    void *handle;
    int so_fd;                      /* the sealed memfd its object was loaded from */
    uint32_t nunits;
    struct patch_version **versions;
    uint32_t nrequires;
    uint8_t (*requires)[16];
    char label[ULP_LABEL_MAX];      /* for STATUS: the patch's labels, maybe cut */
    uint64_t applied_at;            /* the universe its commit published (LIST) */
    uint64_t applied_ns;            /* and when (CLOCK_REALTIME) */
    char object[ULP_APPLIED_TEXT];  /* its patch object's path when packed, maybe cut */
    struct patch *next;
};

static struct patch *patches;

/* Objects kept loaded until the current request is answered. */
static struct {
    void *handles[ULP_MAX_LIBS + 1];
    int n;
} pins;

static void release_pins(void)
{
    while (pins.n > 0)
        dlclose(pins.handles[--pins.n]);
}

/* Write the applied patches into the table readers outside the process
 * see (applied.c), newest applied first, as the list keeps them. */
static void publish_applied(void)
{
    ulp_applied_begin();
    for (struct patch *p = patches; p; p = p->next) {
        if (p->state != PATCH_APPLIED)
            continue;
        struct ulp_applied_patch entry = {
            .lib_desc = (uint64_t)(uintptr_t)p->lib, .universe = p->applied_at,
            .time_ns = p->applied_ns, .part = p->part, .nparts = p->nparts,
        };
        memcpy(entry.id, p->id, sizeof entry.id);
        snprintf(entry.label, sizeof entry.label, "%s", p->label);
        snprintf(entry.object, sizeof entry.object, "%s", p->object);
        ulp_applied_add(&entry);
    }
    ulp_applied_end();
}

/* Mark the patches of the library in SLOT unloaded, and free the slot. */
static void forget_library(int slot, struct ulp_lib_desc *lib)
{
    int had_applied = 0;
    for (struct patch *p = patches; p; p = p->next)
        if (p->slot == slot && p->state != PATCH_DISCARDED) {
            had_applied |= p->state == PATCH_APPLIED;
            p->state = PATCH_UNLOADED;
        }
    if (had_applied)
        publish_applied();
    ulp_forget_private(lib);
    ulp_transition_forget(slot);
    ulp_forget_slot(slot, lib);
}

/* Look which registered libraries are still loaded and registered where
 * the table says; forget the others.  KEEP: leave those still loaded
 * pinned until release_pins(). */
static void sweep(int keep)
{
    for (int slot = 0; slot < ULP_MAX_LIBS; slot++) {
        struct ulp_lib_desc *lib = ulp_library_in_slot(slot);
        if (!lib)
            continue;
        if (!keep) {
            if (!ulp_library_registered_in(lib, slot))
                forget_library(slot, lib);
            continue;
        }
        int gone;
        void *handle = ulp_pin_object((uint64_t)(uintptr_t)lib, &gone);
        if (!handle && !gone)
            continue;       /* there, but its memory is not to be touched: keep it */
        if (handle) {
            int64_t state = __atomic_load_n(&lib->state, __ATOMIC_ACQUIRE);
            if (memcmp(lib->magic, ULP_LIB_MAGIC, 8) == 0 && (state == slot + 1 || state == 0)) {
                if (keep && pins.n < ULP_MAX_LIBS)
                    pins.handles[pins.n++] = handle;
                else
                    dlclose(handle);
                continue;   /* still loaded, registered there (or being registered) */
            }
            dlclose(handle);
        }
        forget_library(slot, lib);
    }
}

/* The agent's idle tick: forget what was unloaded since the last look. */
ULP_HIDDEN void ulp_forget_unloaded(void)
{
    sweep(0);
}

/* A request as received, with bounds already checked. */
struct parsed_request {
    const struct ulp_request *head;
    const uint8_t (*deps)[16];
    const struct ulp_request_unit *units;
    struct ulp_request_private *privates;   /* the agent writes their descriptors back */
    const struct ulp_request_ref *refs;
    const struct ulp_request_thread *threads;
    const char *strings;
    const uint8_t *tail;                    /* what follows the strings */
    uint64_t tail_size;
};

struct reply {
    char *text;
    size_t size;
};

static int answer(struct reply *reply, int status, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static int answer(struct reply *reply, int status, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(reply->text, reply->size, format, args);
    va_end(args);
    return status;
}

static void hex_id(const uint8_t id[16], char out[33])
{
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", id[i]);
}

static const char *string_at(const struct parsed_request *req, uint32_t offset)
{
    uint32_t size = req->head->strings_size;
    if (offset >= size || memchr(req->strings + offset, '\0', size - offset) == NULL)
        return NULL;
    return req->strings + offset;
}

static int parse_request(const struct ulp_request *head, uint32_t size,
                         struct parsed_request *req)
{
    if (size < sizeof *head || head->ndeps > 256 || head->nunits > 65536 ||
        head->nprivate > 65536 || head->nrefs > 65536 || head->nthreads > 65536)
        return -1;
    uint64_t need = sizeof *head + (uint64_t)head->ndeps * 16 +
                    (uint64_t)head->nunits * sizeof(struct ulp_request_unit) +
                    (uint64_t)head->nprivate * sizeof(struct ulp_request_private) +
                    (uint64_t)head->nrefs * sizeof(struct ulp_request_ref) +
                    (uint64_t)head->nthreads * sizeof(struct ulp_request_thread) +
                    head->strings_size;
    if (need > size)
        return -1;
    const uint8_t *cursor = (const uint8_t *)(head + 1);
    req->head = head;
    req->deps = (const uint8_t(*)[16])cursor;
    cursor += head->ndeps * 16;
    req->units = (const struct ulp_request_unit *)cursor;
    cursor += head->nunits * sizeof(struct ulp_request_unit);
    req->privates = (struct ulp_request_private *)cursor;
    cursor += head->nprivate * sizeof(struct ulp_request_private);
    req->refs = (const struct ulp_request_ref *)cursor;
    cursor += head->nrefs * sizeof(struct ulp_request_ref);
    req->threads = (const struct ulp_request_thread *)cursor;
    cursor += head->nthreads * sizeof(struct ulp_request_thread);
    req->strings = (const char *)cursor;
    req->tail = cursor + head->strings_size;
    req->tail_size = size - need;
    return 0;
}

static struct patch *find_patch(const uint8_t id[16], enum patch_state state)
{
    for (struct patch *p = patches; p; p = p->next)
        if (p->state == state && memcmp(p->id, id, 16) == 0)
            return p;
    return NULL;
}

static struct patch *find_part(const uint8_t id[16], enum patch_state state, uint16_t part)
{
    for (struct patch *p = patches; p; p = p->next)
        if (p->state == state && p->part == part && memcmp(p->id, id, 16) == 0)
            return p;
    return NULL;
}

static void unlink_version(struct patch_version *pv)
{
    struct ulp_version **link = &pv->fd->versions;
    while (*link && *link != &pv->version)
        link = &(*link)->next;
    if (*link)
        __atomic_store_n(link, pv->version.next, __ATOMIC_RELEASE);
}

/* A prepared patch whose trigger died before committing is dropped by the
 * next request: its versions were never visible. */
static void discard(struct patch *p)
{
    for (uint32_t i = 0; i < p->nunits; i++)
        unlink_version(p->versions[i]);
    p->state = PATCH_DISCARDED;
}

static void discard_pending(void)
{
    for (struct patch *p = patches; p; p = p->next)
        if (p->state == PATCH_PENDING)
            discard(p);
}

static uint16_t nparts_of(const struct ulp_request *head)
{
    return head->nparts ? head->nparts : 1;
}

/* PREPARE of part K > 0 keeps the parts of the same patch prepared before
 * it; anything else pending is dropped, as for a patch of one library. */
static void discard_pending_but_earlier_parts(const struct ulp_request *head)
{
    for (struct patch *p = patches; p; p = p->next)
        if (p->state == PATCH_PENDING &&
            !(head->part > 0 && p->part < head->part && p->nparts == nparts_of(head) &&
              memcmp(p->id, head->patch_id, 16) == 0))
            discard(p);
}

/* The parts of patch ID in STATE, by part number; how many there are. */
static uint32_t parts_of(const uint8_t id[16], enum patch_state state,
                         struct patch *parts[ULP_MAX_LIBS])
{
    uint32_t n = 0;
    for (struct patch *p = patches; p; p = p->next)
        if (p->state == state && memcmp(p->id, id, 16) == 0 && p->part < ULP_MAX_LIBS &&
            !parts[p->part]) {
            parts[p->part] = p;
            n++;
        }
    return n;
}

static int check_requirements(const struct parsed_request *req, struct reply *reply)
{
    for (uint32_t i = 0; i < req->head->ndeps; i++) {
        if (!find_patch(req->deps[i], PATCH_APPLIED)) {
            char hex[33];
            hex_id(req->deps[i], hex);
            return answer(reply, ULP_E_DEPENDENCY, "required patch %s is not applied", hex);
        }
    }
    return ULP_OK;
}

static int find_target(const struct parsed_request *req, struct ulp_lib_desc **out,
                       struct reply *reply)
{
    void *pin;
    struct ulp_lib_desc *lib = ulp_find_loaded_library(req->head->lib_desc, &pin);
    if (pin)
        pins.handles[pins.n++] = pin;   /* room: at most one beyond the sweep's */
    if (!lib)
        return answer(reply, ULP_E_NOT_ULP_LIBRARY,
                    "no prepared library descriptor at %#lx", (unsigned long)req->head->lib_desc);
    if (memcmp(lib->identity, req->head->identity, 32) != 0)
        return answer(reply, ULP_E_TARGET_MISMATCH,
                    "the loaded library is not the one the patch was packed for");
    if (!ulp_register_library(lib))
        return answer(reply, ULP_E_TOO_MANY_LIBS, "more than %d prepared libraries loaded",
                    ULP_MAX_LIBS);
    for (uint32_t i = 0; i < req->head->nunits; i++)
        if (req->units[i].index >= lib->nfuncs)
            return answer(reply, ULP_E_BAD_REQUEST, "function index %u out of range",
                        req->units[i].index);
    *out = lib;
    return ULP_OK;
}

/* The patch object travels as bytes: STAGE creates an empty memfd, the
 * trigger fills it through /proc/PID/fd/N, PREPARE seals it, hashes the
 * sealed bytes and loads them.  Or, one request fewer per process (a
 * fleet's trigger makes thousands), the trigger appends the bytes to the
 * PREPARE request (ULP_SO_INLINE) and PREPARE copies them into a memfd of
 * its own.  Sealed bytes can no longer change, so what was hashed is what
 * is mapped; no path the patch names is ever opened here, so no FIFO or
 * device can block the agent and the file need not be visible in this
 * process's mount namespace.  At most one descriptor is staged: a trigger
 * that dies between STAGE and PREPARE leaves one, which the next request
 * closes. */
ULP_HIDDEN int32_t ulp_staged_fd = -1;

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#define ULP_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

static void drop_staged(void)
{
    if (ulp_staged_fd >= 0)
        close(ulp_staged_fd);
    ulp_staged_fd = -1;
}

static int new_memfd(void)
{
    /* MFD_EXEC: the object is mapped executable.  Kernels before 6.3 do
     * not know the flag (EINVAL), and vm.memfd_noexec=2 refuses it (EACCES):
     * then without it (ld.so maps the object; nothing executes the file) */
    int fd = memfd_create("ulp-patch", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
    if (fd < 0 && (errno == EINVAL || errno == EACCES))
        fd = memfd_create("ulp-patch", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    return fd;
}

static int stage(struct reply *reply)
{
    drop_staged();
    int fd = new_memfd();
    if (fd < 0)
        return answer(reply, ULP_E_STAGE, "cannot create a memfd for the patch object: %s",
                      strerror(errno));
    ulp_staged_fd = fd;
    return answer(reply, ULP_OK, "staged on descriptor %d", fd);
}

/* ULP_SO_INLINE: a memfd holding the request's last so_size bytes, as if
 * staged and filled; -1 (errno set) if it cannot be made. */
static int stage_inline(const struct parsed_request *req)
{
    uint64_t size = req->head->so_size;
    if (size == 0 || size > req->tail_size) {
        errno = EINVAL;
        return -1;
    }
    int fd = new_memfd();
    if (fd < 0)
        return -1;
    const uint8_t *bytes = req->tail + (req->tail_size - size);
    for (uint64_t done = 0; done < size;) {
        ssize_t wrote = write(fd, bytes + done, size - done);
        if (wrote < 0 && errno == EINTR)
            continue;
        if (wrote <= 0) {
            int err = wrote < 0 ? errno : ENOSPC;
            close(fd);
            errno = err;
            return -1;
        }
        done += (uint64_t)wrote;
    }
    return fd;
}

/* A string as the packer hashes it: u16 length, then the bytes. */
static void hash_string(struct ulp_sha256 *h, const char *text)
{
    size_t length = text ? strlen(text) : 0;
    uint8_t size[2] = {(uint8_t)length, (uint8_t)(length >> 8)};
    ulp_sha256_update(h, size, 2);
    ulp_sha256_update(h, text ? text : "", length);
}

/* The patch id is derived from the patch's content (docs/patch-format.md):
 * the first 16 bytes of SHA-256 over a tag, the patch object's hash, the
 * target identity, the units (index and replacement name) and the ids it
 * requires.  Recomputed here from the request, it binds the id to the bytes
 * checked below. */
static void patch_id_of(const struct parsed_request *req, uint8_t id[16])
{
    static const char tag[16] = "ulp patch id v3";    /* 15 characters and a NUL */
    const struct ulp_request *head = req->head;
    struct ulp_sha256 h;
    uint8_t digest[32], word[4];

    ulp_sha256_init(&h);
    ulp_sha256_update(&h, tag, sizeof tag);
    ulp_sha256_update(&h, head->so_sha256, 32);
    ulp_sha256_update(&h, head->identity, 32);
    memcpy(word, &head->nunits, 4);                 /* little-endian, as the packer */
    ulp_sha256_update(&h, word, 4);
    for (uint32_t i = 0; i < head->nunits; i++) {
        memcpy(word, &req->units[i].index, 4);
        ulp_sha256_update(&h, word, 4);
        hash_string(&h, string_at(req, req->units[i].name));
    }
    memcpy(word, &head->ndeps, 4);
    ulp_sha256_update(&h, word, 4);
    ulp_sha256_update(&h, req->deps, (size_t)head->ndeps * 16);
    /* v3: the private functions and the data references */
    memcpy(word, &head->nprivate, 4);
    ulp_sha256_update(&h, word, 4);
    for (uint32_t i = 0; i < head->nprivate; i++) {
        ulp_sha256_update(&h, &req->privates[i].entry_delta, 8);
        ulp_sha256_update(&h, &req->privates[i].flags, 4);
        hash_string(&h, string_at(req, req->privates[i].name));
    }
    memcpy(word, &head->nrefs, 4);
    ulp_sha256_update(&h, word, 4);
    for (uint32_t i = 0; i < head->nrefs; i++) {
        ulp_sha256_update(&h, &req->refs[i].kind, 4);
        ulp_sha256_update(&h, &req->refs[i].delta, 8);
        hash_string(&h, string_at(req, req->refs[i].name));
    }
    ulp_sha256_final(&h, digest);
    memcpy(id, digest, 16);
}

/* The id of a patch of several libraries, over its parts' ids in order
 * (docs/patch-format.md, "Patch id"): tag, u32 count, then each part id. */
static void group_id_of(struct patch *const *earlier, uint16_t nparts, const uint8_t last[16],
                        uint8_t id[16])
{
    static const char tag[16] = "ulp patch id v4";
    struct ulp_sha256 h;
    uint8_t digest[32], word[4];
    uint32_t count = nparts;

    ulp_sha256_init(&h);
    ulp_sha256_update(&h, tag, sizeof tag);
    memcpy(word, &count, 4);
    ulp_sha256_update(&h, word, 4);
    for (uint16_t i = 0; i + 1 < nparts; i++)
        ulp_sha256_update(&h, earlier[i]->part_id, 16);
    ulp_sha256_update(&h, last, 16);
    ulp_sha256_final(&h, digest);
    memcpy(id, digest, 16);
}

/* The request's content gives its patch id: a patch of one library by
 * itself; part K of a patch of several follows its parts 0..K-1, pending,
 * of other libraries, and the last part completes the id over all of them.
 * PART_ID: this part's own id. */
static int check_part_id(const struct parsed_request *req, uint8_t part_id[16],
                         struct reply *reply)
{
    const struct ulp_request *head = req->head;
    uint16_t nparts = nparts_of(head);
    struct patch *earlier[ULP_MAX_LIBS] = {0};
    uint8_t id[16];

    patch_id_of(req, part_id);
    if (nparts == 1) {
        if (memcmp(part_id, head->patch_id, 16) != 0)
            return answer(reply, ULP_E_PATCH_ID, "the patch id does not match the patch's content");
        return ULP_OK;
    }
    if (nparts > ULP_MAX_LIBS || head->part >= nparts)
        return answer(reply, ULP_E_BAD_REQUEST, "part %u of %u", head->part, nparts);
    if (parts_of(head->patch_id, PATCH_PENDING, earlier) != head->part)
        return answer(reply, ULP_E_NOT_PENDING, "part %u of the patch comes without the parts "
                      "before it", head->part);
    for (uint16_t i = 0; i < head->part; i++)
        if (memcmp(earlier[i]->lib->identity, head->identity, 32) == 0)
            return answer(reply, ULP_E_BAD_REQUEST, "parts %u and %u of the patch name the same "
                          "library", i, head->part);
    if (head->part + 1 == nparts) {
        group_id_of(earlier, nparts, part_id, id);
        if (memcmp(id, head->patch_id, 16) != 0)
            return answer(reply, ULP_E_PATCH_ID, "the patch id does not match the content of "
                          "its %u parts", nparts);
    }
    return ULP_OK;
}

/* Parts after the first share the object part 0 loaded from the staged
 * bytes: one patch object, whatever the number of libraries it patches. */
static int share_object(const struct parsed_request *req, struct patch *p, struct reply *reply)
{
    struct patch *first = find_part(req->head->patch_id, PATCH_PENDING, 0);
    if (!first || !first->handle || memcmp(first->so_sha256, req->head->so_sha256, 32) != 0)
        return answer(reply, ULP_E_STAGE, "part %u of the patch has no patch object: its first "
                      "part was not prepared with it", req->head->part);
    p->handle = first->handle;
    return ULP_OK;
}

/* An object is loaded under the name /proc/self/fd/N, and ld.so matches
 * objects by name before it opens anything: the name must not be one an
 * object already carries (an application may have loaded something through
 * /proc/self/fd/N and closed N since).  Move the descriptor until its name
 * is free.  Our own descriptors stay open for the life of their objects, so
 * no later patch can take their names. */
static int free_name(int *fd, char name[64])
{
    for (int attempt = 0; attempt < 16; attempt++) {
        snprintf(name, 64, "/proc/self/fd/%d", *fd);
        void *other = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
        if (!other) {
            dlerror();
            return 0;
        }
        dlclose(other);
        int moved = fcntl(*fd, F_DUPFD_CLOEXEC, *fd + 1);
        if (moved < 0)
            return -1;
        close(*fd);
        *fd = moved;
    }
    return -1;
}

/* Seal the staged memfd, check its size and hash, and load it; the patch
 * keeps the descriptor.  Debuggers read the name from the link map, and
 * /proc/self/fd/N would name one of their own descriptors: the map gets the
 * patch object's path at pack time instead. */
/* Seal the staged object.  The kernel refuses the write seal (EBUSY) while
 * a page of it still has a reference it cannot account for: one the
 * trigger's write left in a CPU's page batch, which a busy machine drains
 * late.  Wait for it a little (up to ~0.5 s); the agent may sleep here. */
static int seal(int fd)
{
    for (int attempt = 0;; attempt++) {
        if (fcntl(fd, F_ADD_SEALS, ULP_SEALS) == 0)
            return 0;
        if (errno != EBUSY || attempt == 100)
            return -1;
        struct timespec pause = {0, 5 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

static int load_patch_object(const struct parsed_request *req, struct patch *p,
                             struct reply *reply)
{
    const char *path = string_at(req, req->head->so_path);
    char fd_name[64];
    struct stat info;
    uint8_t digest[32];
    int err;

    if (!path)
        return answer(reply, ULP_E_BAD_REQUEST, "malformed patch object path");
    int fd;
    if (req->head->so_fd == ULP_SO_INLINE) {
        drop_staged();
        if ((fd = stage_inline(req)) < 0)
            return answer(reply, ULP_E_STAGE, "cannot copy the patch object into a memfd: %s",
                          strerror(errno));
    } else {
        if (ulp_staged_fd < 0 || req->head->so_fd != ulp_staged_fd)
            return answer(reply, ULP_E_STAGE, "no staged patch object on descriptor %d",
                          req->head->so_fd);
        fd = ulp_staged_fd;
        ulp_staged_fd = -1;     /* ours now: closed on every failure below */
    }
    if (seal(fd) != 0 || fcntl(fd, F_GET_SEALS) != ULP_SEALS) {
        err = errno;
        close(fd);
        return answer(reply, ULP_E_STAGE, "cannot seal the staged patch object: %s",
                      strerror(err));
    }
    if (fstat(fd, &info) != 0 || (uint64_t)info.st_size != req->head->so_size) {
        close(fd);
        return answer(reply, ULP_E_PATCH_HASH, "patch object %s arrived with %lld bytes, "
                      "not %llu", path, (long long)info.st_size,
                      (unsigned long long)req->head->so_size);
    }
    if ((err = ulp_sha256_fd(fd, digest)) < 0) {
        close(fd);
        return answer(reply, ULP_E_PATCH_OPEN, "cannot read the staged patch object: %s",
                      strerror(-err));
    }
    if (memcmp(digest, req->head->so_sha256, 32) != 0) {
        close(fd);
        return answer(reply, ULP_E_PATCH_HASH,
                      "patch object %s changed since it was packed (SHA-256 mismatch)", path);
    }
    /* the same patch loaded before (applied, reverted, applied again): its
     * id covers the hash just checked, so its object holds these bytes */
    for (struct patch *q = patches; q; q = q->next) {
        if (q->handle && memcmp(q->id, p->id, 16) == 0) {
            close(fd);
            p->handle = q->handle;
            return ULP_OK;
        }
    }
    if (free_name(&fd, fd_name) != 0) {
        close(fd);
        return answer(reply, ULP_E_PATCH_LOAD, "no free name to load patch object %s", path);
    }
    /* ld.so needs a path: without /proc in the process's root (a bare
     * chroot) the sealed bytes cannot be named, and there is no safe
     * fallback (a copy in a file would no longer be the bytes checked) */
    if (access(fd_name, R_OK) != 0) {
        err = errno;
        close(fd);
        return answer(reply, ULP_E_PATCH_LOAD, "cannot load patch object %s: %s: %s (the "
                      "process needs /proc mounted in its root)", path, fd_name, strerror(err));
    }
    void *handle = dlopen(fd_name, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        /* A patch calling the target's exported functions by name, without
         * naming the target in its DT_NEEDED, into a target the program
         * opened RTLD_LOCAL: once the target's symbols are global, it loads
         * (docs/patching-private.md) */
        const char *first = dlerror();
        if (first && strstr(first, "undefined symbol") && ulp_make_global(p->lib))
            handle = dlopen(fd_name, RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
            const char *error = dlerror();
            close(fd);
            return answer(reply, ULP_E_PATCH_LOAD, "cannot load patch object %s: %s", path,
                          error ? error : first);
        }
    }
    struct link_map *map;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && strcmp(map->l_name, fd_name) == 0) {
        char *name = strdup(path);
        if (name)
            __atomic_store_n(&map->l_name, name, __ATOMIC_RELEASE);
    }
    p->handle = handle;
    p->so_fd = fd;
    return ULP_OK;
}

/* dlsym also searches the patch's dependencies; the replacement must be
 * defined by the patch object itself. */
static void *patch_symbol(void *handle, const char *name)
{
    struct link_map *map;
    Dl_info info;
    void *address = dlsym(handle, name);
    if (!address || dlinfo(handle, RTLD_DI_LINKMAP, &map) != 0 || !dladdr(address, &info))
        return NULL;
    return (uintptr_t)info.dli_fbase == map->l_addr ? address : NULL;
}

static struct patch *new_patch(const struct parsed_request *req, struct ulp_lib_desc *lib)
{
    const struct ulp_request *head = req->head;
    struct patch *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    uint32_t nversions = head->nunits + head->nprivate;
    p->versions = calloc(nversions ? nversions : 1, sizeof *p->versions);
    p->requires = calloc(head->ndeps ? head->ndeps : 1, 16);
    if (!p->versions || !p->requires) {
        free(p->versions);
        free(p->requires);
        free(p);
        return NULL;
    }
    memcpy(p->id, head->patch_id, 16);
    memcpy(p->so_sha256, head->so_sha256, 32);
    p->part = head->part;
    p->nparts = nparts_of(head);
    memcpy(p->requires, req->deps, (size_t)head->ndeps * 16);
    p->nrequires = head->ndeps;
    p->lib = lib;
    p->so_fd = -1;
    p->state = PATCH_PENDING;
    const char *label = head->label != UINT32_MAX ? string_at(req, head->label) : NULL;
    if (label) {
        snprintf(p->label, sizeof p->label, "%s", label);
        for (char *c = p->label; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = '?';       /* STATUS is one line per patch */
    }
    const char *object = string_at(req, head->so_path);
    snprintf(p->object, sizeof p->object, "%s", object ? object : "");
    return p;
}

/* One version of FD running the patch object's NAME, still invisible. */
static int add_version(struct patch *p, struct ulp_func_desc *fd, const char *name,
                       struct reply *reply)
{
    if (!name)
        return answer(reply, ULP_E_BAD_REQUEST, "malformed function name");
    void *target = patch_symbol(p->handle, name);
    if (!target)
        return answer(reply, ULP_E_PATCH_SYMBOL, "patch object does not define %s", name);
    struct patch_version *pv = calloc(1, sizeof *pv);
    if (!pv)
        return answer(reply, ULP_E_NO_MEMORY, "out of memory");
    pv->fd = fd;
    pv->version.applied_at = ULP_UNIVERSE_NEVER;    /* invisible until commit */
    pv->version.reverted_at = ULP_UNIVERSE_NEVER;
    pv->version.target = target;
    p->versions[p->nunits++] = pv;
    ulp_add_code_of(target);    /* a thread in it is inside the library */
    return ULP_OK;
}

/* The descriptors of the private functions, written back into the request
 * for the trigger (it writes their stubs). */
static int add_private_versions(const struct parsed_request *req, struct patch *p,
                                struct reply *reply)
{
    for (uint32_t i = 0; i < req->head->nprivate; i++) {
        struct ulp_request_private *unit = &req->privates[i];
        const char *problem = "";
        const char *name = string_at(req, unit->name);
        struct ulp_func_desc *fd = ulp_private_desc(p->lib, unit->entry_delta, unit->flags, unit->size,
                                                    &problem);
        if (!fd)
            return answer(reply, ULP_E_PRIVATE, "the function replaced by %s %s",
                          name ? name : "?", problem);
        int status = add_version(p, fd, name, reply);
        if (status != ULP_OK)
            return status;
        unit->desc = (uint64_t)(uintptr_t)fd;
    }
    return ULP_OK;
}

static int fill_references(const struct parsed_request *req, struct patch *p,
                           struct reply *reply)
{
    for (uint32_t i = 0; i < req->head->nrefs; i++) {
        const char *problem = "";
        const char *name = string_at(req, req->refs[i].name);
        if (!name)
            return answer(reply, ULP_E_BAD_REQUEST, "malformed reference name");
        if (ulp_fill_reference(p->handle, p->lib, &req->refs[i], name, &problem) != 0)
            return answer(reply, ULP_E_REFERENCE, "reference %s %s", name, problem);
    }
    return ULP_OK;
}

/* The patch object's calls into its library skip the trampolines
 * (rebind.c); an allocation failure only leaves them the slower way. */
/* Does a patch newer than P (ahead of it in the list) replace FD too?
 * Then P's own replacement of FD is not what every universe P runs in
 * selects, and P's calls to it must ask the descriptor. */
static int replaces(const struct patch *p, const struct ulp_func_desc *fd)
{
    for (uint32_t i = 0; i < p->nunits; i++)
        if (p->versions[i]->fd == fd)
            return 1;
    return 0;
}

static int replaced_again(const struct patch *p, const struct ulp_func_desc *fd)
{
    for (const struct patch *q = patches; q && q != p; q = q->next)
        if (q->lib == p->lib && q->state != PATCH_DISCARDED && q->state != PATCH_UNLOADED &&
            replaces(q, fd))
            return 1;
    return 0;
}

static void bind_calls_into_library(const struct patch *p)
{
    struct link_map *map;
    if (dlinfo(p->handle, RTLD_DI_LINKMAP, &map) != 0)
        return;
    struct ulp_func_desc **replaced = calloc(p->nunits + 1, sizeof *replaced);
    void **replacements = calloc(p->nunits + 1, sizeof *replacements);
    if (replaced && replacements) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < p->nunits; i++) {
            if (replaced_again(p, p->versions[i]->fd))
                continue;   /* to its entry, like a function P does not replace */
            replaced[n] = p->versions[i]->fd;
            replacements[n++] = p->versions[i]->version.target;
        }
        ulp_rebind_patch_calls(map, p->lib, replaced, replacements, n);
    }
    free(replaced);
    free(replacements);
}

/* NEWER was just prepared: older patch objects of its library that call a
 * function NEWER replaces again call it through its entry from now on. */
static void unbind_replaced_again(const struct patch *newer)
{
    void *from[64];
    struct ulp_func_desc *fds[64];
    for (struct patch *p = newer->next; p; p = p->next) {
        struct link_map *map;
        if (p->lib != newer->lib || p->nparts != 1 || !p->handle ||
            p->state == PATCH_DISCARDED || p->state == PATCH_UNLOADED ||
            dlinfo(p->handle, RTLD_DI_LINKMAP, &map) != 0)
            continue;
        uint32_t n = 0;
        for (uint32_t k = 0; k < p->nunits; k++) {
            if (replaces(newer, p->versions[k]->fd)) {
                from[n] = p->versions[k]->version.target;
                fds[n++] = p->versions[k]->fd;
            }
            if (n == 64 || (n && k + 1 == p->nunits)) {
                ulp_unbind_patch_calls(map, from, fds, n);
                n = 0;
            }
        }
    }
}

static int create_versions(const struct parsed_request *req, struct patch *p,
                           struct reply *reply)
{
    int status;
    for (uint32_t i = 0; i < req->head->nunits; i++) {
        status = add_version(p, ulp_lib_func(p->lib, req->units[i].index),
                             string_at(req, req->units[i].name), reply);
        if (status != ULP_OK)
            return status;
    }
    if ((status = add_private_versions(req, p, reply)) != ULP_OK ||
        (status = fill_references(req, p, reply)) != ULP_OK)
        return status;
    /* Not for a patch of several libraries: its object's calls into one of
     * them may come from a replacement of another, outside any activation
     * of the library called, and must be judged by its trampoline. */
    if (p->nparts == 1)
        bind_calls_into_library(p);
    /* Only link once every symbol resolved, so a failure leaves no trace. */
    for (uint32_t i = 0; i < p->nunits; i++) {
        struct patch_version *pv = p->versions[i];
        /* Before the version is visible: from now on the tracker walks the
         * list instead of taking the original body directly. */
        __atomic_fetch_or(&pv->fd->flags, ULP_FUNC_FLAG_PATCHED, __ATOMIC_RELEASE);
        pv->version.next = pv->fd->versions;
        __atomic_store_n(&pv->fd->versions, &pv->version, __ATOMIC_RELEASE);
    }
    return ULP_OK;
}

static void free_patch(struct patch *p)
{
    for (uint32_t i = 0; i < p->nunits; i++)
        free(p->versions[i]);
    free(p->versions);
    free(p->requires);
    free(p);
}

static int prepare(const struct parsed_request *req, struct reply *reply)
{
    struct ulp_lib_desc *lib = NULL;
    uint8_t id[16];
    int status;

    if ((status = check_part_id(req, id, reply)) != ULP_OK)
        return status;
    struct patch *applied = find_part(req->head->patch_id, PATCH_APPLIED, req->head->part);
    if (applied && applied->lib == (struct ulp_lib_desc *)(uintptr_t)req->head->lib_desc)
        return answer(reply, ULP_E_ALREADY_APPLIED, "patch is already applied");
    if (applied)
        return answer(reply, ULP_E_TARGET_MISMATCH,
                      "patch is applied to another copy of the library (descriptor at %p); "
                      "a library loaded twice cannot be patched", (void *)applied->lib);
    if ((status = check_requirements(req, reply)) != ULP_OK)
        return status;
    if ((status = find_target(req, &lib, reply)) != ULP_OK)
        return status;
    struct patch *p = new_patch(req, lib);
    if (!p)
        return answer(reply, ULP_E_NO_MEMORY, "out of memory");
    memcpy(p->part_id, id, 16);
    status = p->part > 0 ? share_object(req, p, reply) : load_patch_object(req, p, reply);
    if (status != ULP_OK) {
        free_patch(p);
        return status;
    }
    if ((status = create_versions(req, p, reply)) != ULP_OK) {
        /* a loaded object stays (never unloaded) and keeps its descriptor,
         * so its name stays unique: remember it as a discarded patch */
        for (uint32_t i = 0; i < p->nunits; i++)
            free(p->versions[i]);
        p->nunits = 0;
        p->state = PATCH_DISCARDED;
        p->next = patches;
        patches = p;
        return status;
    }
    p->slot = ulp_library_slot(lib);
    p->next = patches;
    patches = p;
    unbind_replaced_again(p);
    ulp_log_patch(ULP_LOG_STAGED, p->id, p->label, lib, p->nunits);
    return answer(reply, ULP_OK, "prepared %u function(s)", p->nunits);
}

/* Start a transition of every part's library (transition.c: every other
 * thread is stopped, as REQ's thread table tells) and publish a new
 * universe in which the versions of every part are stamped valid (or
 * reverted).  Nothing is published before every version of every library
 * is stamped, so no universe holds some of them only. */
static uint64_t stamp_and_publish(const struct parsed_request *req, struct patch *const *parts,
                                  uint32_t nparts, int reverting, enum patch_state state)
{
    struct ulp_lib_desc *libs[ULP_MAX_LIBS] = {0};
    int slots[ULP_MAX_LIBS] = {0};
    for (uint32_t k = 0; k < nparts; k++) {
        libs[k] = parts[k]->lib;
        slots[k] = parts[k]->slot;
    }
    ulp_begin_transition(libs, slots, nparts, req->threads, req->head->nthreads);
    uint64_t next = __atomic_load_n(&ulp_global_universe, __ATOMIC_ACQUIRE) + 1;
    for (uint32_t k = 0; k < nparts; k++) {
        struct patch *p = parts[k];
        for (uint32_t i = 0; i < p->nunits; i++) {
            uint64_t *field = reverting ? &p->versions[i]->version.reverted_at
                                        : &p->versions[i]->version.applied_at;
            __atomic_store_n(field, next, __ATOMIC_RELEASE);
        }
    }
    __atomic_store_n(&ulp_global_universe, next, __ATOMIC_RELEASE);
    for (uint32_t k = 0; k < nparts; k++) {
        parts[k]->state = state;
        if (!reverting)
            parts[k]->applied_at = next;
    }
    return next;
}

/* The parts of the patch, gathered densely: NULL slots (parts whose library
 * was unloaded) left out. */
static uint32_t gather(struct patch *parts[ULP_MAX_LIBS])
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < ULP_MAX_LIBS; i++)
        if (parts[i])
            parts[n++] = parts[i];
    return n;
}

/* Apply (or revert) the N PARTS of a patch in one step, log it, answer. */
static int publish(const struct parsed_request *req, struct patch *const *parts, uint32_t n,
                   int reverting, struct reply *reply)
{
    static char unnoted[320];
    const char *why = ulp_coroutine_stacks_judgeable();
    if (why)
        return answer(reply, ULP_E_COROUTINES, "%s; nothing changed", why);
    struct ulp_lib_desc *libs[ULP_MAX_LIBS] = {0};
    for (uint32_t k = 0; k < n; k++)
        libs[k] = parts[k]->lib;
    ulp_know_code_of(libs, n);
    /* the request lies in the mailbox, the agent's while it handles it */
    if ((req->head->flags & ULP_REQUEST_FILL_BOUNDS) &&
        ulp_fill_thread_stacks((struct ulp_request_thread *)req->threads,
                               req->head->nthreads) != 0)
        why = "cannot read /proc/self/maps to find the threads' stacks";
    if (!why)
        why = ulp_threads_sharing_a_record(req->threads, req->head->nthreads, unnoted,
                                           sizeof unnoted);
    if (!why && !(req->head->flags & ULP_REQUEST_TRUST_STACKS))
        why = ulp_unnoted_stack_activation(req->threads, req->head->nthreads, unnoted,
                                           sizeof unnoted);
    if (why) {
        ulp_coroutine_stacks_unjudged();
        return answer(reply, ULP_E_COROUTINES, "%s; nothing changed", why);
    }
    uint64_t universe = stamp_and_publish(req, parts, n, reverting,
                                          reverting ? PATCH_REVERTED : PATCH_APPLIED);
    uint64_t now = ulp_applied_now();
    for (uint32_t k = 0; k < n; k++) {
        parts[k]->applied_ns = now;
        ulp_log_patch(reverting ? ULP_LOG_REVERTED : ULP_LOG_APPLIED, parts[k]->id,
                      parts[k]->label, parts[k]->lib, universe);
    }
    publish_applied();
    const char *done = reverting ? "reverted" : "applied";
    if (n > 1)
        return answer(reply, ULP_OK, "%s in universe %lu %s %u libraries", done,
                      (unsigned long)universe, reverting ? "in" : "to", n);
    return answer(reply, ULP_OK, "%s in universe %lu", done, (unsigned long)universe);
}

static int commit(const struct parsed_request *req, struct reply *reply)
{
    struct patch *parts[ULP_MAX_LIBS] = {0};
    parts_of(req->head->patch_id, PATCH_PENDING, parts);
    uint32_t n = gather(parts);
    if (n > 0 && n != parts[0]->nparts) {
        /* a part's library was unloaded since its PREPARE, or the trigger
         * asks early: all or nothing */
        for (uint32_t k = 0; k < n; k++)
            discard(parts[k]);
        if (find_patch(req->head->patch_id, PATCH_UNLOADED))
            return answer(reply, ULP_E_UNLOADED, "a target library was unloaded before the "
                          "commit; nothing applied");
        return answer(reply, ULP_E_NOT_PENDING, "%u of the patch's %u parts are prepared; "
                      "nothing applied", n, parts[0]->nparts);
    }
    if (n == 0 && find_patch(req->head->patch_id, PATCH_UNLOADED))
        return answer(reply, ULP_E_UNLOADED, "the target library was unloaded before the "
                      "commit; nothing applied");
    if (n == 0)
        return answer(reply, ULP_E_NOT_PENDING, "no prepared patch to commit");
    return publish(req, parts, n, 0, reply);
}

static int revert(const struct parsed_request *req, struct reply *reply)
{
    char hex[33];
    struct patch *parts[ULP_MAX_LIBS] = {0};
    parts_of(req->head->patch_id, PATCH_APPLIED, parts);
    uint32_t n = gather(parts);     /* a part whose library is gone has nothing to revert */
    struct patch *p = n ? parts[0] : NULL;
    if (!p && find_patch(req->head->patch_id, PATCH_UNLOADED))
        return answer(reply, ULP_E_NOT_APPLIED, "patch is not applied: its library was unloaded");
    if (!p)
        return answer(reply, ULP_E_NOT_APPLIED, "patch is not applied");
    for (struct patch *q = patches; q; q = q->next) {
        if (q->state != PATCH_APPLIED)
            continue;
        for (uint32_t i = 0; i < q->nrequires; i++) {
            if (memcmp(q->requires[i], p->id, 16) == 0) {
                hex_id(q->id, hex);
                return answer(reply, ULP_E_DEPENDENT, "applied patch %s depends on it", hex);
            }
        }
    }
    return publish(req, parts, n, 1, reply);
}

/* Is another applied part of P's patch ahead of P in the list? */
static int listed_before(const struct patch *p)
{
    for (const struct patch *q = patches; q != p; q = q->next)
        if (q->state == PATCH_APPLIED && memcmp(q->id, p->id, 16) == 0)
            return 1;
    return 0;
}

/* STATUS: every applied patch, "ID[ LABEL]".  LIST: those of the library
 * whose descriptor is at LIB (every library when 0), "ID UNIVERSE LIB[ LABEL]".
 * Both newest applied first (a re-applied patch is a new entry at the head
 * of the list), whole lines only: a trigger reverting them all asks again. */
static int list_applied(struct reply *reply, int listing, uint64_t lib)
{
    size_t used = 0;
    reply->text[0] = '\0';
    for (struct patch *p = patches; p; p = p->next) {
        if (p->state != PATCH_APPLIED || (lib && (uint64_t)(uintptr_t)p->lib != lib))
            continue;
        if (!listing && p->nparts > 1 && listed_before(p))
            continue;       /* STATUS: a patch of several libraries once */
        char hex[33], where[64] = "";
        hex_id(p->id, hex);
        if (listing)
            snprintf(where, sizeof where, " %lu %#lx", (unsigned long)p->applied_at,
                     (unsigned long)(uintptr_t)p->lib);
        int n = snprintf(reply->text + used, reply->size - used, "%s%s%s%s\n", hex, where,
                         p->label[0] ? " " : "", p->label);
        if (n < 0 || used + (size_t)n >= reply->size) {
            reply->text[used] = '\0';  /* no room for a whole line */
            break;
        }
        used += (size_t)n;
    }
    return ULP_OK;
}

static int handle_request(const struct ulp_request *head, uint32_t size, char *message,
                          size_t message_size);

/* Set while the pins of the previous request are kept for this one, and
 * since when (CLOCK_MONOTONIC, ns). */
static int pins_kept;
static int64_t pins_kept_since;

/* How long the agent's tick leaves pins kept for a COMMIT or REVERT that
 * has not come yet: the trigger stops every thread in between, which can
 * take a while on a loaded machine with many threads.  Longer, and its
 * trigger is taken to be dead. */
#define PINS_GRACE_NS (5 * 1000000000LL)

static int64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* The agent's idle tick: pins left by a request sent with every thread
 * stopped go now, pins kept for a request that never came (its trigger
 * died) once their grace is over.  The tick runs between two requests of
 * one trigger too (the agent waits between them, and a trigger catches it
 * in its wait, after the tick): pins released there would make the COMMIT
 * take the loader's lock with every thread stopped. */
ULP_HIDDEN void ulp_release_kept_pins(void)
{
    if (pins_kept && monotonic_ns() - pins_kept_since < PINS_GRACE_NS)
        return;
    release_pins();
    pins_kept = 0;
}

/* COMMIT and REVERT with a thread table run while the trigger holds every
 * other thread stopped, maybe one inside the loader or the allocator
 * holding its lock: such a request neither pins (the request before it
 * kept its pins) nor frees. */
static int world_stopped(const struct ulp_request *head, uint32_t size)
{
    return size >= sizeof *head && head->nthreads > 0 &&
           (head->op == ULP_OP_COMMIT || head->op == ULP_OP_REVERT);
}

ULP_HIDDEN int ulp_handle_request(const struct ulp_request *head, uint32_t size,
                                  char *message, size_t message_size)
{
    int status, stopped = world_stopped(head, size);
    if (stopped && !pins_kept) {
        /* no sweep now: a stopped thread may hold the loader's lock */
        struct reply reply = {message, message_size};
        status = answer(&reply, ULP_E_PINS_RELEASED,
                        "the libraries were let go before this request came (more than "
                        "%lld s after the one before); nothing changed, retry",
                        PINS_GRACE_NS / 1000000000LL);
    } else {
        if (!stopped) {
            release_pins();
            sweep(1);
        }
        status = handle_request(head, size, message, message_size);
    }
    ulp_log_refusal(head, status, message);
    pins_kept = size >= sizeof *head && (head->flags & ULP_REQUEST_KEEP_PINS);
    pins_kept_since = monotonic_ns();
    if (!pins_kept && !stopped)
        release_pins();
    return status;
}

static int handle_request(const struct ulp_request *head, uint32_t size, char *message,
                          size_t message_size)
{
    struct parsed_request req;
    struct reply reply = {message, message_size};
    message[0] = '\0';
    if (parse_request(head, size, &req) != 0)
        return answer(&reply, ULP_E_BAD_REQUEST, "malformed request");
    if (head->op != ULP_OP_PREPARE)
        drop_staged();
    switch (head->op) {
    case ULP_OP_STAGE:
        discard_pending();
        return stage(&reply);
    case ULP_OP_PREPARE:
        discard_pending_but_earlier_parts(head);
        {
            int result = prepare(&req, &reply);
            drop_staged();
            return result;
        }
    case ULP_OP_COMMIT:
        return commit(&req, &reply);
    case ULP_OP_REVERT:
        if (!world_stopped(head, size))
            discard_pending();
        return revert(&req, &reply);
    case ULP_OP_ABORT:
        discard_pending();
        return ULP_OK;
    case ULP_OP_STATUS:
        return list_applied(&reply, 0, 0);
    case ULP_OP_LIST:
        return list_applied(&reply, 1, head->lib_desc);
    default:
        return answer(&reply, ULP_E_BAD_REQUEST, "unknown request %u", head->op);
    }
}
