// `token_mint`: Outpost's example auth plugin, in JavaScript.
//
// The scheme (plugins-sdk/EXAMPLE.md) mints a bearer token from a token endpoint with an
// API key, caches it in the shared key-value store, sends it as `Bearer <token>`, and
// drops it when the upstream answers 401 so the host retries with a fresh one. It uses
// every capability a plugin can be granted: a secret, key-value state and outbound HTTP.
//
// How componentize-js maps the `outpost:auth/module` world onto JavaScript:
// - exports are the camelCase functions below (`validate-config` → `validateConfig`);
// - a `result<T, error>` export returns `T` for `ok`; *throwing* makes it `err`: the
//   thrown value's own `payload` property (or a thrown non-`Error` value itself) is
//   lowered as the `error` variant, `{ tag: 'config', val: '...' }` (see `OutpostError`
//   below); an `Error` without `payload` would trap the instance instead;
// - an imported `result<T, string>` (kv, http) returns `T` on `ok` and throws on `err`,
//   with the error string as the thrown value's `payload`;
// - records are plain objects with camelCase fields, enums are their kebab-case case
//   names as strings, `option<T>` is `T | undefined`, `list<u8>` is a `Uint8Array`,
//   `u64` is a `BigInt`.

import { get as getSecret } from 'outpost:auth/secrets@0.1.0';
import * as kv from 'outpost:auth/kv@0.1.0';
import { send } from 'outpost:auth/http@0.1.0';
import { log } from 'outpost:auth/log@0.1.0';

const WHO = 'token_mint';
const KEYS = ['mint_url', 'api_key_env', 'redis_key', 'header', 'ttl_seconds'];
const DEFAULT_HEADER = 'Authorization';
const DEFAULT_TTL_SECONDS = 300n;
const MINT_TIMEOUT_MS = 5000;

const U64_MAX = (1n << 64n) - 1n;

const encoder = new TextEncoder();
/** Strict UTF-8 (a BOM is kept, so JSON.parse refuses it, as serde_json does). */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
/** Lossy UTF-8 (U+FFFD for bad bytes, BOM kept), for a cached token. */
const lossyUtf8 = new TextDecoder('utf-8', { ignoreBOM: true });

// ---------------------------------------------------------------------------------------
// Errors: the WIT `error` variant.

/**
 * Thrown to make an export return `err(error)`. componentize-js lowers the thrown
 * value's `payload` as the `error` variant: `{ tag: 'config' | 'unavailable' |
 * 'internal', val: message }`.
 */
class OutpostError extends Error {
  constructor(tag, message) {
    super(message);
    this.name = 'OutpostError';
    this.payload = { tag, val: message };
  }
}

/** The configuration is wrong: at load time the provider is marked unusable (503). */
const configError = (message) => new OutpostError('config', `${WHO}: ${message}`);
/** No credential right now (mint endpoint down, state store failing…): 502. */
const unavailable = (message) => new OutpostError('unavailable', `${WHO}: ${message}`);
/** Anything else: 502. */
const internal = (message) => new OutpostError('internal', `${WHO}: ${message}`);

/**
 * Run an export body; anything thrown that is not already an `OutpostError` (a bug, an
 * engine error) becomes `error::internal`, so the host always gets a well-formed
 * variant and the message names this module.
 */
function guarded(body) {
  try {
    return body();
  } catch (err) {
    if (err instanceof OutpostError) throw err;
    throw internal(String(err?.message ?? err));
  }
}

/** The message of an error thrown by an imported `result<_, string>` function. */
const importError = (err) => String(err?.payload ?? err?.message ?? err);

// ---------------------------------------------------------------------------------------
// JSON with integers as the Rust implementation sees them.

/**
 * A number in parsed JSON, with its source text. `JSON.parse` turns `60`, `60.0` and
 * `6e1` into the same double, but only `60` is an integer for the Rust and Python
 * implementations (serde_json's `as_u64`, Python's `int`), so the text decides.
 */
class JsonNumber {
  constructor(value, source) {
    this.value = value;
    this.source = source;
  }

