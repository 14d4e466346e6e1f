/* test_sampler.c - the sampler's filters, penalty and seeded determinism on hand-made logits. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "nf_err.h"
#include "sampler.h"

#define NV 8

/* Draws n tokens from logits with params p and counts how often each id comes up. */
static void histogram(const struct nf_sampler_params *p, const float *logits, int n, int *count)
{
    struct nf_sampler *s = NULL;
    assert_int_equal(nf_sampler_create(&s, p, NV), 0);
    memset(count, 0, sizeof(int) * NV);
    for (int i = 0; i < n; i++) {
        int32_t t = nf_sampler_sample(s, logits);
        assert_true(t >= 0 && t < NV);
        count[t]++;
    }
    nf_sampler_free(s);
}

static struct nf_sampler_params open_params(void)
{
    struct nf_sampler_params p;
    nf_sampler_params_default(&p);
    p.temp = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 7;
    return p;
}

static const float flat[NV] = {1.0f, 0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.3f};

static void test_greedy(void **state)
{
    struct nf_sampler_params p = open_params();
    p.temp = 0.0f;
    const float l[NV] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f, 0.0f, 1.9f, -3.0f};
    int count[NV];
    histogram(&p, l, 50, count);
    assert_int_equal(count[1], 50); /* the first of two equal maxima */
}

static void test_seed_determinism(void **state)
{
    struct nf_sampler_params p = open_params();
    struct nf_sampler *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(nf_sampler_create(&a, &p, NV), 0);
    assert_int_equal(nf_sampler_create(&b, &p, NV), 0);
    p.seed = 8;
    assert_int_equal(nf_sampler_create(&c, &p, NV), 0);
    int same_ac = 0;
    for (int i = 0; i < 200; i++) {
        int32_t ta = nf_sampler_sample(a, flat), tb = nf_sampler_sample(b, flat);
        int32_t tc = nf_sampler_sample(c, flat);
        assert_int_equal(ta, tb);
        same_ac += ta == tc;
    }
    assert_true(same_ac < 200); /* another seed gives another sequence */
    nf_sampler_free(a);
    nf_sampler_free(b);
    nf_sampler_free(c);
}

static void test_distribution(void **state)
{
    /* With every filter off, frequencies follow the softmax (p(0)/p(7) = e^0.7 ~ 2.0). */
    struct nf_sampler_params p = open_params();
    int count[NV];
    histogram(&p, flat, 20000, count);
    for (int i = 0; i < NV; i++)
        assert_true(count[i] > 0);
    double r = (double)count[0] / count[7];
    assert_true(r > 1.7 && r < 2.4);
}

static void test_top_k(void **state)
{
    struct nf_sampler_params p = open_params();
    p.top_k = 3;
    int count[NV];
    histogram(&p, flat, 3000, count);
    for (int i = 0; i < 3; i++)
        assert_true(count[i] > 0);
    for (int i = 3; i < NV; i++)
        assert_int_equal(count[i], 0);
}

static void test_top_p(void **state)
{
    /* Probabilities 0.5, 0.25, 0.125, ...: top-p 0.7 keeps the first two (0.5 + 0.25 >= 0.7). */
    float l[NV];
    for (int i = 0; i < NV; i++)
        l[i] = -(float)i * logf(2.0f);
    struct nf_sampler_params p = open_params();
    p.top_p = 0.7f;
    int count[NV];
    histogram(&p, l, 3000, count);
    assert_true(count[0] > 0 && count[1] > 0);
    for (int i = 2; i < NV; i++)
        assert_int_equal(count[i], 0);
}

static void test_min_p(void **state)
{
    /* min-p 0.3: keep tokens with p >= 0.3 * p(top): logits within log(0.3) = -1.2 of the top. */
    const float l[NV] = {5.0f, 4.5f, 3.9f, 3.7f, 1.0f, 0.0f, -1.0f, 4.9f};
    struct nf_sampler_params p = open_params();
    p.min_p = 0.3f;
    int count[NV];
    histogram(&p, l, 4000, count);
    assert_true(count[0] > 0 && count[1] > 0 && count[2] > 0 && count[7] > 0);
    assert_int_equal(count[3], 0);
    assert_int_equal(count[4] + count[5] + count[6], 0);
}

static void test_temperature(void **state)
{
    /* A low temperature sharpens the distribution toward the top token. */
    struct nf_sampler_params p = open_params();
    int hot[NV], cold[NV];
    histogram(&p, flat, 4000, hot);
    p.temp = 0.02f;
    histogram(&p, flat, 4000, cold);
    assert_true(cold[0] > 3500);
    assert_true(hot[0] < 1500);
}

static void test_repeat_penalty(void **state)
{
    /* Token 0 (logit 2.0) is penalized to 2.0 / 2 = 1.0 < 1.5; token 2 (-1.0) to -2.0. */
    const float l[NV] = {2.0f, 1.5f, -1.0f, -1.5f, 0.0f, 0.0f, 0.0f, 0.0f};
    struct nf_sampler_params p = open_params();
    p.temp = 0.0f;
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 2;
    struct nf_sampler *s = NULL;
    assert_int_equal(nf_sampler_create(&s, &p, NV), 0);
    assert_int_equal(nf_sampler_sample(s, l), 0);
    nf_sampler_accept(s, 0);
    assert_int_equal(nf_sampler_sample(s, l), 1);
    nf_sampler_accept(s, 1);
    /* Both 0 and 1 are now penalized: 1.0 and 0.75, so token 0 wins again. */
    assert_int_equal(nf_sampler_sample(s, l), 0);
    nf_sampler_accept(s, 4);
    nf_sampler_accept(s, 5);
    /* Only the last 2 tokens count: 0 and 1 are no longer penalized. */
    assert_int_equal(nf_sampler_sample(s, l), 0);
    nf_sampler_free(s);

    /* Negative logits are multiplied: with -1.0 -> -2.0 token 3 (-1.5) beats token 2. */
    const float neg[NV] = {-5.0f, -5.0f, -1.0f, -1.5f, -9.0f, -9.0f, -9.0f, -9.0f};
    assert_int_equal(nf_sampler_create(&s, &p, NV), 0);
    assert_int_equal(nf_sampler_sample(s, neg), 2);
    nf_sampler_accept(s, 2);
    assert_int_equal(nf_sampler_sample(s, neg), 3);
    nf_sampler_free(s);
}

