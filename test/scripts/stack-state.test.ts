// The hand-off file between `npm start` and `npm run participant`: what the stack writes reads back,
// only its owner may read it (it holds the registration secret), and anything else is refused with
// a message that says what to do.
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { readStackState, type StackState, writeStackState } from '../../scripts/lib/stack-state.js';

const state = (over: Partial<StackState> = {}): StackState => ({
  pid: process.pid,
  homeserver: { url: 'http://127.0.0.1:8008', serverName: 'localhost', registrationSharedSecret: 'shh' },
  agent: { url: 'http://127.0.0.1:8080', metricsUrl: 'http://127.0.0.1:8080/metrics' },
  livekit: { url: 'ws://127.0.0.1:7880', started: true, pid: 4242, netnsHolderPid: 4243 },
  ...over,
});

describe('the local stack state file', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-stack-state-'));
    file = path.join(dir, 'nested', 'stack.json');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads back what the stack wrote, readable by its owner only', () => {
    writeStackState(file, state());
    expect(readStackState(file)).toEqual(state());
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('says how to start a stack when there is none', () => {
    expect(() => readStackState(file)).toThrow(/no local stack found \(.*is missing\): start one with `npm start`/);
  });

  it('refuses a file whose stack is gone', () => {
    // A pid that cannot exist (above the kernel's pid_max).
    writeStackState(file, state({ pid: 2 ** 30 }));
    expect(() => readStackState(file)).toThrow(/is gone: start one with `npm start`/);
  });

  it('refuses a file that is not JSON, or not a state file, naming what is wrong', () => {
    writeStackState(file, state());
    writeFileSync(file, readFileSync(file, 'utf8').slice(0, 20));
    expect(() => readStackState(file)).toThrow(/is not JSON/);
    writeFileSync(file, JSON.stringify({ ...state(), agent: { url: 'not a url' } }));
    expect(() => readStackState(file)).toThrow(/not a state file of `npm start` \(agent\.url: .*agent\.metricsUrl: /);
  });
});
