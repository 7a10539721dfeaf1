// The client's pure parts: what a close code means, the backoff schedule, JWT expiry.
import assert from "node:assert/strict";
import { test } from "node:test";

import { BACKOFF, NOW, STOP, closeAction, jwtExpiry, reconnectDelay } from "../realtime.js";

test("close codes 4000-4099 stop, 4100-4199 back off, 4200-4299 and network loss reconnect now", () => {
  for (const code of [4000, 4001, 4003, 4004, 4008, 4029, 4099]) assert.equal(closeAction(code), STOP, code);
  for (const code of [4100, 4101, 4199]) assert.equal(closeAction(code), BACKOFF, code);
  for (const code of [4200, 4299, 1001, 1005, 1006, 1011, 1012]) assert.equal(closeAction(code), NOW, code);
  for (const code of [1002, 1007, 1009]) assert.equal(closeAction(code), STOP, code);
  assert.equal(closeAction(1000), BACKOFF);
});

test("backoff doubles from 1-2 s to 15-30 s, with equal jitter", () => {
  const low = { random: () => 0 };
  const high = { random: () => 0.999999 };
  const expected = [[1000, 2000], [2000, 4000], [4000, 8000], [8000, 16000], [15000, 30000], [15000, 30000]];
  expected.forEach(([lo, hi], attempt) => {
    assert.equal(reconnectDelay(BACKOFF, attempt, low), lo, `attempt ${attempt} low`);
    assert.ok(reconnectDelay(BACKOFF, attempt, high) <= hi && reconnectDelay(BACKOFF, attempt, high) >= hi - 1,
      `attempt ${attempt} high`);
  });
  assert.equal(reconnectDelay(BACKOFF, 1000, high) <= 30000, true);
});

test("an immediate reconnect waits only its jitter, then backs off if it fails", () => {
  assert.equal(reconnectDelay(NOW, 0, { random: () => 0 }), 0);
  assert.equal(reconnectDelay(NOW, 0, { random: () => 0.5 }), 500);
  assert.ok(reconnectDelay(NOW, 0, { random: () => 0.999999 }) < 1000);
  assert.equal(reconnectDelay(NOW, 0, { random: () => 0.5, jitterMs: 100 }), 50);
  assert.equal(reconnectDelay(NOW, 1, { random: () => 0 }), 1000);
  assert.equal(reconnectDelay(NOW, 2, { random: () => 0 }), 2000);
});

test("the expiry of a JWT is read from its exp claim; anything else has none", () => {
  const body = Buffer.from(JSON.stringify({ sub: "ann", exp: 1767225600 })).toString("base64url");
  assert.equal(jwtExpiry(`e30.${body}.sig`), 1767225600 * 1000);
  assert.equal(jwtExpiry("not-a-jwt"), null);
  assert.equal(jwtExpiry(`e30.${Buffer.from("{}").toString("base64url")}.x`), null);
});
