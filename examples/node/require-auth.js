'use strict';
// Express middleware that asks authsvc to verify the caller's Supabase access
// token: a drop-in for an express-jwt / jsonwebtoken + jwks-rsa middleware.
//
//   before: app.use(expressjwt({ secret: jwksRsa.expressJwtSecret({...}), algorithms: [...] }))
//   after:  app.use(requireAuth(authsvc))
//
// It reads `Authorization: Bearer <token>`, answers 401 (403 for an anonymous
// user when rejectAnonymous is set) with authsvc's reason, and otherwise sets
// `req.auth` to the token's claims (the JWT payload, as jsonwebtoken would
// return it) and `req.authToken` to the token, for DataService calls as that
// user. Failures that are not the user's fault (authsvc unreachable, this
// app's caller key refused) go to next(err) as an AuthsvcError.

const { AuthsvcError } = require('./authsvc');

const BEARER = /^Bearer +([^\s]+) *$/i;

// Refusals of this app rather than of the user's token: a 5xx, never a 401.
const CALLER_REASONS = new Set([
  'CALLER_KEY_MISSING',
  'CALLER_KEY_INVALID',
  'SCOPE_MISSING',
  'NETWORK_NOT_ALLOWED',
]);
// INVALID_ARGUMENT reasons that are about the token the user sent.
const BAD_TOKEN_ARGUMENTS = new Set(['TOKEN_MISSING', 'TOKEN_TOO_LARGE']);

/** The HTTP status for a token refusal, or null for any other failure. */
function refusalStatus(error) {
  if (!(error instanceof AuthsvcError) || CALLER_REASONS.has(error.reason)) {
    return null;
  }
  if (error.codeName === 'UNAUTHENTICATED' && error.reason) {
    return 401;
  }
  if (error.codeName === 'INVALID_ARGUMENT' && BAD_TOKEN_ARGUMENTS.has(error.reason)) {
    return 401;
  }
  if (error.codeName === 'PERMISSION_DENIED' && error.reason === 'ANONYMOUS_NOT_ALLOWED') {
    return 403;
  }
  return null;
}

// RFC 6750: no error code in the challenge when no token was sent.
function refuse(res, status, reason, message) {
  const error = status === 401 ? 'invalid_token' : 'insufficient_scope';
  const challenge =
    reason === 'TOKEN_MISSING' ? 'Bearer' : `Bearer error="${error}", error_description="${reason}"`;
  res.status(status).set('WWW-Authenticate', challenge).json({ error, reason, message });
}

/**
 * `authsvc` is an AuthsvcClient. With `rejectAnonymous`, tokens of anonymous
 * sign-ins get 403 ANONYMOUS_NOT_ALLOWED.
 */
function requireAuth(authsvc, { rejectAnonymous = false } = {}) {
  return async function requireAuthMiddleware(req, res, next) {
    const match = BEARER.exec(req.get('authorization') || '');
    if (!match) {
      // authsvc would say the same; no need to ask it.
      refuse(res, 401, 'TOKEN_MISSING', 'send the access token as "Authorization: Bearer <token>"');
      return;
    }

    let verified;
    try {
      verified = await authsvc.verifyToken(match[1], { rejectAnonymous });
    } catch (error) {
      const status = refusalStatus(error);
      if (status === null) {
        next(error);
      } else {
        refuse(res, status, error.reason, error.message);
      }
      return;
    }

    req.auth = verified.claims;
    req.authToken = match[1];
    next();
  };
}

module.exports = { requireAuth, CALLER_REASONS };
