/* babeltrace2 sink component `sink.tracecar.ndjson`: every event as one JSON line.
 *
 * The native twin of agent/lttng/_read.py's text -> NDJSON conversion, and the same
 * shape: {"timestamp_ns", "loglevel", "loglevel_value", "name", "packet_context",
 * "context", "specific_context", "fields"}. Integers are numbers (whatever base
 * babeltrace2 would display), arrays lists, enumerations {"labels", "value"},
 * options their value or null, variants the selected option. Non-finite reals
 * become the strings "nan", "inf", "-inf" (JSON has no such numbers).
 *
 * Built by the agent at start-up when gcc and libbabeltrace2-dev are present
 * (agent/lttng/_native.py):
 *   gcc -O2 -fPIC -shared -o babeltrace-plugin-tracecar.so ndjson_sink.c -lbabeltrace2
 * and used as: babeltrace2 --plugin-path=DIR TRACE -c sink.tracecar.ndjson
 */
#include <babeltrace2/babeltrace.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ndjson {
    bt_message_iterator *iter;
};

static const char *const LEVELS[] = {
    "TRACE_EMERG",         "TRACE_ALERT",         "TRACE_CRIT",         "TRACE_ERR",
    "TRACE_WARNING",       "TRACE_NOTICE",        "TRACE_INFO",         "TRACE_DEBUG_SYSTEM",
    "TRACE_DEBUG_PROGRAM", "TRACE_DEBUG_PROCESS", "TRACE_DEBUG_MODULE", "TRACE_DEBUG_UNIT",
    "TRACE_DEBUG_FUNCTION", "TRACE_DEBUG_LINE",   "TRACE_DEBUG",
};

static void json_string(FILE *o, const char *s, uint64_t len) {
    static const char hex[] = "0123456789abcdef";
    putc_unlocked('"', o);
    for (uint64_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", o); break;
        case '\\': fputs("\\\\", o); break;
        case '\n': fputs("\\n", o); break;
        case '\t': fputs("\\t", o); break;
        case '\r': fputs("\\r", o); break;
        default:
            if (c < 0x20) {
                fputs("\\u00", o);
                putc_unlocked(hex[c >> 4], o);
                putc_unlocked(hex[c & 15], o);
            } else {
                putc_unlocked(c, o);
            }
        }
    }
    putc_unlocked('"', o);
}

static void json_real(FILE *o, double v) {
    if (isnan(v))
        fputs("\"nan\"", o);
    else if (isinf(v))
        fputs(v > 0 ? "\"inf\"" : "\"-inf\"", o);
    else
        fprintf(o, "%.17g", v);
}

static void labels(FILE *o, bt_field_class_enumeration_mapping_label_array arr, uint64_t n) {
    fputs("{\"labels\": [", o);
    for (uint64_t i = 0; i < n; i++) {
        if (i) fputs(", ", o);
        json_string(o, arr[i], strlen(arr[i]));
    }
    fputs("], \"value\": ", o);
}

