// message-broker.js: the broker's protocol for web pages, over its WebSocket (`/ws`).
//
// The same JSON-RPC 2.0 methods a Python client sends over TCP, one message per text
// frame, so a page speaks what a program speaks:
//
//   import { connect } from "http://127.0.0.1:8080/message-broker.js";
//   const client = await connect("dashboard", { token });
//   await client.subscribe(["sensors.#"], (msg) => console.log(msg.topic, msg.payload));
//   await client.publish("sensors.temp", { value: 21.5 });
//   const reply = await client.request("jobs.status", { id: 7 }, { timeout: 5 });
//   client.close();
//
// The token is the broker's (`message-broker serve` prints the page's address with
// it). A WebSocket session always needs it: any site could open one to 127.0.0.1.
// An ES module with no dependencies and no build step; the broker serves it at
// `/message-broker.js`.

export const CLIENT_TYPE = "javascript";

/** A call the broker refused: `code` is the broker's error code (e.g. -32003). */
export class BrokerError extends Error {
  constructor(code, message, data) {
    super(message);
    this.name = "BrokerError";
    this.code = code;
    this.data = data;
  }
}

/** Error codes, as the broker's README lists them. */
export const ErrorCode = Object.freeze({
  TIMEOUT: -32002,
  NO_RESPONDERS: -32003,
  MESSAGE_TOO_LARGE: -32004,
  SHUTTING_DOWN: -32007,
  UNAUTHORIZED: -32013,
  PERMISSION_DENIED: -32014,
  RESPONDER_ERROR: -32015,
  CHANNEL_FULL: -32016,
});

