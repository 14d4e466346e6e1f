/* start.c - the start-up and exit every daemon shares: run directory, detaching, log, pid file. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "nf_err.h"

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

int nf_daemon_log_level(const char *role, const char *arg, enum nf_log_level *out)
{
    if (nf_log_level_parse(arg, out) == 0)
        return 0;
    fprintf(stderr,
            "nanoflow-%s: invalid --log-level '%s', expected error, warn, info or debug (try "
            "'nanoflow-%s --help')\n",
            role, arg, role);
    return -EINVAL;
}
