/**
 * Accounts: open and shared-secret registration, password login, whoami, logout, profiles and
 * OpenID tokens (with the federation userinfo endpoint the delegate agent verifies them at).
 */
import { z } from 'zod';

import { fail } from '../../lib/errors.js';
import type { Router } from '../../lib/http.js';
import { macMatches, registrationMac, type Session } from '../accounts.js';
import {
  anyObject,
  body,
  CS,
  optionalBody,
  pathParams,
  queryParams,
  requireSelf,
  type Services,
  userIdSchema,
} from './common.js';

const password = z.string().max(512);
const deviceId = z.string().min(1).max(255);

const registerBody = z.object({
  auth: z.object({ type: z.string(), session: z.string().optional() }).optional(),
  username: z.string().min(1).max(255).optional(),
  password: password.optional(),
  device_id: deviceId.optional(),
  initial_device_display_name: z.string().max(255).optional(),
  inhibit_login: z.boolean().optional(),
});

const adminRegisterBody = z.object({
  nonce: z.string().min(1).max(255),
  username: z.string().min(1).max(255),
  password: password,
  admin: z.boolean().optional(),
  displayname: z.string().max(255).optional(),
  user_type: z.string().max(255).optional(),
  mac: z.string().min(1).max(255),
});

const loginBody = z.object({
  type: z.string(),
  identifier: z.object({ type: z.string(), user: z.string().min(1).max(255).optional() }).optional(),
  user: z.string().min(1).max(255).optional(),
  password: password.optional(),
  device_id: deviceId.optional(),
  initial_device_display_name: z.string().max(255).optional(),
});

const profileField = z.enum(['displayname', 'avatar_url']);

