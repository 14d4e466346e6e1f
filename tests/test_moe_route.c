/* test_moe_route.c - sigmoid expert routing (nf_moe_route_sigmoid): the bias steers the choice
 * but not the weights, the group limit, normalization and the routed scaling factor, on
 * hand-made router logits whose results are worked out below. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "model.h"

static float sigm(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

/* Without a bias the K highest logits win, in decreasing order, weighted by their sigmoids. */
static void test_plain(void **state)
{
    (void)state;
    float p[6] = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f, -0.2f};
    const float x[6] = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f, -0.2f};
    struct nf_moe_sigmoid_route r = {.n_expert = 6, .n_expert_used = 3};
    int sel[3];
    float w[3];
    nf_moe_route_sigmoid(&r, p, NULL, sel, w);
    assert_int_equal(sel[0], 1);
    assert_int_equal(sel[1], 3);
    assert_int_equal(sel[2], 4);
    for (int k = 0; k < 3; k++)
        assert_true(w[k] == sigm(x[sel[k]]));
    for (int e = 0; e < 6; e++) /* p is left holding the sigmoids */
        assert_true(p[e] == sigm(x[e]));
}

/* The score-correction bias decides which experts run; their weights stay the unbiased
 * sigmoids (here normalized to sum to 1, then scaled by 2.5). */
static void test_bias_norm_scale(void **state)
{
    (void)state;
    float p[6] = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f, -0.2f};
    const float x[6] = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f, -0.2f};
    const float bias[6] = {0, -1.0f, 0.9f, 0, 0, 0.8f};
    /* biased: 0.525, -0.12, 1.169, 0.818, 0.574, 1.250 -> experts 5, 2, 3 */
    struct nf_moe_sigmoid_route r = {
        .n_expert = 6, .n_expert_used = 3, .norm_w = true, .scale = 2.5f};
    int sel[3];
    float w[3];
    nf_moe_route_sigmoid(&r, p, bias, sel, w);
    assert_int_equal(sel[0], 5);
    assert_int_equal(sel[1], 2);
    assert_int_equal(sel[2], 3);
    const float s = (float)((double)sigm(x[5]) + (double)sigm(x[2]) + (double)sigm(x[3]));
    float sum = 0;
    for (int k = 0; k < 3; k++) {
        assert_true(w[k] == sigm(x[sel[k]]) / s * 2.5f);
        sum += w[k];
    }
    assert_float_equal(sum, 2.5f, 1e-6);
    /* A scale of 1 (or 0) changes nothing, as in llama.cpp. */
    float p1[6] = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f, -0.2f};
    float w1[3];
    r.scale = 1.0f;
    nf_moe_route_sigmoid(&r, p1, bias, sel, w1);
    for (int k = 0; k < 3; k++)
        assert_true(w1[k] == sigm(x[sel[k]]) / s);
}

/* Groups: 8 experts in 4 groups of 2, one group used. Group 0 (experts 0, 1) holds the single
 * highest score but group 2 (experts 4, 5) has the highest sum of its two best, so both chosen
 * experts come from group 2 even though expert 0 alone outranks them. */
static void test_groups(void **state)
{
    (void)state;
    float p[8] = {3.0f, -3.0f, 0, 0, 1.0f, 0.9f, -1.0f, -1.0f};
    struct nf_moe_sigmoid_route r = {
        .n_expert = 8, .n_expert_used = 2, .n_group = 4, .n_group_used = 1};
    int sel[2];
    float w[2];
    nf_moe_route_sigmoid(&r, p, NULL, sel, w);
    assert_int_equal(sel[0], 4);
    assert_int_equal(sel[1], 5);
    /* Two groups used: group sums 1.0, 1.10, 1.44, 0.54, so groups 2 and 1; expert 0 (group
     * 0) is still masked out. */
    float q[8] = {3.0f, -3.0f, 0.2f, 0.2f, 1.0f, 0.9f, -1.0f, -1.0f};
    r.n_group_used = 2;
    nf_moe_route_sigmoid(&r, q, NULL, sel, w);
    assert_int_equal(sel[0], 4);
    assert_int_equal(sel[1], 5);
    /* Without groups expert 0 wins. */
    float u[8] = {3.0f, -3.0f, 0.2f, 0.2f, 1.0f, 0.9f, -1.0f, -1.0f};
    r.n_group = 0;
    nf_moe_route_sigmoid(&r, u, NULL, sel, w);
    assert_int_equal(sel[0], 0);
    assert_int_equal(sel[1], 4);
}

/* A zero-sum guard: weights that sum below the smallest normal F16 are divided by it. */
static void test_norm_clamp(void **state)
{
    (void)state;
    float p[4] = {-30.0f, -31.0f, -40.0f, -50.0f};
    struct nf_moe_sigmoid_route r = {.n_expert = 4, .n_expert_used = 2, .norm_w = true};
    int sel[2];
    float w[2];
    nf_moe_route_sigmoid(&r, p, NULL, sel, w);
    assert_int_equal(sel[0], 0);
    assert_true(w[0] == sigm(-30.0f) / 6.103515625e-5f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_bias_norm_scale),
        cmocka_unit_test(test_groups),
        cmocka_unit_test(test_norm_clamp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