/** True when `topic` matches `pattern` (`*` or `+`: one segment, `#`: the rest, or none). */
export function matches(pattern, topic) {
  const p = pattern.split(".");
  const t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === "#") return true;
    if (i >= t.length) return false;
    if (p[i] !== "*" && p[i] !== "+" && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

/** A message as subscribers receive it. */
export class Message {
  constructor(client, params) {
    this.topic = params.topic;
    this.payload = params.payload;
    this.sender = params.sender;
    this.id = params.id;
    this.timestamp = params.timestamp;
    this.replyTo = params.reply_to ?? null;
    this.headers = params.headers ?? null;
    this.retained = params.retained === true;
    this._client = client;
  }

  /** Answers a request with `payload`. */
  respond(payload) {
    if (!this.replyTo) throw new Error("this message is not a request: it has no reply address");
    return this._client.publish(this.replyTo, payload);
  }
}

/** Patterns subscribed together, with their callback. */
export class Subscription {
  constructor(client, patterns, callback) {
    this.patterns = patterns;
    this.callback = callback;
    this._client = client;
  }

  /** Stops the callback and unsubscribes the patterns no other subscription holds. */
  async unsubscribe() {
    await this._client._unsubscribe(this);
  }
}

export class BrokerClient {
  /**
   * @param {string} clientId the name other clients see as `sender`.
   * @param {{url?: string, token?: string, timeout?: number}} options `url` defaults
   *   to this page's broker (`ws://<host>/ws`); `timeout` (seconds) bounds every call.
   */
  constructor(clientId, options = {}) {
    if (typeof clientId !== "string" || clientId.length === 0) {
      throw new TypeError("clientId must be a non-empty string");
    }
    this.clientId = clientId;
    this.url = options.url ?? defaultUrl();
    this.token = options.token ?? null;
    this.timeout = options.timeout ?? 10;
    this.onclose = null;
    this._socket = null;
    this._nextId = 1;
    this._pending = new Map();
    this._subscriptions = new Set();
  }

  get isConnected() {
    return this._socket !== null && this._socket.readyState === WebSocket.OPEN;
  }

  /** Opens the WebSocket and connects; rejects with a BrokerError for a wrong token. */
  async connect() {
    const socket = new WebSocket(this.url);
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = () => reject(new Error(`cannot open ${this.url}`));
    });
    this._socket = socket;
    socket.onmessage = (event) => this._receive(event.data);
    socket.onclose = (event) => this._closed(event);
    socket.onerror = null;
    const params = { client_id: this.clientId, client_type: CLIENT_TYPE };
    if (this.token) params.token = this.token;
    return this._call("connect", params);
  }

  /** Publishes `payload` (any JSON value) on `topic`; resolves with the broker's answer. */
  publish(topic, payload, { qos = 0, retain = false, ttl = 0, headers = null } = {}) {
    const params = { topic, payload };
    if (qos) params.qos = qos;
    if (retain) params.retain = true;
    if (ttl) params.ttl = ttl;
    if (headers) params.headers = headers;
    return this._call("publish", params);
  }

  /**
   * Calls `callback(message)` for every message on `patterns`. `passive`: never
   * counts as a responder (a monitor); `noLocal`: skips this client's own messages.
   */
  async subscribe(patterns, callback, { passive = false, noLocal = false } = {}) {
    if (typeof patterns === "string") patterns = [patterns];
    if (typeof callback !== "function") throw new TypeError("callback must be a function");
    const params = { patterns };
    if (passive) params.passive = true;
    if (noLocal) params.no_local = true;
    await this._call("subscribe", params);
    const subscription = new Subscription(this, patterns, callback);
    this._subscriptions.add(subscription);
    return subscription;
  }

  /** Sends a request and resolves with the reply's payload; rejects with a BrokerError
   * (NO_RESPONDERS at once when nobody listens, TIMEOUT after `timeout` seconds). */
  request(topic, payload, { timeout = 5, headers = null } = {}) {
    const params = { topic, payload, timeout };
    if (headers) params.headers = headers;
    return this._call("request", params, timeout + this.timeout);
  }

  /** The broker's status document. */
  status() {
    return this._call("status", {});
  }

  /** Says goodbye and closes the WebSocket. */
  async close() {
    if (!this.isConnected) return;
    try {
      await this._call("disconnect", {});
    } catch {
      // Closing anyway.
    }
    this._socket.close();
  }

  async _unsubscribe(subscription) {
    this._subscriptions.delete(subscription);
    const held = new Set([...this._subscriptions].flatMap((s) => s.patterns));
    const patterns = subscription.patterns.filter((p) => !held.has(p));
    if (patterns.length > 0 && this.isConnected) await this._call("unsubscribe", { patterns });
  }

  _call(method, params, timeout = this.timeout) {
    if (!this.isConnected) return Promise.reject(new BrokerError(-32001, "not connected"));
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new BrokerError(ErrorCode.TIMEOUT, `${method}: no answer within ${timeout} s`));
      }, timeout * 1000);
      this._pending.set(id, { resolve, reject, timer });
      this._socket.send(JSON.stringify({ jsonrpc: "2.0", method, params, id }));
    });
  }

  _receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.method === "message") {
      this._deliver(frame.params);
      return;
    }
    const pending = frame.id === undefined || frame.id === null ? undefined : this._pending.get(frame.id);
    if (pending === undefined) {
      // An error without an id is the broker's notice before it closes the connection.
      if (frame.error) this._notice = new BrokerError(frame.error.code, frame.error.message, frame.error.data);
      return;
    }
    this._pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (frame.error) {
      pending.reject(new BrokerError(frame.error.code, frame.error.message, frame.error.data));
    } else {
      pending.resolve(frame.result);
    }
  }

  _deliver(params) {
    const message = new Message(this, params);
    for (const subscription of this._subscriptions) {
      if (subscription.patterns.some((p) => matches(p, message.topic))) {
        try {
          subscription.callback(message);
        } catch (error) {
          console.error("message-broker: a subscription callback failed", error);
        }
      }
    }
  }

  _closed(event) {
    const why = this._notice ?? new BrokerError(-32001, `connection closed (${event.code})`);
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(why);
    }
    this._pending.clear();
    this._socket = null;
    if (typeof this.onclose === "function") this.onclose(why);
  }
}

/** Opens a client and connects it. */
export async function connect(clientId, options = {}) {
  const client = new BrokerClient(clientId, options);
  await client.connect();
  return client;
}

function defaultUrl() {
  if (typeof location === "undefined") throw new Error("give the url: ws://127.0.0.1:<http_port>/ws");
  return `ws://${location.host}/ws`;
}