static void field(FILE *o, const bt_field *f) {
    bt_field_class_type t = bt_field_get_class_type(f);
    if (t == BT_FIELD_CLASS_TYPE_BOOL) {
        fputs(bt_field_bool_get_value(f) ? "true" : "false", o);
    } else if (t == BT_FIELD_CLASS_TYPE_BIT_ARRAY) {
        fprintf(o, "%" PRIu64, bt_field_bit_array_get_value_as_integer(f));
    } else if (bt_field_class_type_is(t, BT_FIELD_CLASS_TYPE_UNSIGNED_ENUMERATION)) {
        bt_field_class_enumeration_mapping_label_array arr = NULL;
        uint64_t n = 0;
        bt_field_enumeration_unsigned_get_mapping_labels(f, &arr, &n);
        labels(o, arr, n);
        fprintf(o, "%" PRIu64 "}", bt_field_integer_unsigned_get_value(f));
    } else if (bt_field_class_type_is(t, BT_FIELD_CLASS_TYPE_SIGNED_ENUMERATION)) {
        bt_field_class_enumeration_mapping_label_array arr = NULL;
        uint64_t n = 0;
        bt_field_enumeration_signed_get_mapping_labels(f, &arr, &n);
        labels(o, arr, n);
        fprintf(o, "%" PRId64 "}", bt_field_integer_signed_get_value(f));
    } else if (bt_field_class_type_is(t, BT_FIELD_CLASS_TYPE_UNSIGNED_INTEGER)) {
        fprintf(o, "%" PRIu64, bt_field_integer_unsigned_get_value(f));
    } else if (bt_field_class_type_is(t, BT_FIELD_CLASS_TYPE_SIGNED_INTEGER)) {
        fprintf(o, "%" PRId64, bt_field_integer_signed_get_value(f));
    } else if (t == BT_FIELD_CLASS_TYPE_SINGLE_PRECISION_REAL) {
        json_real(o, bt_field_real_single_precision_get_value(f));
    } else if (t == BT_FIELD_CLASS_TYPE_DOUBLE_PRECISION_REAL) {
        json_real(o, bt_field_real_double_precision_get_value(f));
    } else if (t == BT_FIELD_CLASS_TYPE_STRING) {
        json_string(o, bt_field_string_get_value(f), bt_field_string_get_length(f));
    } else if (t == BT_FIELD_CLASS_TYPE_STRUCTURE) {
        const bt_field_class *fc = bt_field_borrow_class_const(f);
        uint64_t n = bt_field_class_structure_get_member_count(fc);
        putc_unlocked('{', o);
        for (uint64_t i = 0; i < n; i++) {
            const bt_field_class_structure_member *m =
                bt_field_class_structure_borrow_member_by_index_const(fc, i);
            const char *name = bt_field_class_structure_member_get_name(m);
            if (i) fputs(", ", o);
            json_string(o, name, strlen(name));
            fputs(": ", o);
            field(o, bt_field_structure_borrow_member_field_by_index_const(f, i));
        }
        putc_unlocked('}', o);
    } else if (bt_field_class_type_is(t, BT_FIELD_CLASS_TYPE_ARRAY)) {
        uint64_t n = bt_field_array_get_length(f);
        putc_unlocked('[', o);
        for (uint64_t i = 0; i < n; i++) {
            if (i) fputs(", ", o);
            field(o, bt_field_array_borrow_element_field_by_index_const(f, i));
        }
        putc_unlocked(']', o);
    } else if (bt_field_class_type_is(t, BT_FIELD_CLASS_TYPE_OPTION)) {
        const bt_field *v = bt_field_option_borrow_field_const(f);
        if (v)
            field(o, v);
        else
            fputs("null", o);
    } else if (bt_field_class_type_is(t, BT_FIELD_CLASS_TYPE_VARIANT)) {
        field(o, bt_field_variant_borrow_selected_option_field_const(f));
    } else {
        fputs("null", o);
    }
}

static void scope(FILE *o, const char *key, const bt_field *f) {
    if (!f) return;
    fputs(", \"", o);
    fputs(key, o);
    fputs("\": ", o);
    field(o, f);
}

static void event(FILE *o, const bt_message *msg) {
    const bt_event *ev = bt_message_event_borrow_event_const(msg);
    const bt_event_class *ec = bt_event_borrow_class_const(ev);
    putc_unlocked('{', o);
    const char *sep = "";
    if (bt_message_event_borrow_stream_class_default_clock_class_const(msg)) {
        int64_t ns = 0;
        const bt_clock_snapshot *cs = bt_message_event_borrow_default_clock_snapshot_const(msg);
        if (bt_clock_snapshot_get_ns_from_origin(cs, &ns) == BT_CLOCK_SNAPSHOT_GET_NS_FROM_ORIGIN_STATUS_OK) {
            fprintf(o, "\"timestamp_ns\": %" PRId64, ns);
            sep = ", ";
        }
    }
    bt_event_class_log_level level;
    if (bt_event_class_get_log_level(ec, &level) == BT_PROPERTY_AVAILABILITY_AVAILABLE &&
        (unsigned)level < sizeof LEVELS / sizeof LEVELS[0]) {
        fprintf(o, "%s\"loglevel\": \"%s\", \"loglevel_value\": %d", sep, LEVELS[level], (int)level);
        sep = ", ";
    }
    const char *name = bt_event_class_get_name(ec);
    fputs(sep, o);
    fputs("\"name\": ", o);
    if (name)
        json_string(o, name, strlen(name));
    else
        fputs("null", o);
    const bt_packet *pkt = bt_event_borrow_packet_const(ev);
    if (pkt) scope(o, "packet_context", bt_packet_borrow_context_field_const(pkt));
    scope(o, "context", bt_event_borrow_common_context_field_const(ev));
    scope(o, "specific_context", bt_event_borrow_specific_context_field_const(ev));
    scope(o, "fields", bt_event_borrow_payload_field_const(ev));
    fputs("}\n", o);
}

