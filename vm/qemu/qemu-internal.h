/* qemu-internal.h: the qemu VM's state, shared by qemu.c (the vm_ops) and qemu-start.c. */
#ifndef BM_VM_QEMU_QEMU_INTERNAL_H
#define BM_VM_QEMU_QEMU_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <sys/un.h>

#include "vm/qemu/cmdline.h"
#include "vm/qemu/qemu.h"

/* The last bytes of QEMU's stderr kept while it starts, for the error when it fails. */
#define QEMU_STDERR_TAIL 2048

struct qemu_vm {
    struct vm vm; /* first: qemu_vm_base */
    struct qemu_mon mon;
    bool mon_ok;   /* mon is initialised */
    bool launched; /* blkmig's child (launch) or adopted (attach) */
    pid_t pid;
    char qmp_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int major, minor, micro;
    int argc;
    char **argv;             /* the user's line (launch) or /proc's (attach): one allocation */
    struct qemu_cmdline *cl; /* argv, parsed */
    struct qemu_disk_info *disks;
    unsigned ndisks;
    int errfd; /* launch: the read end of QEMU's stderr, passed on (-1: none) */
    char tail[QEMU_STDERR_TAIL + 1]; /* launch: the end of QEMU's stderr at start */
    size_t tail_len;
    pthread_t watcher;
    bool watching;
    atomic_bool stop;   /* the watcher ends */
    pthread_mutex_t mu; /* protects the fields below (the watcher writes them) */
    bool dead;
    char why[256];
    bool shutdown_seen;        /* a SHUTDOWN event came, */
    char shutdown_reason[64];  /* with this reason */
    bool gone;                 /* launch: reaped; attach: the QMP connection ended */
    int status;                /* once gone: the exit status to pass on */
    qemu_vm_event_fn event_fn; /* qemu_vm_on_event */
    void *event_opaque;
};

/* qemu-start.c: made by qemu_vm_launch and qemu_vm_attach from here. */
int qemu_vm_start_watcher(struct qemu_vm *v, char *err, size_t errlen);
/* Read what QEMU wrote on stderr (non-blocking); pass it on to blkmig's stderr when pass, keep
 * its end in v->tail otherwise. Returns false at EOF. */
bool qemu_vm_drain_stderr(struct qemu_vm *v, bool pass);
/* Wait at most ms for the child to exit; true (and v->status set) once it has. */
bool qemu_vm_wait_child(struct qemu_vm *v, int ms);
/* Free v and everything it holds (QEMU already ended or left). */
void qemu_vm_free(struct qemu_vm *v);
/* The vm_ops of every qemu VM. */
extern const struct vm_ops qemu_vm_ops;

#endif
