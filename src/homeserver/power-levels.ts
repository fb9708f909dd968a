/**
 * m.room.power_levels: validation of the content, the effective levels (with the spec's defaults
 * when keys or the whole event are missing) and the rule that nobody raises or lowers anything
 * above their own level.
 */
import { z } from 'zod';

import { fail } from '../lib/errors.js';

const level = z.number().int().min(-(2 ** 53) + 1).max(2 ** 53 - 1);

/** What a power_levels event may contain (room versions ≥ 10 demand integers). */
export const powerLevelsContent = z.object({
  users: z.record(z.string(), level).optional(),
  users_default: level.optional(),
  events: z.record(z.string(), level).optional(),
  events_default: level.optional(),
  state_default: level.optional(),
  ban: level.optional(),
  kick: level.optional(),
  redact: level.optional(),
  invite: level.optional(),
  notifications: z.record(z.string(), level).optional(),
});

export interface PowerLevels {
  users: Record<string, number>;
  users_default: number;
  events: Record<string, number>;
  events_default: number;
  state_default: number;
  ban: number;
  kick: number;
  redact: number;
  invite: number;
}

const TOP_LEVEL_KEYS = ['users_default', 'events_default', 'state_default', 'ban', 'kick', 'redact', 'invite'] as const;

/**
 * The levels in force. Without a power_levels event the creator has 100, everyone else 0, and
 * every event needs 0 (spec auth rules); with one, missing keys take the spec defaults.
 */
export function effectiveLevels(content: Record<string, unknown> | undefined, creator: string): PowerLevels {
  if (!content) {
    return {
      users: { [creator]: 100 },
      users_default: 0,
      events: {},
      events_default: 0,
      state_default: 0,
      ban: 50,
      kick: 50,
      redact: 50,
      invite: 0,
    };
  }
  const parsed = powerLevelsContent.safeParse(content);
  const c = parsed.success ? parsed.data : {};
  return {
    users: c.users ?? {},
    users_default: c.users_default ?? 0,
    events: c.events ?? {},
    events_default: c.events_default ?? 0,
    state_default: c.state_default ?? 50,
    ban: c.ban ?? 50,
    kick: c.kick ?? 50,
    redact: c.redact ?? 50,
    invite: c.invite ?? 0,
  };
}

export function userLevel(pl: PowerLevels, userId: string): number {
  return pl.users[userId] ?? pl.users_default;
}

export function requiredLevel(pl: PowerLevels, type: string, isState: boolean): number {
  return pl.events[type] ?? (isState ? pl.state_default : pl.events_default);
}

/** The defaults `createRoom` writes. */
export function defaultPowerLevels(creator: string): Record<string, unknown> {
  return {
    users: { [creator]: 100 },
    users_default: 0,
    events: {
      'm.room.name': 50,
      'm.room.power_levels': 100,
      'm.room.history_visibility': 100,
      'm.room.canonical_alias': 50,
      'm.room.avatar': 50,
      'm.room.tombstone': 100,
      'm.room.server_acl': 100,
      'm.room.encryption': 100,
    },
    events_default: 0,
    state_default: 50,
    ban: 50,
    kick: 50,
    redact: 50,
    invite: 0,
    historical: 100,
    notifications: { room: 50 },
  };
}

/**
 * The spec's power-levels change rule: every changed level, old and new, must be at most the
 * sender's; another user's entry may only change while it is below the sender's level.
 */
export function checkPowerLevelsChange(
  old: PowerLevels,
  next: Record<string, unknown>,
  sender: string,
  senderLevel: number,
): void {
  const parsed = powerLevelsContent.safeParse(next);
  if (!parsed.success) throw fail.badJson('Invalid power levels content: levels must be integers');
  const n = effectiveLevels(parsed.data, sender);
  const tooHigh = (a: number | undefined, b: number | undefined) =>
    a !== b && ((a ?? -Infinity) > senderLevel || (b ?? -Infinity) > senderLevel);
  for (const key of TOP_LEVEL_KEYS) {
    if (tooHigh(old[key], n[key])) throw fail.forbidden(`You cannot change ${key} above your own level`);
  }
  for (const type of new Set([...Object.keys(old.events), ...Object.keys(n.events)])) {
    if (tooHigh(old.events[type], n.events[type])) {
      throw fail.forbidden('You cannot change an event level above your own');
    }
  }
  for (const user of new Set([...Object.keys(old.users), ...Object.keys(n.users)])) {
    const before = old.users[user];
    const after = n.users[user];
    if (before === after) continue;
    if (tooHigh(before, after)) throw fail.forbidden('You cannot give a level above your own');
    if (user !== sender && before !== undefined && before >= senderLevel) {
      throw fail.forbidden('You cannot change the level of a user at or above your own');
    }
  }
}
