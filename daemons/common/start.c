/* start.c - the start-up and exit every daemon shares: run directory, detaching, log, pid file,
 * and waiting for the fetcher's region. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "nf_err.h"
#include "nf_time.h"
#include "stack.h"

int nf_daemon_detach(const char *log_path)
{
    /* setsid fails only for a process group leader: then leave it to a child of ours. */
    if (setsid() < 0) {
        pid_t pid = fork();
        if (pid < 0)
            return -errno;
        if (pid > 0)
            _exit(0);
        if (setsid() < 0)
            return -errno;
    }
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (in < 0 || out < 0) {
        int e = -errno;
        if (in >= 0)
            close(in);
        if (out >= 0)
            close(out);
        return e;
    }
    dup2(in, STDIN_FILENO);
    dup2(out, STDOUT_FILENO);
    dup2(out, STDERR_FILENO);
    close(in);
    close(out);
    return 0;
}

int nf_daemon_begin(const char *role, const char *run_dir_arg, bool foreground,
                    enum nf_log_level level, int (*detach)(const char *log_path, void *ud),
                    void *ud, char *dir, size_t dirlen)
{
    char err[PATH_MAX + 256] = "", log_path[PATH_MAX + 64];
    int rc = nf_rundir_resolve(run_dir_arg, dir, dirlen);
    if (rc == 0)
        rc = nf_rundir_create(dir, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "nanoflow-%s: %s\n", role,
                err[0] ? err : "cannot resolve the run directory (name too long?)");
        return 1;
    }
    nf_rundir_path(dir, role, "log", log_path, sizeof(log_path));
    if (!foreground) {
        rc = detach ? detach(log_path, ud) : nf_daemon_detach(log_path);
        if (rc < 0) {
            fprintf(stderr, "nanoflow-%s: cannot detach (log %s): %s\n", role, log_path,
                    nf_strerror(rc));
            return 1;
        }
    }
    if ((rc = nf_log_open(role, foreground ? NULL : log_path, level)) < 0) {
        fprintf(stderr, "nanoflow-%s: cannot open %s: %s\n", role, log_path, nf_strerror(rc));
        return 1;
    }
    if ((rc = nf_pidfile_create(dir, role)) < 0) {
        if (rc == -EEXIST)
            nf_log(NF_LOG_ERROR, "a %s daemon is already running in %s", role, dir);
        else
            nf_log(NF_LOG_ERROR, "cannot write the pid file in %s: %s", dir, nf_strerror(rc));
        nf_log_close();
        return 1;
    }
    return 0;
}

void nf_daemon_end(const char *role, const char *dir, int status)
{
    nf_pidfile_remove(dir, role);
    nf_log(NF_LOG_INFO, "exiting (%s)", status == 0 ? "clean" : "error");
    nf_log_close();
}

int nf_daemon_attach(struct nf_stack *st, const char *dir, const struct nf_nft *f, int timeout_s,
                     bool *attached, char *err, size_t errlen)
{
    char name[NAME_MAX], why[512] = "";
    nf_rundir_shm_name(dir, name, sizeof(name));
    const int limit = timeout_s * 1000;
    int waited = 0, rc;
    /* The fetcher creates the region: absent (-ENOENT) or not yet initialized (-EAGAIN) until
     * then. */
    while ((rc = nf_stack_attach(st, name, f, why, sizeof(why))) < 0) {
        if ((rc != -ENOENT && rc != -EAGAIN) || waited >= limit)
            return nf_errf(err, errlen, rc, "cannot attach to stack %s: %s", name,
                           why[0] ? why : nf_strerror(rc));
        nf_sleep_ms(100);
        waited += 100;
    }
    *attached = true;
    while (!(atomic_load(&st->sync->ready_mask) & NF_READY_FETCHER)) {
        if (atomic_load(&st->sync->stop))
            return nf_errf(err, errlen, -ECANCELED, "the stack is stopping");
        if (waited >= limit)
            return nf_errf(err, errlen, -ETIMEDOUT, "the fetcher did not become ready within %d s",
                           timeout_s);
        nf_sleep_ms(50);
        waited += 50;
    }
    return 0;
}