/* Hand-computed: window 4 holds [1, 2, 5, 1] after accepting 7, 1, 2, 5, 1 (7 has left it), so
 * token 1 is seen twice, 2 and 5 once. With repeat 2, frequency 0.5, presence 0.25:
 *   1:  2.0 / 2 = 1.0,  - (2 * 0.5 + 0.25) = -0.25
 *   2: -1.0 * 2 = -2.0, - (1 * 0.5 + 0.25) = -2.75
 *   5:  1.0 / 2 = 0.5,  - 0.75             = -0.25
 * and every other logit (7 included) unchanged. */
static void test_presence_frequency(void **state)
{
    const float l[NV] = {0.5f, 2.0f, -1.0f, 3.0f, 0.0f, 1.0f, -0.5f, 0.25f};
    const float want[NV] = {0.5f, -0.25f, -2.75f, 3.0f, 0.0f, -0.25f, -0.5f, 0.25f};
    struct nf_sampler_params p = open_params();
    p.temp = 0.0f;
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 4;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    struct nf_sampler *s = NULL;
    assert_int_equal(nf_sampler_create(&s, &p, NV), 0);
    const int32_t seq[] = {7, 1, 2, 5, 1};
    for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++)
        nf_sampler_accept(s, seq[i]);
    float out[NV];
    nf_sampler_penalized(s, l, out);
    for (int i = 0; i < NV; i++)
        assert_float_equal(out[i], want[i], 1e-6);
    nf_sampler_free(s);

    /* Frequency alone counts repeats: after 3, 3, 3 and 0, token 3 (3.0 - 3 * 1.0 = 0.0) falls
     * below token 1 (2.0) and token 0 gets 0.5 - 1.0 = -0.5; presence does not count. */
    p = open_params();
    p.temp = 0.0f;
    p.frequency_penalty = 1.0f;
    assert_int_equal(nf_sampler_create(&s, &p, NV), 0);
    assert_int_equal(nf_sampler_sample(s, l), 3);
    nf_sampler_accept(s, 3);
    assert_int_equal(nf_sampler_sample(s, l), 1); /* 3 - 1 ties with token 1's 2.0: lower id */
    nf_sampler_accept(s, 3);
    nf_sampler_accept(s, 3);
    nf_sampler_accept(s, 0);
    nf_sampler_penalized(s, l, out);
    assert_float_equal(out[3], 0.0f, 1e-6);
    assert_float_equal(out[0], -0.5f, 1e-6);
    assert_int_equal(nf_sampler_sample(s, l), 1);
    nf_sampler_free(s);
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 1.5f;
    assert_int_equal(nf_sampler_create(&s, &p, NV), 0);
    nf_sampler_accept(s, 3);
    nf_sampler_accept(s, 3);
    nf_sampler_penalized(s, l, out);
    assert_float_equal(out[3], 1.5f, 1e-6);
    /* A negative penalty favours what was seen: token 6 (-0.5 + 4) wins. */
    nf_sampler_free(s);
    p.presence_penalty = -2.0f;
    p.frequency_penalty = -2.0f;
    assert_int_equal(nf_sampler_create(&s, &p, NV), 0);
    nf_sampler_accept(s, 6);
    assert_int_equal(nf_sampler_sample(s, l), 6);
    nf_sampler_free(s);
}

static void test_log_sum_exp(void **state)
{
    /* log(e^1 + e^2 + e^3) = 3 + log(1 + e^-1 + e^-2) = 3.40760596...; huge values do not
     * overflow. */
    const float a[3] = {1.0f, 2.0f, 3.0f};
    assert_float_equal(nf_log_sum_exp(a, 3), 3.4076059644443806, 1e-9);
    const float b[2] = {1000.0f, 1000.0f};
    assert_float_equal(nf_log_sum_exp(b, 2), 1000.0 + log(2.0), 1e-9);
}

static void test_bad_params(void **state)
{
    struct nf_sampler_params p = open_params();
    struct nf_sampler *s = NULL;
    p.repeat_penalty = 0.0f;
    assert_int_equal(nf_sampler_create(&s, &p, NV), NF_EUSAGE);
    p = open_params();
    assert_int_equal(nf_sampler_create(&s, &p, 0), NF_EUSAGE);
    char err[200];
    p.presence_penalty = 2.5f;
    assert_int_equal(nf_sampler_params_check(&p, err, sizeof(err)), NF_EUSAGE);
    assert_non_null(strstr(err, "presence_penalty 2.5 is out of range, expected -2..2"));
    p = open_params();
    p.frequency_penalty = NAN;
    assert_int_equal(nf_sampler_params_check(&p, err, sizeof(err)), NF_EUSAGE);
    assert_non_null(strstr(err, "frequency_penalty"));
    assert_int_equal(nf_sampler_create(&s, &p, NV), NF_EUSAGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),       cmocka_unit_test(test_seed_determinism),
        cmocka_unit_test(test_distribution), cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_temperature),  cmocka_unit_test(test_repeat_penalty),
        cmocka_unit_test(test_bad_params),   cmocka_unit_test(test_presence_frequency),
        cmocka_unit_test(test_log_sum_exp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
