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
 * callbacks) that nothing tracks. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ulp_internal.h"

enum patch_state { PATCH_PENDING, PATCH_APPLIED, PATCH_REVERTED, PATCH_DISCARDED, PATCH_UNLOADED };

struct patch_version {
    struct ulp_version version;     /* first: the tracker reads it */
    struct ulp_func_desc *fd;
};

struct patch {
    uint8_t id[16];
    enum patch_state state;
    struct ulp_lib_desc *lib;
    int slot;                       /* lib's slot in the library table */
    void *handle;
    uint32_t nunits;
    struct patch_version **versions;
    uint32_t nrequires;
    uint8_t (*requires)[16];
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

/* Mark the patches of the library in SLOT unloaded, and free the slot. */
static void forget_library(int slot, struct ulp_lib_desc *lib)
{
    for (struct patch *p = patches; p; p = p->next)
        if (p->slot == slot && p->state != PATCH_DISCARDED)
            p->state = PATCH_UNLOADED;
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
        int gone;
        void *handle = ulp_pin_object((uint64_t)(uintptr_t)lib, &gone);
        if (!handle && !gone)
            continue;       /* there, but its memory is not to be touched: keep it */
        if (handle) {
            int64_t state = __atomic_load_n(&lib->state, __ATOMIC_ACQUIRE);
            if (memcmp(lib->magic, ULP_LIB_MAGIC, 8) == 0 && (state == slot + 1 || state == -1)) {
                if (keep && pins.n < ULP_MAX_LIBS)
                    pins.handles[pins.n++] = handle;
                else
                    dlclose(handle);
                continue;   /* still loaded, still registered there (or registering) */
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
    const char *strings;
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
    if (size < sizeof *head || head->ndeps > 256 || head->nunits > 65536)
        return -1;
    uint64_t need = sizeof *head + (uint64_t)head->ndeps * 16 +
                    (uint64_t)head->nunits * sizeof(struct ulp_request_unit) +
                    head->strings_size;
    if (need > size)
        return -1;
    const uint8_t *cursor = (const uint8_t *)(head + 1);
    req->head = head;
    req->deps = (const uint8_t(*)[16])cursor;
    cursor += head->ndeps * 16;
    req->units = (const struct ulp_request_unit *)cursor;
    cursor += head->nunits * sizeof(struct ulp_request_unit);
    req->strings = (const char *)cursor;
    return 0;
}

static struct patch *find_patch(const uint8_t id[16], enum patch_state state)
{
    for (struct patch *p = patches; p; p = p->next)
        if (p->state == state && memcmp(p->id, id, 16) == 0)
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
static void discard_pending(void)
{
    for (struct patch *p = patches; p; p = p->next) {
        if (p->state != PATCH_PENDING)
            continue;
        for (uint32_t i = 0; i < p->nunits; i++)
            unlink_version(p->versions[i]);
        p->state = PATCH_DISCARDED;
    }
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

static int loaded_before(void *handle)
{
    for (struct patch *p = patches; p; p = p->next)
        if (p->handle == handle)
            return 1;
    return 0;
}

/* dlopen /proc/self/fd/FD.  The descriptor stays open while the object is
 * loaded, so that name is unique: ld.so, which first matches objects by
 * name, never takes a new patch object for one loaded earlier under a
 * reused descriptor number.  Debuggers read the name from the link map, and
 * /proc/self/fd/FD would name one of their own descriptors: the map gets
 * the patch object's real path instead. */
static void *load_through_descriptor(int fd, const char *path)
{
    char fd_path[64];
    struct link_map *map;
    snprintf(fd_path, sizeof fd_path, "/proc/self/fd/%d", fd);
    void *handle = dlopen(fd_path, RTLD_NOW | RTLD_LOCAL);
    if (!handle || loaded_before(handle)) {
        close(fd);      /* failed, or the same file again: its first descriptor stays */
        return handle;
    }
    if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && strcmp(map->l_name, fd_path) == 0) {
        char *name = strdup(path);
        if (name)
            __atomic_store_n(&map->l_name, name, __ATOMIC_RELEASE);
    }
    return handle;
}

/* Open the patch object once, check its hash on that descriptor and load
 * it through the same descriptor: what was checked is what runs. */
static int load_patch_object(const struct parsed_request *req, void **handle,
                             struct reply *reply)
{
    const char *path = string_at(req, req->head->so_path);
    if (!path)
        return answer(reply, ULP_E_BAD_REQUEST, "malformed patch object path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return answer(reply, ULP_E_PATCH_OPEN, "cannot open patch object %s: %s", path,
                    strerror(errno));
    uint8_t digest[32];
    int err = ulp_sha256_fd(fd, digest);
    if (err < 0) {
        close(fd);
        return answer(reply, ULP_E_PATCH_OPEN, "cannot read patch object %s: %s", path,
                    strerror(-err));
    }
    if (memcmp(digest, req->head->so_sha256, 32) != 0) {
        close(fd);
        return answer(reply, ULP_E_PATCH_HASH,
                    "patch object %s changed since it was packed (SHA-256 mismatch)", path);
    }
    *handle = load_through_descriptor(fd, path);
    if (!*handle)
        return answer(reply, ULP_E_PATCH_LOAD, "cannot load patch object %s: %s", path, dlerror());
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

static struct patch *new_patch(const struct parsed_request *req, struct ulp_lib_desc *lib,
                               void *handle)
{
    const struct ulp_request *head = req->head;
    struct patch *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->versions = calloc(head->nunits ? head->nunits : 1, sizeof *p->versions);
    p->requires = calloc(head->ndeps ? head->ndeps : 1, 16);
    if (!p->versions || !p->requires) {
        free(p->versions);
        free(p->requires);
        free(p);
        return NULL;
    }
    memcpy(p->id, head->patch_id, 16);
    memcpy(p->requires, req->deps, (size_t)head->ndeps * 16);
    p->nrequires = head->ndeps;
    p->lib = lib;
    p->handle = handle;
    p->state = PATCH_PENDING;
    return p;
}

static int create_versions(const struct parsed_request *req, struct patch *p,
                           struct reply *reply)
{
    for (uint32_t i = 0; i < req->head->nunits; i++) {
        const char *name = string_at(req, req->units[i].name);
        if (!name)
            return answer(reply, ULP_E_BAD_REQUEST, "malformed function name");
        void *target = patch_symbol(p->handle, name);
        if (!target)
            return answer(reply, ULP_E_PATCH_SYMBOL, "patch object does not define %s", name);
        struct patch_version *pv = calloc(1, sizeof *pv);
        if (!pv)
            return answer(reply, ULP_E_NO_MEMORY, "out of memory");
        pv->fd = ulp_lib_func(p->lib, req->units[i].index);
        pv->version.applied_at = ULP_UNIVERSE_NEVER;    /* invisible until commit */
        pv->version.reverted_at = ULP_UNIVERSE_NEVER;
        pv->version.target = target;
        p->versions[p->nunits++] = pv;
    }
    /* Only link once every symbol resolved, so a failure leaves no trace. */
    for (uint32_t i = 0; i < p->nunits; i++) {
        struct patch_version *pv = p->versions[i];
        pv->version.next = pv->fd->versions;
        __atomic_store_n(&pv->fd->versions, &pv->version, __ATOMIC_RELEASE);
    }
    return ULP_OK;
}

static int prepare(const struct parsed_request *req, struct reply *reply)
{
    struct ulp_lib_desc *lib = NULL;
    void *handle = NULL;
    int status;

    struct patch *applied = find_patch(req->head->patch_id, PATCH_APPLIED);
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
    if ((status = load_patch_object(req, &handle, reply)) != ULP_OK)
        return status;
    struct patch *p = new_patch(req, lib, handle);
    if (!p)
        return answer(reply, ULP_E_NO_MEMORY, "out of memory");
    if ((status = create_versions(req, p, reply)) != ULP_OK) {
        for (uint32_t i = 0; i < p->nunits; i++)
            free(p->versions[i]);
        free(p->versions);
        free(p->requires);
        free(p);
        return status;
    }
    p->slot = ulp_library_slot(lib);
    p->next = patches;
    patches = p;
    return answer(reply, ULP_OK, "prepared %u function(s)", p->nunits);
}

/* Publish a new universe in which the versions are stamped valid: threads
 * take it at their next external entry, never in the middle of one. */
static uint64_t stamp_and_publish(struct patch *p, int reverting)
{
    uint64_t next = __atomic_load_n(&ulp_global_universe, __ATOMIC_ACQUIRE) + 1;
    for (uint32_t i = 0; i < p->nunits; i++) {
        uint64_t *field = reverting ? &p->versions[i]->version.reverted_at
                                    : &p->versions[i]->version.applied_at;
        __atomic_store_n(field, next, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&ulp_global_universe, next, __ATOMIC_RELEASE);
    return next;
}

static int commit(const struct parsed_request *req, struct reply *reply)
{
    struct patch *p = find_patch(req->head->patch_id, PATCH_PENDING);
    if (!p && find_patch(req->head->patch_id, PATCH_UNLOADED))
        return answer(reply, ULP_E_UNLOADED, "the target library was unloaded before the "
                      "commit; nothing applied");
    if (!p)
        return answer(reply, ULP_E_NOT_PENDING, "no prepared patch to commit");
    uint64_t universe = stamp_and_publish(p, 0);
    p->state = PATCH_APPLIED;
    return answer(reply, ULP_OK, "applied in universe %lu", (unsigned long)universe);
}

static int revert(const struct parsed_request *req, struct reply *reply)
{
    char hex[33];
    struct patch *p = find_patch(req->head->patch_id, PATCH_APPLIED);
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
    uint64_t universe = stamp_and_publish(p, 1);
    p->state = PATCH_REVERTED;
    return answer(reply, ULP_OK, "reverted in universe %lu", (unsigned long)universe);
}

static int status(struct reply *reply)
{
    size_t used = 0;
    reply->text[0] = '\0';
    for (struct patch *p = patches; p && used + 34 < reply->size; p = p->next) {
        if (p->state != PATCH_APPLIED)
            continue;
        hex_id(p->id, reply->text + used);
        used += 32;
        reply->text[used++] = '\n';
        reply->text[used] = '\0';
    }
    return ULP_OK;
}

static int handle_request(const struct ulp_request *head, uint32_t size, char *message,
                          size_t message_size);

ULP_HIDDEN int ulp_handle_request(const struct ulp_request *head, uint32_t size,
                                  char *message, size_t message_size)
{
    sweep(1);
    int status = handle_request(head, size, message, message_size);
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
    switch (head->op) {
    case ULP_OP_PREPARE:
        discard_pending();
        return prepare(&req, &reply);
    case ULP_OP_COMMIT:
        return commit(&req, &reply);
    case ULP_OP_REVERT:
        discard_pending();
        return revert(&req, &reply);
    case ULP_OP_ABORT:
        discard_pending();
        return ULP_OK;
    case ULP_OP_STATUS:
        return status(&reply);
    default:
        return answer(&reply, ULP_E_BAD_REQUEST, "unknown request %u", head->op);
    }
}
