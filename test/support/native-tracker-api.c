/*
 * Test module for proxy/native/tracker.c: its functions as N-API bindings (trackerNew, trackerCommand,
 * trackerServerPacket, trackerState, classifyStatement) for test/unit/native-tracker.test.ts, which
 * builds this file with tracker.c (test/support/native-build.ts) and compares every answer with the
 * TypeScript reference. Not part of the production module.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <stdlib.h>

#include "../../proxy/native/tracker.h"

/* Tags tracker handles so that another external (the engine's) is refused instead of misread. */
static const napi_type_tag TRACKER_TAG = {0x63646270747261ull, 0x636b65722d763101ull};

static napi_value throw_type(napi_env env, const char *message) {
  napi_throw_type_error(env, NULL, message);
  return NULL;
}

static napi_value throw_failed(napi_env env, const char *what) {
  /* A pending exception (from a failed call) takes precedence. */
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && !pending) napi_throw_error(env, NULL, what);
  return NULL;
}

#define TRY(call)                                                                              \
  do {                                                                                         \
    if ((call) != napi_ok) return throw_failed(env, "cdbp tracker: N-API call failed: " #call); \
  } while (0)

static bool arg_bool(napi_env env, napi_value v, bool *out) {
  napi_valuetype type;
  return napi_typeof(env, v, &type) == napi_ok && type == napi_boolean && napi_get_value_bool(env, v, out) == napi_ok;
}

static bool arg_buffer(napi_env env, napi_value v, const uint8_t **data, size_t *len) {
  bool is = false;
  void *p = NULL;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is || napi_get_buffer_info(env, v, &p, len) != napi_ok) return false;
  *data = p;
  return true;
}

/* An integer number in [0, max]. */
static bool arg_uint(napi_env env, napi_value v, double max, double *out) {
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_number || napi_get_value_double(env, v, out) != napi_ok) return false;
  return *out >= 0 && *out <= max && *out == (double)(uint64_t)*out;
}

static tracker_t *arg_tracker(napi_env env, napi_value v) {
  napi_valuetype type;
  bool tagged = false;
  void *t = NULL;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_external ||
      napi_check_object_type_tag(env, v, &TRACKER_TAG, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, v, &t) != napi_ok || !t) {
    throw_type(env, "cdbp tracker: expected a tracker handle from trackerNew()");
    return NULL;
  }
  return t;
}

static void finalize_tracker(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  tracker_free(data);
}

/* trackerNew(deprecateEof: boolean, cacheMetadata: boolean) -> external */
static napi_value js_tracker_new(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  TRY(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool deprecate_eof, cache_metadata;
  if (argc < 2 || !arg_bool(env, argv[0], &deprecate_eof) || !arg_bool(env, argv[1], &cache_metadata))
    return throw_type(env, "cdbp tracker: trackerNew(deprecateEof: boolean, cacheMetadata: boolean)");
  tracker_t *t = tracker_new(deprecate_eof, cache_metadata);
  if (!t) return throw_failed(env, "cdbp tracker: out of memory");
  napi_value out;
  if (napi_create_external(env, t, finalize_tracker, NULL, &out) != napi_ok) {
    tracker_free(t);
    return throw_failed(env, "cdbp tracker: cannot create the handle");
  }
  TRY(napi_type_tag_object(env, out, &TRACKER_TAG)); /* the finalizer owns t from here */
  return out;
}

/* trackerCommand(h, command: number, rest: Buffer, complete: boolean) -> boolean */
static napi_value js_tracker_command(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  TRY(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) return throw_type(env, "cdbp tracker: trackerCommand(h, command, rest, complete)");
  tracker_t *t = arg_tracker(env, argv[0]);
  if (!t) return NULL;
  double command;
  const uint8_t *rest;
  size_t rest_len;
  bool complete;
  if (!arg_uint(env, argv[1], 255, &command) || !arg_buffer(env, argv[2], &rest, &rest_len) || !arg_bool(env, argv[3], &complete))
    return throw_type(env, "cdbp tracker: trackerCommand(h, command: 0..255, rest: Buffer, complete: boolean)");
  napi_value out;
  TRY(napi_get_boolean(env, tracker_command(t, (int)command, rest, rest_len, complete), &out));
  return out;
}

/* trackerServerPacket(h, prefix: Buffer, length: number) -> boolean */
static napi_value js_tracker_server_packet(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  TRY(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) return throw_type(env, "cdbp tracker: trackerServerPacket(h, prefix, length)");
  tracker_t *t = arg_tracker(env, argv[0]);
  if (!t) return NULL;
  const uint8_t *prefix;
  size_t prefix_len;
  double length;
  if (!arg_buffer(env, argv[1], &prefix, &prefix_len) || !arg_uint(env, argv[2], 4294967295.0, &length))
    return throw_type(env, "cdbp tracker: trackerServerPacket(h, prefix: Buffer, length: uint32)");
  napi_value out;
  TRY(napi_get_boolean(env, tracker_server_packet(t, prefix, prefix_len, (uint32_t)length), &out));
  return out;
}

/* trackerState(h) -> { pending, untracked, preparedCount } */
static napi_value js_tracker_state(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  TRY(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return throw_type(env, "cdbp tracker: trackerState(h)");
  tracker_t *t = arg_tracker(env, argv[0]);
  if (!t) return NULL;
  napi_value out, pending, untracked, prepared;
  TRY(napi_create_object(env, &out));
  TRY(napi_create_double(env, (double)tracker_pending(t), &pending));
  TRY(napi_get_boolean(env, tracker_untracked(t), &untracked));
  TRY(napi_create_double(env, (double)tracker_prepared_count(t), &prepared));
  TRY(napi_set_named_property(env, out, "pending", pending));
  TRY(napi_set_named_property(env, out, "untracked", untracked));
  TRY(napi_set_named_property(env, out, "preparedCount", prepared));
  return out;
}

/* classifyStatement(text: Buffer, complete: boolean) -> 'read' | 'begin' | 'dml' | 'write' */
static napi_value js_classify_statement(napi_env env, napi_callback_info info) {
  static const char *const names[] = {"read", "begin", "dml", "write"};
  size_t argc = 2;
  napi_value argv[2];
  TRY(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  const uint8_t *text;
  size_t len;
  bool complete;
  if (argc < 2 || !arg_buffer(env, argv[0], &text, &len) || !arg_bool(env, argv[1], &complete))
    return throw_type(env, "cdbp tracker: classifyStatement(text: Buffer, complete: boolean)");
  napi_value out;
  TRY(napi_create_string_latin1(env, names[classify_statement(text, len, complete)], NAPI_AUTO_LENGTH, &out));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"trackerNew", NULL, js_tracker_new, NULL, NULL, NULL, napi_default, NULL},
      {"trackerCommand", NULL, js_tracker_command, NULL, NULL, NULL, napi_default, NULL},
      {"trackerServerPacket", NULL, js_tracker_server_packet, NULL, NULL, NULL, napi_default, NULL},
      {"trackerState", NULL, js_tracker_state, NULL, NULL, NULL, napi_default, NULL},
      {"classifyStatement", NULL, js_classify_statement, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE_INIT() { return init(env, exports); }
