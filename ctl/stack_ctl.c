/* stack_ctl.c - run-directory and request helpers for nanoflowctl's stack commands. */
#include "stack_ctl.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nf_err.h"
#include "stack.h"

const char *const nf_stack_roles[NF_N_ROLES] = {NF_ROLE_FETCHER, NF_ROLE_PREDICTOR,
                                                NF_ROLE_COMPUTE};

int nf_ctl_rundir(const char *cmd, const char *arg, char *dir, size_t len)
{
    int rc = nf_rundir_resolve(arg, dir, len);
    if (rc < 0) {
        fprintf(stderr, "nanoflowctl %s: cannot use run directory %s: %s\n", cmd,
                arg ? arg : "(default)", nf_strerror(rc));
        return -1;
    }
    /* Sockets and pid files are trusted only in a directory nobody else could have made or
     * planted them in. A missing directory is fine here: there is no stack to talk to. */
    char err[PATH_MAX + 256];
    rc = nf_rundir_check(dir, err, sizeof(err));
    if (rc < 0 && rc != -ENOENT) {
        fprintf(stderr, "nanoflowctl %s: refusing run directory %s: %s\n", cmd, dir, err);
        return -1;
    }
    return 0;
}

bool nf_ctl_stack_present(const char *dir)
{
    for (int i = 0; i < NF_N_ROLES; i++) {
        char path[PATH_MAX];
        struct stat st;
        if (nf_pidfile_read(dir, nf_stack_roles[i]) > 0)
            return true;
        nf_rundir_path(dir, nf_stack_roles[i], "sock", path, sizeof(path));
        if (stat(path, &st) == 0)
            return true;
    }
    return false;
}

int nf_ctl_connect(const char *dir, const char *role, int timeout_ms, char *err, size_t errlen)
{
    char path[PATH_MAX];
    nf_rundir_path(dir, role, "sock", path, sizeof(path));
    return nf_client_connect(path, timeout_ms, err, errlen);
}

int nf_ctl_daemon_pid(const char *dir, const char *role, char *why, size_t whylen)
{
    char pidp[PATH_MAX], sock[PATH_MAX], err[PATH_MAX + 128];
    nf_rundir_path(dir, role, "pid", pidp, sizeof(pidp));
    nf_rundir_path(dir, role, "sock", sock, sizeof(sock));
    int pid = nf_pidfile_read(dir, role);
    if (pid <= 0) {
        why[0] = '\0';
        return 0;
    }
    int peer = nf_client_peer_pid(sock, err, sizeof(err));
    if (peer == -EPERM)
        return nf_errf(why, whylen, -ESRCH, "%s; not signalling pid %d from %s", err, pid, pidp);
    if (peer < 0)
        return nf_errf(why, whylen, -ESRCH,
                       "%s names pid %d but no %s socket is there to confirm it is the stack's "
                       "daemon (%s); not signalling it",
                       pidp, pid, role, err);
    if (peer != pid)
        return nf_errf(why, whylen, -ESRCH,
                       "%s names pid %d but the %s socket is served by pid %d; not signalling "
                       "pid %d",
                       pidp, pid, role, peer, pid);
    if (nf_pid_is_daemon(pid, role, err, sizeof(err)) < 0)
        return nf_errf(why, whylen, -ESRCH, "%s: %s; not signalling it", pidp, err);
    return pid;
}

unsigned nf_ctl_stack_dead(const char *dir, char *msg, size_t len, int pids[NF_N_ROLES])
{
    char name[64], why[256];
    struct nf_stack st;
    nf_rundir_shm_name(dir, name, sizeof(name));
    if (nf_stack_attach(&st, name, NULL, why, sizeof(why)) < 0)
        return 0;
    /* nf_stack_roles and the liveness records are both in ready-bit order. */
    _Static_assert(NF_N_ROLES == NF_STACK_DAEMONS, "one liveness record per role");
    uint32_t dead = nf_live_check(&st);
    if (dead)
        nf_live_message(&st, dead, msg, len);
    for (int i = 0; pids && i < NF_N_ROLES; i++)
        pids[i] = atomic_load(&st.sync->live[i].pid);
    nf_stack_detach(&st);
    return dead;
}

int nf_ctl_stack_plan_info(const char *dir, struct nf_ctl_plan_info *out)
{
    char name[64], why[256];
    struct nf_stack st;
    nf_rundir_shm_name(dir, name, sizeof(name));
    int rc = nf_stack_attach(&st, name, NULL, why, sizeof(why));
    if (rc < 0)
        return rc;
    const struct nf_stack_config *c = st.cfg;
    out->n_ctx = c->n_ctx;
    out->n_ubatch = c->n_ubatch ? c->n_ubatch : NF_STACK_UBATCH;
    out->n_seq = c->n_seq ? c->n_seq : 1;
    out->pool_bytes = nf_stack_pool_bytes(&st);
    out->ram_budget = c->ram_budget;
    nf_stack_detach(&st);
    return 0;
}

unsigned long long nf_ctl_next_id(void)
{
    static unsigned long long next = 1;
    return next++;
}

int nf_ctl_request(int fd, nf_envelope *req, nf_envelope **reply, int timeout_ms)
{
    *reply = NULL;
    uint64_t id = nf_ctl_next_id();
    int rc = nf_client_send(fd, id, req);
    if (rc < 0)
        return rc;
    for (;;) {
        nf_envelope *r = NULL;
        rc = nf_client_recv(fd, &r, timeout_ms);
        if (rc == 0)
            return -ECONNRESET;
        if (rc < 0)
            return rc;
        /* An Error about the stream itself (request id 0) answers us too. */
        if (r->request_id == id ||
            (r->request_id == 0 && r->msg_case == NANOFLOW__ENVELOPE__MSG_ERROR)) {
            *reply = r;
            return 0;
        }
        nf_envelope_free(r);
    }
}

const char *nf_ctl_fmt_size(char *buf, size_t len, unsigned long long bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", bytes);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

void nf_ctl_cleanup_rundir(const char *dir)
{
    char path[PATH_MAX];
    for (int i = 0; i < NF_N_ROLES; i++) {
        nf_rundir_path(dir, nf_stack_roles[i], "sock", path, sizeof(path));
        unlink(path);
        nf_pidfile_remove(dir, nf_stack_roles[i]);
    }
    snprintf(path, sizeof(path), "%s/stack.conf", dir);
    FILE *cf = fopen(path, "r"); /* the KV file on disk, if `up` put it there (kv_file=) */
    char line[PATH_MAX + 16];
    while (cf && fgets(line, sizeof(line), cf))
        if (!strncmp(line, "kv_file=", 8)) {
            line[strcspn(line, "\n")] = 0;
            unlink(line + 8);
        }
    if (cf)
        fclose(cf);
    unlink(path);
    char name[64];
    nf_rundir_shm_name(dir, name, sizeof(name));
    shm_unlink(name);
}
