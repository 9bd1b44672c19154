/* mirror-readers.c: a remote source's reads on a few threads of their own. A remote disk's
 * read is a round trip to its server (QEMU's NBD export); one at a time on the job's thread,
 * the 2,500 scattered 4 KiB blocks a guest had dirtied took 0.9 s to read at a pause. Here
 * they overlap: the job queues a slot, a reader fills its buffer, and the job, woken through
 * readers_fd, sends it (mirror.c: reap_reads). */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "blockmirror/mirror-internal.h"

static void *reader_main(void *arg)
{
    struct mirror_job *j = arg;
    struct mirror_readers *r = &j->rd;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && !r->head)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop)
            break;
        struct slot *s = r->head;
        r->head = s->rnext;
        if (!r->head)
            r->tail = NULL;
        pthread_mutex_unlock(&r->mu);
        int res = bm_disk_pread(j->src, s->buf, (size_t)s->len, s->offset);
        pthread_mutex_lock(&r->mu);
        s->rres = res;
        s->rnext = r->done;
        r->done = s;
        uint64_t one = 1;
        ssize_t n = write(r->fd, &one, sizeof one);
        (void)n;
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int mirror_readers_start(struct mirror_job *j)
{
    struct mirror_readers *r = &j->rd;
    r->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (r->fd < 0)
        return -errno;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->inited = true;
    for (r->n = 0; r->n < MIRROR_READERS; r->n++)
        if (pthread_create(&r->th[r->n], NULL, reader_main, j) != 0)
            break;
    return r->n ? 0 : -EAGAIN;
}

void mirror_readers_submit(struct mirror_job *j, struct slot *s)
{
    struct mirror_readers *r = &j->rd;
    s->reading = true;
    s->rnext = NULL;
    pthread_mutex_lock(&r->mu);
    if (r->tail)
        r->tail->rnext = s;
    else
        r->head = s;
    r->tail = s;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

struct slot *mirror_readers_take(struct mirror_job *j, bool wait)
{
    struct mirror_readers *r = &j->rd;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        struct slot *s = r->done;
        if (s)
            r->done = s->rnext;
        pthread_mutex_unlock(&r->mu);
        if (s || !wait)
            return s;
        struct pollfd p = {.fd = r->fd, .events = POLLIN};
        poll(&p, 1, 100);
        uint64_t v;
        ssize_t n = read(r->fd, &v, sizeof v);
        (void)n;
    }
}

void mirror_readers_stop(struct mirror_job *j)
{
    struct mirror_readers *r = &j->rd;
    if (!r->inited)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (unsigned i = 0; i < r->n; i++)
        pthread_join(r->th[i], NULL);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    close(r->fd);
    r->inited = false;
}