static bt_component_class_initialize_method_status ndjson_init(
    bt_self_component_sink *self, bt_self_component_sink_configuration *config,
    const bt_value *params, void *init_data) {
    (void)config;
    (void)params;
    (void)init_data;
    struct ndjson *s = calloc(1, sizeof *s);
    if (!s) return BT_COMPONENT_CLASS_INITIALIZE_METHOD_STATUS_MEMORY_ERROR;
    bt_self_component_set_data(bt_self_component_sink_as_self_component(self), s);
    if (bt_self_component_sink_add_input_port(self, "in", NULL, NULL) !=
        BT_SELF_COMPONENT_ADD_PORT_STATUS_OK)
        return BT_COMPONENT_CLASS_INITIALIZE_METHOD_STATUS_ERROR;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    return BT_COMPONENT_CLASS_INITIALIZE_METHOD_STATUS_OK;
}

static void ndjson_finalize(bt_self_component_sink *self) {
    struct ndjson *s = bt_self_component_get_data(bt_self_component_sink_as_self_component(self));
    fflush(stdout);
    if (s) {
        bt_message_iterator_put_ref(s->iter);
        free(s);
    }
}

static bt_component_class_sink_graph_is_configured_method_status ndjson_configured(
    bt_self_component_sink *self) {
    struct ndjson *s = bt_self_component_get_data(bt_self_component_sink_as_self_component(self));
    bt_self_component_port_input *port = bt_self_component_sink_borrow_input_port_by_index(self, 0);
    if (bt_message_iterator_create_from_sink_component(self, port, &s->iter) !=
        BT_MESSAGE_ITERATOR_CREATE_FROM_SINK_COMPONENT_STATUS_OK)
        return BT_COMPONENT_CLASS_SINK_GRAPH_IS_CONFIGURED_METHOD_STATUS_ERROR;
    return BT_COMPONENT_CLASS_SINK_GRAPH_IS_CONFIGURED_METHOD_STATUS_OK;
}

static bt_component_class_sink_consume_method_status ndjson_consume(bt_self_component_sink *self) {
    struct ndjson *s = bt_self_component_get_data(bt_self_component_sink_as_self_component(self));
    bt_message_array_const msgs;
    uint64_t count = 0;
    switch (bt_message_iterator_next(s->iter, &msgs, &count)) {
    case BT_MESSAGE_ITERATOR_NEXT_STATUS_END:
        fflush(stdout);
        return BT_COMPONENT_CLASS_SINK_CONSUME_METHOD_STATUS_END;
    case BT_MESSAGE_ITERATOR_NEXT_STATUS_AGAIN:
        return BT_COMPONENT_CLASS_SINK_CONSUME_METHOD_STATUS_AGAIN;
    case BT_MESSAGE_ITERATOR_NEXT_STATUS_MEMORY_ERROR:
        return BT_COMPONENT_CLASS_SINK_CONSUME_METHOD_STATUS_MEMORY_ERROR;
    case BT_MESSAGE_ITERATOR_NEXT_STATUS_OK:
        break;
    default:
        return BT_COMPONENT_CLASS_SINK_CONSUME_METHOD_STATUS_ERROR;
    }
    for (uint64_t i = 0; i < count; i++) {
        if (bt_message_get_type(msgs[i]) == BT_MESSAGE_TYPE_EVENT) event(stdout, msgs[i]);
        bt_message_put_ref(msgs[i]);
    }
    return BT_COMPONENT_CLASS_SINK_CONSUME_METHOD_STATUS_OK;
}

BT_PLUGIN_MODULE();
BT_PLUGIN(tracecar);
BT_PLUGIN_DESCRIPTION("tracecar: events as NDJSON");
BT_PLUGIN_SINK_COMPONENT_CLASS(ndjson, ndjson_consume);
BT_PLUGIN_SINK_COMPONENT_CLASS_INITIALIZE_METHOD(ndjson, ndjson_init);
BT_PLUGIN_SINK_COMPONENT_CLASS_FINALIZE_METHOD(ndjson, ndjson_finalize);
BT_PLUGIN_SINK_COMPONENT_CLASS_GRAPH_IS_CONFIGURED_METHOD(ndjson, ndjson_configured);
