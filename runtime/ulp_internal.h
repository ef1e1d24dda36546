/* Declarations shared by the runtime's source files. */
#ifndef ULP_INTERNAL_H
#define ULP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ulp_abi.h"
#include "ulp_layout.h"

#define ULP_HIDDEN __attribute__((visibility("hidden")))
#define ULP_EXPORT __attribute__((visibility("default")))
#define ULP_MAX_LIBS 64

/* registry.c: prepared libraries and per-thread records */
extern uint64_t ulp_global_universe;
int ulp_register_library(struct ulp_lib_desc *lib);
struct ulp_lib_desc *ulp_find_loaded_library(uint64_t address, void **pin);
void ulp_register_function(struct ulp_func_desc *fd);
int ulp_slot_holds(uintptr_t slot, uintptr_t value);
/* registry.c: the library table (agent side) */
struct ulp_lib_desc *ulp_library_in_slot(int slot);
int ulp_library_slot(const struct ulp_lib_desc *lib);
void ulp_forget_slot(int slot, struct ulp_lib_desc *lib);
void *ulp_pin_object(uint64_t address, int *gone);

/* altstack.c */
extern __thread struct ulp_altstack ulp_altstack __attribute__((tls_model("initial-exec")));

/* patch.c: patches, their versions and universes */
int ulp_handle_request(const struct ulp_request *req, uint32_t size,
                       char *message, size_t message_size);
void ulp_forget_unloaded(void);

/* sha256.c */
int ulp_sha256_fd(int fd, uint8_t digest[32]);

/* agent.c */
#endif
