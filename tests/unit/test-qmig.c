/* test-qmig.c: unit tests for vm/qemu/qmig (query-migrate's replies, checked). */
#include <config.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <string.h>

#include "vm/qemu/qmig.h"

static char err[256];

static int parse(const char *json, struct qemu_mig_info *mi)
{
    struct json_object *o = json_tokener_parse(json);
    assert_non_null(o);
    err[0] = '\0';
    int r = qemu_mig_parse(o, mi, err, sizeof err);
    json_object_put(o);
    return r;
}

/* A reply QEMU 7.2 gave at pre-switchover, and the figures taken from it. */
static void test_pre_switchover(void **state)
{
    (void)state;
    struct qemu_mig_info mi;
    assert_int_equal(
        parse("{\"expected-downtime\": 1, \"status\": \"pre-switchover\", \"setup-time\": 2, "
              "\"total-time\": 411, \"ram\": {\"total\": 134750208, \"dirty-sync-count\": 3, "
              "\"page-size\": 4096, \"remaining\": 8192, \"mbps\": 31.6, \"transferred\": "
              "799950, \"dirty-pages-rate\": 10, \"normal\": 123}}",
              &mi),
        0);
    assert_string_equal(mi.status, "pre-switchover");
    assert_int_equal(mi.total_time_ms, 411);
    assert_int_equal(mi.setup_time_ms, 2);
    assert_int_equal(mi.expected_downtime_ms, 1);
    assert_int_equal(mi.ram_total, 134750208);
    assert_int_equal(mi.ram_remaining, 8192);
    assert_int_equal(mi.ram_transferred, 799950);
    assert_int_equal(mi.ram_rounds, 3);
    assert_int_equal(mi.ram_dirty_rate, 40960);
    assert_int_equal(mi.ram_throughput, 3950000);
    assert_false(qemu_mig_status_final(mi.status));
}

/* Before any migration QEMU answers {}; a failure carries error-desc; completed is final. */
static void test_other_states(void **state)
{
    (void)state;
    struct qemu_mig_info mi;
    assert_int_equal(parse("{}", &mi), 0);
    assert_string_equal(mi.status, "none");
    assert_int_equal(parse("{\"status\": \"failed\", \"error-desc\": \"Broken pipe\"}", &mi), 0);
    assert_string_equal(mi.error, "Broken pipe");
    assert_true(qemu_mig_status_final(mi.status));
    assert_int_equal(parse("{\"status\": \"completed\", \"downtime\": 93, \"ram\": {\"mbps\": 17}}",
                           &mi),
                     0);
    assert_int_equal(mi.downtime_ms, 93);
    assert_int_equal(mi.ram_throughput, 2125000);
    assert_true(qemu_mig_status_final(mi.status));
}

/* What is not query-migrate's shape is refused with a reason. */
static void test_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "[]",
        "{\"status\": 1}",
        "{\"status\": \"flying\"}",
        "{\"status\": \"active\", \"total-time\": -1}",
        "{\"status\": \"active\", \"downtime\": \"1\"}",
        "{\"status\": \"active\", \"ram\": []}",
        "{\"status\": \"active\", \"ram\": {\"remaining\": 1.5}}",
        "{\"status\": \"active\", \"ram\": {\"mbps\": \"fast\"}}",
        "{\"status\": \"active\", \"ram\": {\"mbps\": -3}}",
        "{\"status\": \"active\", \"ram\": {\"mbps\": 1e300}}",
        "{\"status\": \"active\", \"ram\": {\"page-size\": 4294967296}}",
        "{\"status\": \"active\", \"ram\": {\"dirty-pages-rate\": 9007199254740993}}",
        "{\"status\": \"failed\", \"error-desc\": {}}",
    };
    struct qemu_mig_info mi;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(parse(bad[i], &mi), -EPROTO);
        assert_true(strncmp(err, "query-migrate: ", 15) == 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pre_switchover),
        cmocka_unit_test(test_other_states),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
