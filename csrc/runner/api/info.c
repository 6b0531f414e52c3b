/* info.c - SandboxInfo and ProcessInfo as the protocol lists them. Secrets
 * appear only as names; their values are never packed. */
#include "sl_runner.h"

const char *sl_box_status_name(enum sl_bstatus s)
{
    switch (s) {
    case SL_B_RUNNING:
        return "running";
    case SL_B_EXITED:
        return "exited";
    case SL_B_TIMEOUT:
        return "timeout";
    case SL_B_TERMINATED:
        return "terminated";
    case SL_B_FAILED:
        return "failed";
    }
    return "failed";
}

static void pack_strv(sl_resp *r, char *const *v, size_t n)
{
    if (v == NULL) {
        sl_r_nil(r);
        return;
    }
    sl_r_arr(r, n);
    for (size_t i = 0; i < n; i++)
        sl_r_str(r, v[i]);
}

void sl_pack_box(sl_resp *r, const sl_box *b)
{
    sl_r_map(r, 17);
    sl_r_kstr(r, "sandbox_id", b->id);
    sl_r_kstr(r, "status", sl_box_status_name(b->status));
    sl_r_str(r, "exit_code");
    if (b->has_exit)
        sl_r_int(r, b->exit_code);
    else
        sl_r_nil(r);
    sl_r_str(r, "cmd");
    pack_strv(r, b->cmd, b->ncmd);
    sl_r_kstr(r, "image", b->image);
    sl_r_kstr(r, "workdir", b->workdir);
    sl_r_str(r, "env");
    sl_r_map(r, b->nenv);
    for (size_t i = 0; i < b->nenv; i++)
        sl_r_kstr(r, b->env[i].k, b->env[i].v);
    sl_r_str(r, "secret_names");
    sl_r_arr(r, b->nsecrets);
    for (size_t i = 0; i < b->nsecrets; i++)
        sl_r_str(r, b->secrets[i].k);
    sl_r_str(r, "volumes");
    sl_r_map(r, b->nvolumes);
    for (size_t i = 0; i < b->nvolumes; i++)
        sl_r_kstr(r, b->volumes[i].k, b->volumes[i].v);
    sl_r_kfloat(r, "timeout", b->timeout);
    sl_r_kfloat(r, "created_at", b->created_at);
    sl_r_str(r, "finished_at");
    if (b->finished_at > 0)
        sl_r_float(r, b->finished_at);
    else
        sl_r_nil(r);
    sl_r_str(r, "pid");
    if (b->alive && b->status == SL_B_RUNNING)
        sl_r_int(r, b->sbx.init_pid);
    else
        sl_r_nil(r);
    sl_r_str(r, "resources");
    sl_limits_pack(r, b);
    sl_r_kbool(r, "oom_killed", sl_limits_box_oom(b));
    sl_r_str(r, "network");
    sl_net_pack(r, b);
    sl_r_kstr(r, "isolation", b->microvm ? "microvm" : "container");
}

void sl_pack_proc(sl_resp *r, const sl_proc *p)
{
    sl_r_map(r, 7);
    sl_r_kint(r, "process_id", p->id);
    sl_r_kstr(r, "sandbox_id", p->box->id);
    sl_r_str(r, "cmd");
    pack_strv(r, p->cmd, p->ncmd);
    sl_r_kstr(r, "status", p->state == SL_P_EXITED ? "exited" : "running");
    sl_r_str(r, "exit_code");
    if (p->state == SL_P_EXITED)
        sl_r_int(r, p->exit_code);
    else
        sl_r_nil(r);
    sl_r_str(r, "pid");
    if (p->state != SL_P_EXITED && p->pid > 0)
        sl_r_int(r, p->pid);
    else
        sl_r_nil(r);
    sl_r_kbool(r, "oom_killed", p->oom_killed);
}
