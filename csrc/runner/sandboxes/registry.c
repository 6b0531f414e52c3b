/* registry.c - sandboxes by id (a chained hash table plus a creation-ordered
 * list) and the processes of each sandbox (an array indexed by process id). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_runner.h"

static unsigned bucket_of(const char *id)
{
    /* FNV-1a; ids are random already, this just spreads them. */
    uint32_t h = 2166136261u;
    for (const char *s = id; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

static unsigned pid_hash(pid_t pid)
{
    return (uint32_t)pid * 2654435761u;
}

/* Double a table once it holds more entries than buckets; on ENOMEM it just
 * stays as it is (longer chains, still correct). */
static void grow(sl_box ***tab, size_t *n, size_t count, int by_pid)
{
    if (count <= *n)
        return;
    size_t nn = *n * 2;
    sl_box **nt = calloc(nn, sizeof(*nt));
    if (nt == NULL)
        return;
    for (size_t i = 0; i < *n; i++) {
        sl_box *b = (*tab)[i];
        while (b != NULL) {
            sl_box *next = by_pid ? b->pnext : b->hnext;
            size_t k = (by_pid ? pid_hash(b->hashed_pid) : bucket_of(b->id)) % nn;
            if (by_pid) {
                b->pnext = nt[k];
            } else {
                b->hnext = nt[k];
            }
            nt[k] = b;
            b = next;
        }
    }
    free(*tab);
    *tab = nt;
    *n = nn;
}

int sl_reg_init(sl_runner *rt)
{
    rt->buckets = calloc(SL_HASH_BUCKETS, sizeof(*rt->buckets));
    rt->pbuckets = calloc(SL_HASH_BUCKETS, sizeof(*rt->pbuckets));
    if (rt->buckets == NULL || rt->pbuckets == NULL)
        return -ENOMEM;
    rt->nbuckets = rt->npbuckets = SL_HASH_BUCKETS;
    return 0;
}

void sl_reg_pid_add(sl_runner *rt, sl_box *b)
{
    if (b->pid_hashed || b->sbx.init_pid <= 0)
        return;
    grow(&rt->pbuckets, &rt->npbuckets, rt->npids + 1, 1);
    b->hashed_pid = b->sbx.init_pid;
    size_t k = pid_hash(b->hashed_pid) % rt->npbuckets;
    b->pnext = rt->pbuckets[k];
    rt->pbuckets[k] = b;
    b->pid_hashed = 1;
    rt->npids++;
}

void sl_reg_pid_del(sl_runner *rt, sl_box *b)
{
    if (!b->pid_hashed)
        return;
    sl_box **pp = &rt->pbuckets[pid_hash(b->hashed_pid) % rt->npbuckets];
    while (*pp != NULL && *pp != b)
        pp = &(*pp)->pnext;
    if (*pp == b)
        *pp = b->pnext;
    b->pnext = NULL;
    b->pid_hashed = 0;
    rt->npids--;
}

static sl_box *find_any(sl_runner *rt, const char *id)
{
    for (sl_box *b = rt->buckets[bucket_of(id) % rt->nbuckets]; b != NULL; b = b->hnext) {
        if (strcmp(b->id, id) == 0)
            return b;
    }
    return NULL;
}

sl_box *sl_box_new(sl_runner *rt)
{
    sl_box *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->rt = rt;
    b->sbx.init_pid = -1;
    b->sbx.ctl_fd = -1;
    b->status = SL_B_RUNNING;
    b->ending = SL_B_RUNNING;
    b->output_keep = SL_OUTPUT_KEEP;
    /* 64 random bits: a collision is astronomically unlikely, but checking
     * costs nothing. Hidden (terminated, not yet reaped) boxes count too. */
    for (int tries = 0; tries < 8; tries++) {
        memcpy(b->id, "sb-", 3);
        int rc = sl_random_hex(b->id + 3, 16);
        if (rc < 0) {
            sl_error("getrandom: %s", strerror(-rc));
            free(b);
            return NULL;
        }
        if (find_any(rt, b->id) == NULL)
            return b;
    }
    free(b);
    return NULL;
}

void sl_proc_free(sl_proc *p)
{
    if (p == NULL)
        return;
    /* Finalisation answers every hold first; these loops only guard against
     * a request outliving what it waits on. */
    while (p->start != NULL)
        sl_hold_error(p->start, 500, "process record removed");
    while (p->waiters != NULL)
        sl_hold_error(p->waiters, 500, "process record removed");
    sl_stream_free(&p->out[0]);
    sl_stream_free(&p->out[1]);
    if (p->in_ev != NULL)
        event_free(p->in_ev);
    if (p->in_fd >= 0)
        close(p->in_fd);
    if (p->in_buf != NULL)
        evbuffer_free(p->in_buf);
    sl_strv_free(p->cmd, p->ncmd);
    free(p);
}

void sl_box_free(sl_box *b)
{
    if (b == NULL)
        return;
    sl_reg_pid_del(b->rt, b);
    while (b->waiters != NULL)
        sl_hold_error(b->waiters, 500, "sandbox record removed");
    while (b->gpu_term != NULL)
        sl_hold_error(b->gpu_term, 500, "sandbox record removed");
    for (size_t i = 0; i < b->nprocs; i++)
        sl_proc_free(b->procs[i]);
    free(b->procs);
    if (b->ctl_ev != NULL)
        event_free(b->ctl_ev);
    if (b->timer != NULL)
        event_free(b->timer);
    sl_strv_free(b->cmd, b->ncmd);
    free(b->image);
    free(b->workdir);
    sl_kv_free(b->env, b->nenv, 0);
    sl_kv_free(b->secrets, b->nsecrets, 1);
    sl_kv_free(b->volumes, b->nvolumes, 0);
    free(b->snapshot);
    free(b->vm_restore);
    free(b->vm_error);
    free(b->dir);
    sl_gpu_release(b);
    free(b->gpu_type);
    sl_net_free(b);
    free(b);
}

void sl_reg_add(sl_runner *rt, sl_box *b)
{
    grow(&rt->buckets, &rt->nbuckets, rt->nhashed + 1, 0);
    size_t k = bucket_of(b->id) % rt->nbuckets;
    b->hnext = rt->buckets[k];
    rt->buckets[k] = b;
    rt->nhashed++;
    b->prev = rt->last;
    b->next = NULL;
    if (rt->last != NULL)
        rt->last->next = b;
    else
        rt->first = b;
    rt->last = b;
    rt->nvisible++;
}

void sl_reg_hide(sl_runner *rt, sl_box *b)
{
    if (!b->hidden) {
        b->hidden = 1;
        rt->nvisible--;
    }
}

void sl_reg_unlink(sl_runner *rt, sl_box *b)
{
    sl_reg_hide(rt, b);
    sl_reg_pid_del(rt, b);
    sl_box **pp = &rt->buckets[bucket_of(b->id) % rt->nbuckets];
    while (*pp != NULL && *pp != b)
        pp = &(*pp)->hnext;
    if (*pp == b) {
        *pp = b->hnext;
        rt->nhashed--;
    }
    if (b->prev != NULL)
        b->prev->next = b->next;
    else
        rt->first = b->next;
    if (b->next != NULL)
        b->next->prev = b->prev;
    else
        rt->last = b->prev;
    b->prev = b->next = b->hnext = NULL;
}

sl_box *sl_reg_find(sl_runner *rt, const char *id)
{
    sl_box *b = find_any(rt, id);
    return b != NULL && !b->hidden ? b : NULL;
}

sl_box *sl_reg_find_init(sl_runner *rt, pid_t pid)
{
    if (pid <= 0)
        return NULL;
    for (sl_box *b = rt->pbuckets[pid_hash(pid) % rt->npbuckets]; b != NULL; b = b->pnext) {
        if (b->alive && b->hashed_pid == pid && b->sbx.init_pid == pid)
            return b;
    }
    return NULL;
}

sl_proc *sl_proc_new(sl_box *b)
{
    if (b->nprocs >= SL_MAX_PROCS)
        return NULL;
    /* Process 0 is the entry command; without one, exec'd processes still
     * count from 1, so slot 0 stays empty. */
    int reserve = b->nprocs == 0 && b->cmd == NULL;
    if (b->nprocs + (size_t)reserve >= b->capprocs) {
        size_t cap = b->capprocs ? b->capprocs * 2 : 4;
        sl_proc **v = realloc(b->procs, cap * sizeof(*v));
        if (v == NULL)
            return NULL;
        b->procs = v;
        b->capprocs = cap;
    }
    sl_proc *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->box = b;
    p->state = SL_P_STARTING;
    p->in_fd = -1;
    p->out[0].fd = p->out[1].fd = -1;
    p->out[0].spool = p->out[1].spool = -1;
    if (reserve)
        b->procs[b->nprocs++] = NULL;
    p->id = (uint32_t)b->nprocs;
    b->procs[b->nprocs++] = p;
    return p;
}

sl_proc *sl_box_proc(sl_box *b, const char *n)
{
    if (n == NULL || *n == '\0' || strlen(n) > 9)
        return NULL;
    size_t v = 0;
    for (const char *s = n; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return NULL;
        v = v * 10 + (size_t)(*s - '0');
    }
    /* "007" is not process 7: only canonical numbers name a process. */
    if (n[0] == '0' && n[1] != '\0')
        return NULL;
    return v < b->nprocs ? b->procs[v] : NULL;
}

void sl_proc_drop(sl_proc *p)
{
    sl_box *b = p->box;
    if (p->id < b->nprocs && b->procs[p->id] == p)
        b->procs[p->id] = NULL;
    sl_proc_free(p);
}
