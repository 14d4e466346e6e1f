/* rundir.c - the run directory of a stack: resolution, creation, file paths, pid files. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"

int nf_rundir_resolve(const char *arg, char *out, size_t len)
{
    char tmp[PATH_MAX];
    const char *env;
    if (arg && *arg)
        snprintf(tmp, sizeof(tmp), "%s", arg);
    else if ((env = getenv("NANOFLOW_RUN_DIR")) && *env)
        snprintf(tmp, sizeof(tmp), "%s", env);
    else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
        snprintf(tmp, sizeof(tmp), "%s/nanoflow", env);
    else if (geteuid() == 0)
        snprintf(tmp, sizeof(tmp), "/run/nanoflow");
    else
        snprintf(tmp, sizeof(tmp), "/tmp/nanoflow-%u", (unsigned)getuid());
    /* Absolute, without trailing slashes: the shm name is a hash of this exact string, so
     * "d", "./d/" and "/abs/d" must all name the same stack. */
    char abs[PATH_MAX];
    if (tmp[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd)))
            return -errno;
        const char *rel = tmp;
        while (rel[0] == '.' && rel[1] == '/')
            rel += 2;
        if (!strcmp(rel, "."))
            rel = "";
        if ((size_t)snprintf(abs, sizeof(abs), "%s%s%s", cwd, *rel ? "/" : "", rel) >= sizeof(abs))
            return -ENAMETOOLONG;
    } else {
        snprintf(abs, sizeof(abs), "%s", tmp);
    }
    size_t n = strlen(abs);
    while (n > 1 && abs[n - 1] == '/')
        abs[--n] = '\0';
    /* Socket paths are dir/ROLE.sock and must fit sockaddr_un.sun_path (108 bytes). */
    if (n + sizeof("/predictor.sock") > 108)
        return -ENAMETOOLONG;
    if (n + 1 > len)
        return -ENAMETOOLONG;
    memcpy(out, abs, n + 1);
    return 0;
}

int nf_rundir_create(const char *dir, char *err, size_t errlen)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof(p), "%s", dir) >= (int)sizeof(p)) {
        snprintf(err, errlen, "run directory path too long: %s", dir);
        return -ENAMETOOLONG;
    }
    /* Missing parents first, each 0700 (only directories we create get that mode). */
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0700) < 0 && errno != EEXIST) {
            int e = errno;
            snprintf(err, errlen, "cannot create %s: %s", p, strerror(e));
            return -e;
        }
        *s = '/';
    }
    if (mkdir(p, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        snprintf(err, errlen, "cannot create run directory %s: %s", p, strerror(e));
        return -e;
    }
    struct stat st;
    if (lstat(p, &st) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot stat run directory %s: %s", p, strerror(e));
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "run directory %s is not a directory", p);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen, "run directory %s is owned by uid %u, expected %u", p,
                 (unsigned)st.st_uid, (unsigned)geteuid());
        return -EPERM;
    }
    if (st.st_mode & 077) {
        snprintf(err, errlen,
                 "run directory %s has mode %04o, expected 0700 (not accessible to "
                 "others)",
                 p, (unsigned)(st.st_mode & 0777));
        return -EPERM;
    }
    return 0;
}

void nf_rundir_path(const char *dir, const char *role, const char *suffix, char *out, size_t len)
{
    snprintf(out, len, "%s/%s.%s", dir, role, suffix);
}

void nf_rundir_shm_name(const char *dir, char *out, size_t len)
{
    /* FNV-1a 64: stable across processes and builds, which is all the name needs. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *s = (const unsigned char *)dir; *s; s++) {
        h ^= *s;
        h *= 0x100000001b3ull;
    }
    snprintf(out, len, "/nanoflow-%016llx", (unsigned long long)h);
}

/* True when pid names a live process that is not a zombie. */
static int pid_alive(pid_t pid)
{
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) < 0 && errno != EPERM)
        return 0;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1; /* no /proc: trust kill() */
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'))
        return 0;
    return 1;
}

static pid_t pidfile_pid(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long v = 0;
    if (fscanf(f, "%ld", &v) != 1 || v <= 0 || v > INT_MAX)
        v = 0;
    fclose(f);
    return (pid_t)v;
}

int nf_pidfile_create(const char *dir, const char *role)
{
    char path[PATH_MAX];
    nf_rundir_path(dir, role, "pid", path, sizeof(path));
    for (int attempt = 0; attempt < 3; attempt++) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char buf[32];
            int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
            ssize_t w = write(fd, buf, (size_t)n);
            int e = errno;
            close(fd);
            if (w != n) {
                unlink(path);
                return w < 0 ? -e : -EIO;
            }
            return 0;
        }
        if (errno != EEXIST)
            return -errno;
        pid_t old = pidfile_pid(path);
        if (old == getpid())
            return 0;
        if (old > 0 && pid_alive(old))
            return -EEXIST;
        /* Stale (dead pid, or a file cut short by a crash): remove and retry. */
        if (unlink(path) < 0 && errno != ENOENT)
            return -errno;
    }
    return -EEXIST;
}

int nf_pidfile_read(const char *dir, const char *role)
{
    char path[PATH_MAX];
    nf_rundir_path(dir, role, "pid", path, sizeof(path));
    pid_t pid = pidfile_pid(path);
    return pid > 0 && pid_alive(pid) ? (int)pid : 0;
}

void nf_pidfile_remove(const char *dir, const char *role)
{
    char path[PATH_MAX];
    nf_rundir_path(dir, role, "pid", path, sizeof(path));
    unlink(path);
}