export function registerAccountRoutes(router: Router, s: Services): void {
  const home_server = s.config.server_name;
  const sessionReply = (session: Session) => ({
    body: {
      user_id: session.userId,
      access_token: session.accessToken,
      device_id: session.deviceId,
      home_server,
    },
  });

  router.add('POST', `${CS}/register`, async (ctx) => {
    const { kind } = queryParams(ctx, z.object({ kind: z.enum(['user', 'guest']).optional() }));
    if (kind === 'guest') throw fail.forbidden('Guest access is disabled');
    if (!s.config.open_registration) throw fail.forbidden('Registration has been disabled');
    const req = await body(ctx, registerBody);
    if (req.username !== undefined) s.accounts.checkLocalpart(req.username);
    if (req.auth?.type !== 'm.login.dummy') {
      throw fail.unauthorized('Authentication required', {
        session: 'dummy',
        flows: [{ stages: ['m.login.dummy'] }],
        params: {},
      });
    }
    return sessionReply(
      await s.accounts.register({ localpart: req.username, password: req.password, deviceId: req.device_id }),
    );
  });

  router.add('GET', `${CS}/register/available`, (ctx) => {
    const { username } = queryParams(ctx, z.object({ username: z.string().min(1).max(255) }));
    s.accounts.checkLocalpart(username);
    return { body: { available: true } };
  });

  const adminRegister = '/_synapse/admin/v1/register';
  const requireSecret = (): string => {
    const secret = s.config.registration_shared_secret;
    if (secret === undefined) throw fail.badJson('Shared secret registration is not enabled');
    return secret;
  };
  router.add('GET', adminRegister, () => {
    requireSecret();
    return { body: { nonce: s.accounts.newNonce() } };
  });
  router.add('POST', adminRegister, async (ctx) => {
    const secret = requireSecret();
    const req = await body(ctx, adminRegisterBody);
    if (!s.accounts.takeNonce(req.nonce)) throw fail.invalidParam('unrecognised nonce');
    const expected = registrationMac(secret, {
      nonce: req.nonce,
      username: req.username,
      password: req.password,
      admin: req.admin === true,
      ...(req.user_type !== undefined ? { userType: req.user_type } : {}),
    });
    if (!macMatches(expected, req.mac.toLowerCase())) throw fail.forbidden('HMAC incorrect');
    return sessionReply(
      await s.accounts.register({
        localpart: req.username,
        password: req.password,
        admin: req.admin === true,
        displayname: req.displayname,
      }),
    );
  });

  router.add('GET', `${CS}/login`, () => ({ body: { flows: [{ type: 'm.login.password' }] } }));
  router.add('POST', `${CS}/login`, async (ctx) => {
    const req = await body(ctx, loginBody);
    if (req.type !== 'm.login.password') throw fail.invalidParam('Unsupported login type');
    const user = req.identifier?.user ?? req.user;
    if (user === undefined) throw fail.missingParam('identifier.user is required');
    if (req.identifier && req.identifier.type !== 'm.id.user') throw fail.invalidParam('Unsupported identifier type');
    if (req.password === undefined) throw fail.missingParam('password is required');
    return sessionReply(await s.accounts.login(user, req.password, req.device_id));
  });

  router.add('GET', `${CS}/account/whoami`, (ctx) => {
    const r = s.auth.requester(ctx);
    return { body: { user_id: r.userId, device_id: r.deviceId, is_guest: false } };
  });
  router.add('POST', `${CS}/logout`, async (ctx) => {
    const r = s.auth.requester(ctx);
    await optionalBody(ctx, anyObject);
    s.accounts.logout(r.token);
    return { body: {} };
  });
  router.add('POST', `${CS}/logout/all`, async (ctx) => {
    const r = s.auth.requester(ctx);
    await optionalBody(ctx, anyObject);
    s.accounts.logoutAll(r.userId);
    return { body: {} };
  });

  const profileOf = (userId: string) => {
    const user = s.store.getUser(userId);
    if (!user) throw fail.notFound('Profile not found');
    return {
      ...(user.displayname !== null ? { displayname: user.displayname } : {}),
      ...(user.avatar_url !== null ? { avatar_url: user.avatar_url } : {}),
    };
  };
  router.add('GET', `${CS}/profile/:userId`, (ctx) => {
    const { userId } = pathParams(ctx, z.object({ userId: userIdSchema }));
    return { body: profileOf(userId) };
  });
  router.add('GET', `${CS}/profile/:userId/:field`, (ctx) => {
    const { userId, field } = pathParams(ctx, z.object({ userId: userIdSchema, field: profileField }));
    const value = profileOf(userId)[field];
    if (value === undefined) throw fail.notFound('Profile field not set');
    return { body: { [field]: value } };
  });
  router.add('PUT', `${CS}/profile/:userId/:field`, async (ctx) => {
    const r = s.auth.requester(ctx);
    const { userId, field } = pathParams(ctx, z.object({ userId: userIdSchema, field: profileField }));
    requireSelf(userId, r.userId);
    const req = await body(ctx, z.object({ [field]: z.string().max(1024).nullable() }));
    const value = (req as Record<string, string | null>)[field] ?? null;
    if (field === 'displayname') s.store.setDisplayname(userId, value);
    else s.store.setAvatar(userId, value);
    return { body: {} };
  });

  router.add('POST', `${CS}/user/:userId/openid/request_token`, async (ctx) => {
    const r = s.auth.requester(ctx);
    const { userId } = pathParams(ctx, z.object({ userId: userIdSchema }));
    requireSelf(userId, r.userId);
    await optionalBody(ctx, anyObject);
    const { token, expiresInSeconds } = s.accounts.issueOpenidToken(r.userId);
    return {
      body: {
        access_token: token,
        token_type: 'Bearer',
        matrix_server_name: s.config.server_name,
        expires_in: expiresInSeconds,
      },
    };
  });
  router.add('GET', '/_matrix/federation/v1/openid/userinfo', (ctx) => {
    const token = ctx.query.get('access_token');
    const userId = token ? s.accounts.openidUser(token) : undefined;
    if (userId === undefined) throw fail.unknownToken('Invalid OpenID access token');
    return { body: { sub: userId } };
  });
}
