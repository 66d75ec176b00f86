// Server-Sent Events read with fetch() and a stream reader: EventSource cannot send an Authorization header, and
// the token must not go in the URL. Reconnects with Last-Event-ID (the server resumes from there), backing off
// from 1 s to 30 s; stops for good on a 4xx (the token or the request is wrong: retrying cannot help).

import { ApiError, apiUrl, authHeaders, errorFrom } from "./api.js";

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30000;

export class EventStream {
  // onEvent(type, data, id); onState("open" | "reconnecting" | "failed" | "ended", error?);
  // isLast(type, data): true when this event ends the stream on purpose (a job's terminal state).
  constructor(path, { params = {}, onEvent, onState = () => {}, isLast = () => false }) {
    this.url = apiUrl(path, params);
    this.onEvent = onEvent;
    this.onState = onState;
    this.isLast = isLast;
    this.lastEventId = null;
    this.closed = false;
    this.finished = false;
    this.retryMs = FIRST_RETRY_MS;
    this.abort = null;
    this.wake = null;
    this.run();
  }

  close() {
    this.closed = true;
    if (this.abort) this.abort.abort();
    if (this.wake) this.wake();
  }

  async run() {
    while (!this.closed) {
      this.abort = new AbortController();
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
        const response = await fetch(this.url, {
          headers,
          signal: this.abort.signal,
          cache: "no-store",
          credentials: "omit",
        });
        if (!response.ok) {
          const error = await errorFrom(response);
          if (response.status < 500) {
            this.onState("failed", error);
            return;
          }
          throw error;
        }
        this.onState("open");
        this.retryMs = FIRST_RETRY_MS;
        await this.read(response.body);
        if (this.finished || this.closed) {
          if (!this.closed) this.onState("ended");
          return;
        }
        this.onState("reconnecting", new ApiError(0, "The stream closed; reconnecting"));
      } catch (err) {
        if (this.closed) return;
        this.onState("reconnecting", err instanceof ApiError ? err : new ApiError(0, "The server cannot be reached"));
      }
      await this.pause(this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
    }
  }

  pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let fields = { event: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (fields.data.length) this.dispatch(fields);
          fields = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue; // keep-alive
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "data") fields.data.push(text);
        else if (name === "event") fields.event = text;
        else if (name === "id") fields.id = text;
      }
    }
  }

  dispatch(fields) {
    if (fields.id !== null) this.lastEventId = fields.id;
    let data;
    try {
      data = JSON.parse(fields.data.join("\n"));
    } catch {
      return;
    }
    if (fields.event === "error") {
      // The server ends the stream after this (e.g. the watcher fell behind); resuming picks up from lastEventId.
      this.onState("reconnecting", new ApiError(0, data.error || "The stream failed"));
      return;
    }
    this.onEvent(fields.event, data, fields.id);
    if (this.isLast(fields.event, data)) this.finished = true;
  }
}
