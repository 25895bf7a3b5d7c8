/* LTTng-UST tracepoint provider of the test app: tracecar_test:tick (INFO) and
 * tracecar_test:detail (DEBUG, every 10th tick). Known fields so tests can
 * check exact values. */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER tracecar_test

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./tracecar_tp.h"

#if !defined(TRACECAR_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define TRACECAR_TP_H

#include <lttng/tracepoint.h>

LTTNG_UST_TRACEPOINT_EVENT(
    tracecar_test, tick,
    LTTNG_UST_TP_ARGS(int, batch, int, seq, const char *, msg),
    LTTNG_UST_TP_FIELDS(
        lttng_ust_field_integer(int, batch, batch)
        lttng_ust_field_integer(int, seq, seq)
        lttng_ust_field_string(msg, msg)
    )
)
LTTNG_UST_TRACEPOINT_LOGLEVEL(tracecar_test, tick, LTTNG_UST_TRACEPOINT_LOGLEVEL_INFO)

LTTNG_UST_TRACEPOINT_EVENT(
    tracecar_test, detail,
    LTTNG_UST_TP_ARGS(int, seq, double, ratio),
    LTTNG_UST_TP_FIELDS(
        lttng_ust_field_integer(int, seq, seq)
        lttng_ust_field_float(double, ratio, ratio)
    )
)
LTTNG_UST_TRACEPOINT_LOGLEVEL(tracecar_test, detail, LTTNG_UST_TRACEPOINT_LOGLEVEL_DEBUG)

#endif /* TRACECAR_TP_H */

#include <lttng/tracepoint-event.h>