  /** The value as a `BigInt` when the source is an integer in 1..=2^64-1, else `undefined`. */
  positiveU64() {
    if (!/^(0|[1-9][0-9]*)$/.test(this.source)) return undefined;
    const n = BigInt(this.source);
    return n >= 1n && n <= U64_MAX ? n : undefined;
  }
}

/**
 * `JSON.parse`, with every number wrapped in a `JsonNumber` (the reviver's third
 * argument gives the source text: JSON.parse source text access, in SpiderMonkey).
 */
function parseJson(text) {
  return JSON.parse(text, (_key, value, context) =>
    typeof value === 'number' ? new JsonNumber(value, context?.source ?? String(value)) : value,
  );
}

const isMap = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

// ---------------------------------------------------------------------------------------
// Configuration.

const isAbsent = (value) => value === undefined || value === null;

/** Edit distance between two strings, in code points. */
function levenshtein(a, b) {
  const [x, y] = [Array.from(a), Array.from(b)];
  let previous = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const current = [i];
    for (let j = 1; j <= y.length; j++) {
      const substitution = previous[j - 1] + (x[i - 1] === y[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j] + 1, current[j - 1] + 1, substitution));
    }
    previous = current;
  }
  return previous[y.length];
}

/**
 * ` (did you mean 'header'?)` for a likely typo: the closest known key within edit
 * distance 3, ties broken alphabetically — the same hint as the Rust SDK's
 * `Config::allow_only` (and the Python example), so all three report typos alike.
 */
function didYouMean(key) {
  let best;
  for (const known of KEYS) {
    const distance = levenshtein(known, key);
    if (distance > 3) continue;
    if (!best || distance < best.distance || (distance === best.distance && known < best.known)) {
      best = { distance, known };
    }
  }
  return best ? ` (did you mean '${best.known}'?)` : '';
}

/**
 * Parse and check the `config:` map the host passes as JSON text. Returns the settings
 * with defaults applied. The secret is not read here (see `apiKey`).
 */
function parseConfig(text) {
  let map;
  try {
    map = parseJson(text);
  } catch (err) {
    throw configError(`config is not valid JSON: ${err.message}`);
  }
  if (!isMap(map)) throw configError('config must be a map.');

  // Refuse unknown keys, so a typo in the YAML shows at load time.
  for (const key of Object.keys(map)) {
    if (!KEYS.includes(key)) {
      throw configError(
        `unknown config key '${key}'${didYouMean(key)}; expected one of: ${KEYS.join(', ')}.`,
      );
    }
  }

  /** An optional string: absent/null → `undefined`, another type → error. */
  const optionalString = (key) => {
    const value = map[key];
    if (isAbsent(value)) return undefined;
    if (typeof value !== 'string') throw configError(`'${key}' must be a string.`);
    return value;
  };
  /** A required, non-empty string. */
  const requiredString = (key) => {
    const value = optionalString(key);
    if (!value) throw configError(`'${key}' config field is required.`);
    return value;
  };

  const mintUrl = requiredString('mint_url');
  const apiKeyEnv = requiredString('api_key_env');
  const redisKey = requiredString('redis_key');
  const header = optionalString('header') ?? DEFAULT_HEADER;

  let ttlSeconds = DEFAULT_TTL_SECONDS;
  if (!isAbsent(map.ttl_seconds)) {
    ttlSeconds = map.ttl_seconds instanceof JsonNumber ? map.ttl_seconds.positiveU64() : undefined;
    if (ttlSeconds === undefined) throw configError(`'ttl_seconds' must be an integer >= 1.`);
  }

  return { mintUrl, apiKeyEnv, redisKey, header, ttlSeconds };
}

/** The API key: the secret named by `api_key_env`, which must be set and non-empty. */
function apiKey(cfg) {
  const value = getSecret(cfg.apiKeyEnv);
  if (!value) throw configError(`env var '${cfg.apiKeyEnv}' is not set or empty.`);
  return value;
}

// ---------------------------------------------------------------------------------------
// Key-value state. Every failure of the store is `unavailable("token_mint: state: …")`.

function stateCall(call) {
  try {
    return call();
  } catch (err) {
    throw unavailable(`state: ${importError(err)}`);
  }
}

/** The cached token (whatever is stored, decoded leniently), or `undefined`. */
function cachedToken(cfg) {
  const bytes = stateCall(() => kv.get(cfg.redisKey));
  return bytes === undefined ? undefined : lossyUtf8.decode(bytes);
}

