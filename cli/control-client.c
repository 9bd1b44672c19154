/* control-client.c: `blkmig control`, send one command to a control socket. */
#include <config.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/control.h"
#include "common/log.h"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: blkmig control [--events] SOCKET COMMAND [ARGUMENTS-JSON]\n"
            "\n"
            "Send COMMAND (with an optional JSON object of arguments) to the control socket of\n"
            "a running blkmig job and print the reply as one JSON line.\n"
            "  --events    also print the events that arrive before the reply\n"
            "  -h, --help  show this help\n"
            "Examples:\n"
            "  blkmig control /run/mirror.sock query\n"
            "  blkmig control /run/mirror.sock set-speed '{\"speed\": \"100M\"}'\n"
            "Exit status: 0 when the reply is a return, 1 for an error reply or failure, 2 usage.\n");
}

int cmd_control(int argc, char **argv)
{
    bm_log_set_prefix("blkmig control");
    int i = 1;
    bool events = false;
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--events") == 0) {
        events = true;
        i++;
    }
    if (argc - i < 2 || argc - i > 3) {
        usage(stderr);
        return 2;
    }
    struct json_object *args = NULL;
    if (argc - i == 3) {
        args = json_tokener_parse(argv[i + 2]);
        if (!args || !json_object_is_type(args, json_type_object)) {
            bm_error("arguments must be a JSON object, such as '{\"speed\": 1000000}'");
            json_object_put(args);
            return 2;
        }
    }
    char err[256];
    struct json_object *reply =
        bm_control_call(argv[i], argv[i + 1], args, events ? STDOUT_FILENO : -1, err, sizeof err);
    json_object_put(args);
    if (!reply) {
        bm_error("%s", err);
        return 1;
    }
    printf("%s\n", json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN));
    struct json_object *x;
    int rc = json_object_object_get_ex(reply, "return", &x) ? 0 : 1;
    json_object_put(reply);
    return rc;
}
