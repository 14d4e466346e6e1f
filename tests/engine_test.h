/* engine_test.h - what the engine tests (test_stream, test_batch_engine, test_prefix_engine,
 * test_kv_file) share: the cmocka group's scratch directory and the greedy pick.
 *
 * Define ENGINE_TEST_NAME (a string) before including: the directory is
 * /tmp/ENGINE_TEST_NAME-XXXXXX, made by setup_dir and emptied (one level) and removed by
 * teardown_dir, the group setup and teardown. Include once, after <dirent.h>, <stdio.h>,
 * <stdlib.h> and <unistd.h>. */
#ifndef NF_ENGINE_TEST_H
#define NF_ENGINE_TEST_H

static char tmpdir[256];

static inline int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/" ENGINE_TEST_NAME "-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static inline int teardown_dir(void **state)
{
    (void)state;
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char p[600];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(tmpdir);
    return 0;
}

/* The index of the largest of x[0..n-1], the first on ties (greedy sampling's choice). */
static inline int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

#endif