// ---------------------------------------------------------------------------------------
// Minting.

/** POST to `mint_url` and cache the token it returns. */
function mintToken(cfg) {
  const key = apiKey(cfg);
  let resp;
  try {
    resp = send({
      method: 'POST',
      url: cfg.mintUrl,
      headers: [
        { name: 'content-type', value: encoder.encode('application/json') },
        { name: 'x-api-key', value: encoder.encode(key) },
      ],
      body: encoder.encode('{"scope":"outpost"}'),
      timeoutMs: MINT_TIMEOUT_MS,
    });
  } catch (err) {
    throw unavailable(`mint failed: ${importError(err)}`);
  }
  if (resp.status !== 200) throw unavailable(`mint answered ${resp.status}`);

  const { token, expiresIn } = parseMintResponse(resp.body);
  // min(expires_in, ttl_seconds) × 1000 ms, saturating at u64::MAX like the Rust version.
  const seconds = expiresIn < cfg.ttlSeconds ? expiresIn : cfg.ttlSeconds;
  const ttlMs = seconds * 1000n > U64_MAX ? U64_MAX : seconds * 1000n;
  stateCall(() => kv.set(cfg.redisKey, encoder.encode(token), ttlMs));
  log('debug', `${WHO}: minted a token, cached for ${seconds}s`);
  return token;
}

/**
 * `{ "token": <non-empty string>, "expires_in": <integer >= 1>, ... }`; anything else is
 * `unavailable("token_mint: mint response has no token")`.
 */
function parseMintResponse(body) {
  const noToken = () => unavailable('mint response has no token');
  let json;
  try {
    json = parseJson(strictUtf8.decode(body));
  } catch {
    throw noToken();
  }
  if (!isMap(json)) throw noToken();
  const { token, expires_in: expiresIn } = json;
  if (typeof token !== 'string' || token === '') throw noToken();
  const seconds = expiresIn instanceof JsonNumber ? expiresIn.positiveU64() : undefined;
  if (seconds === undefined) throw noToken();
  return { token, expiresIn: seconds };
}

// ---------------------------------------------------------------------------------------
// Requests.

/**
 * Set header `name` to `value`, replacing every header of that name (ASCII
 * case-insensitive) so an agent can never smuggle a second credential: the first one
 * keeps its position (and takes the configured spelling), the others are dropped; with
 * none, the header is appended.
 */
function setHeader(headers, name, value) {
  const lower = name.toLowerCase();
  const out = [];
  let placed = false;
  for (const h of headers) {
    if (h.name.toLowerCase() !== lower) {
      out.push(h);
    } else if (!placed) {
      out.push({ name, value });
      placed = true;
    }
  }
  if (!placed) out.push({ name, value });
  return out;
}

// ---------------------------------------------------------------------------------------
// The exports of the `module` world.

/**
 * `validate-config`: check the keys, their types and that the API-key secret is set.
 * The module never needs request bodies and wants to see error responses (for 401).
 */
export function validateConfig(config) {
  return guarded(() => {
    apiKey(parseConfig(config));
    return { bodyAccess: 'none', responseHook: 'errors' };
  });
}

/**
 * `sign-request`: the cached token, else a freshly minted (and cached) one, sent as
 * `<header>: Bearer <token>`. Nothing else in the request changes.
 */
export function signRequest(config, req) {
  return guarded(() => {
    const cfg = parseConfig(config);
    const token = cachedToken(cfg) ?? mintToken(cfg);
    return {
      ...req,
      headers: setHeader(req.headers, cfg.header, encoder.encode(`Bearer ${token}`)),
      body: undefined, // `none`: the body is unchanged
    };
  });
}

/**
 * `on-response` (error responses only): a 401 means the token was rejected, so drop it
 * and ask the host to retry once; the retry mints a fresh token.
 */
export function onResponse(config, resp) {
  return guarded(() => {
    if (resp.status !== 401) return 'accept';
    const cfg = parseConfig(config);
    stateCall(() => kv.delete(cfg.redisKey));
    log('debug', `${WHO}: upstream answered 401; dropped the cached token`);
    return 'retry';
  });
}
