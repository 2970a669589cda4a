'use strict';
// A small authsvc client for Node: VerifyToken and DataService/Select over
// gRPC, with authsvc's refusals turned into AuthsvcError objects that carry
// the gRPC code and the machine-readable reason from google.rpc.ErrorInfo.
//
// The authsvc protos are loaded at run time from the repository's protos/
// (the API reference; set AUTHSVC_PROTO_DIR if you copy this file elsewhere).
// google/rpc/status.proto and error_details.proto, needed to decode the
// `grpc-status-details-bin` trailer, come from the google-proto-files package.

const fs = require('node:fs');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const googleProtoFiles = require('google-proto-files');
const protobuf = require('protobufjs');

const DEFAULT_TARGET = 'localhost:50051';
const DEFAULT_TIMEOUT_MS = 2000;
const PROTO_DIR = process.env.AUTHSVC_PROTO_DIR || path.resolve(__dirname, '../../protos');
if (!fs.existsSync(path.join(PROTO_DIR, 'authsvc/v1/auth.proto'))) {
  throw new Error(
    `authsvc's protos are not in ${PROTO_DIR}: set AUTHSVC_PROTO_DIR to the ` +
      "authsvc repository's protos/ directory",
  );
}
// The directory that holds google/rpc/*.proto.
const GOOGLE_PROTO_DIR = path.dirname(googleProtoFiles.getProtoPath());
const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const ERROR_INFO_TYPE_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

const LOADER_OPTIONS = {
  keepCase: true, // field names as in the .proto: user_token, rows_json
  longs: String, // int64 (affected, count) as exact decimal strings
  enums: String,
  defaults: true, // absent fields read as their proto3 defaults ("", 0, false)
  oneofs: true, // sets `kind` on oneofs, which google.protobuf.Value needs
  includeDirs: [PROTO_DIR],
};

const CHANNEL_OPTIONS = {
  // On Fly, `<app>.internal` resolves to every Machine: use them all.
  'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
  // authsvc accepts client pings every 5 s or more; this notices a dead
  // Machine within 40 s even when no call is in flight.
  'grpc.keepalive_time_ms': 30000,
  'grpc.keepalive_timeout_ms': 10000,
  'grpc.keepalive_permit_without_calls': 1,
};

const { authsvc: authsvcPackage } = grpc.loadPackageDefinition(
  protoLoader.loadSync(['authsvc/v1/auth.proto', 'authsvc/v1/data.proto'], LOADER_OPTIONS),
);

const rpcTypes = new protobuf.Root();
rpcTypes.resolvePath = (_origin, target) =>
  path.isAbsolute(target) ? target : path.join(GOOGLE_PROTO_DIR, target);
rpcTypes.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], {
  keepCase: true,
});
const Status = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfo = rpcTypes.lookupType('google.rpc.ErrorInfo');

const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status).map(([name, code]) => [code, name]),
);

/**
 * A failed authsvc call. `code` is the numeric gRPC status and `codeName` its
 * name ("UNAUTHENTICATED"); `reason`, `domain` and `metadata` come from the
 * google.rpc.ErrorInfo detail (reason is "" when there is none: transport
 * failures such as an unreachable server or a deadline carry no detail).
 */
class AuthsvcError extends Error {
  constructor(serviceError) {
    super(serviceError.details || serviceError.message);
    this.name = 'AuthsvcError';
    this.code = serviceError.code;
    this.codeName = CODE_NAMES[serviceError.code] || String(serviceError.code);
    const info = errorInfo(serviceError.metadata);
    this.reason = info ? info.reason : '';
    this.domain = info ? info.domain : '';
    this.metadata = info ? { ...info.metadata } : {};
  }
}

/** The ErrorInfo in a call's trailers, or null when there is none. */
function errorInfo(metadata) {
  const [details] = metadata ? metadata.get(STATUS_DETAILS_KEY) : [];
  if (!details) {
    return null;
  }
  const status = Status.decode(details);
  const any = status.details.find((detail) => detail.type_url === ERROR_INFO_TYPE_URL);
  return any ? ErrorInfo.toObject(ErrorInfo.decode(any.value), { defaults: true }) : null;
}

