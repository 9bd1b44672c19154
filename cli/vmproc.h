/* vmproc.h: the long-running VM process shared by `blkmig run` and `blkmig incoming`. */
#ifndef BM_CLI_VMPROC_H
#define BM_CLI_VMPROC_H

#include <json-c/json.h>
#include <stdbool.h>

#include "vm/synth/synth.h"
#include "vm/vm.h"

struct vmproc;

/* The event sink for a guest created before the process exists (it forwards once attached). */
void vmproc_guest_event(void *opaque, const char *event, struct json_object *data);
/* A process-wide slot the guest's events go to (set by vmproc_serve). */
extern struct vmproc *vmproc_current;

/* Serve vm (running) on the control socket until it quits or migrates away. Takes ownership of
 * vm, disks and claim (bm_control_claim on control, taken before the VM was made). json: print
 * events on stdout as JSON lines. Returns the exit status. */
int vmproc_serve(struct vm *vm, struct bm_disk **disks, unsigned ndisks, const char *control,
                 int claim, bool json);

/* Build a synthetic VM from a migration description (mig_vm_factory). */
struct vm *vmproc_factory(void *opaque, struct json_object *desc, const struct vm_disk *disks,
                          unsigned ndisks, char *err, size_t errlen);


#endif
