/* nf_proc.c - reading /proc/PID files. */
#include "nf_proc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t nf_proc_value(pid_t pid, const char *file, const char *key)
{
    char p[64], line[256];
    if (pid > 0)
        snprintf(p, sizeof(p), "/proc/%d/%s", (int)pid, file);
    else
        snprintf(p, sizeof(p), "/proc/self/%s", file);
    FILE *f = fopen(p, "r");
    uint64_t v = 0;
    if (!f)
        return 0;
    size_t kl = strlen(key);
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            v = strtoull(line + kl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

uint64_t nf_proc_private_bytes(pid_t pid)
{
    return nf_proc_value(pid, "status", "RssAnon") * 1024;
}