/** A google.protobuf.Struct as proto-loader decodes it, as a plain object. */
function structToObject(struct) {
  const fields = (struct && struct.fields) || {};
  return Object.fromEntries(Object.entries(fields).map(([key, value]) => [key, valueToJs(value)]));
}

function valueToJs(value) {
  switch (value.kind) {
    case 'structValue':
      return structToObject(value.structValue);
    case 'listValue':
      return value.listValue.values.map(valueToJs);
    case 'nullValue':
    case undefined:
      return null;
    default:
      return value[value.kind];
  }
}

function timestampToDate(timestamp) {
  return timestamp ? new Date(Number(timestamp.seconds) * 1000 + timestamp.nanos / 1e6) : null;
}

/**
 * One channel to authsvc, shared by AuthService and DataService.
 *
 * `target` defaults to AUTHSVC_TARGET (e.g. "dns:///authsvc.internal:50051"),
 * `key` to AUTHSVC_KEY, this app's caller key; `timeoutMs` is each call's
 * deadline. Pass `credentials` (grpc.credentials.createSsl(...)) for TLS.
 */
class AuthsvcClient {
  constructor({
    target = process.env.AUTHSVC_TARGET || DEFAULT_TARGET,
    key = process.env.AUTHSVC_KEY,
    timeoutMs = DEFAULT_TIMEOUT_MS,
    credentials = grpc.credentials.createInsecure(),
  } = {}) {
    if (!key) {
      throw new Error('AUTHSVC_KEY is not set: every authsvc call needs this app\'s caller key');
    }
    // Not call credentials: gRPC refuses those on a plaintext channel, and
    // 6PN traffic is plaintext gRPC.
    this._key = key;
    this._timeoutMs = timeoutMs;
    this._auth = new authsvcPackage.v1.AuthService(target, credentials, CHANNEL_OPTIONS);
    this._data = new authsvcPackage.v1.DataService(target, credentials, {
      channelOverride: this._auth.getChannel(),
    });
  }

  /**
   * Verifies an end user's access token. Resolves to the VerifyTokenResponse
   * with `claims`, `app_metadata` and `user_metadata` as plain objects and
   * `issued_at`/`expires_at` as Dates; rejects with an AuthsvcError.
   */
  async verifyToken(token, { rejectAnonymous = false } = {}) {
    const response = await this._call(this._auth, 'VerifyToken', {
      token,
      reject_anonymous: rejectAnonymous,
    });
    return {
      ...response,
      claims: structToObject(response.claims),
      app_metadata: structToObject(response.app_metadata),
      user_metadata: structToObject(response.user_metadata),
      issued_at: timestampToDate(response.issued_at),
      expires_at: timestampToDate(response.expires_at),
    };
  }

  /**
   * DataService/Select with a SelectRequest as a plain object (field names as
   * in data.proto). Resolves to { rows, affected, count, truncated }, with
   * affected and count as decimal strings (count null unless asked); `rows`
   * is parsed with JSON.parse, so read int8/numeric columns you need exact as
   * text (cast them in a view) or parse rows_json with a bigint-aware parser.
   */
  async select(request) {
    const response = await this._call(this._data, 'Select', request);
    return {
      rows: JSON.parse(response.rows_json),
      affected: response.affected,
      // `count` is proto3 optional: proto-loader names a set one in `_count`.
      count: response._count === 'count' ? response.count : null,
      truncated: response.truncated,
    };
  }

  close() {
    this._auth.close();
  }

  _call(client, method, request) {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${this._key}`);
    const options = { deadline: Date.now() + this._timeoutMs };
    return new Promise((resolve, reject) => {
      client[method](request, metadata, options, (error, response) => {
        if (error) {
          reject(new AuthsvcError(error));
        } else {
          resolve(response);
        }
      });
    });
  }
}

module.exports = { AuthsvcClient, AuthsvcError, errorInfo, structToObject };
