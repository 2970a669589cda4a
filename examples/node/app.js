'use strict';
// An Express app whose auth and data come from authsvc:
//
//   GET /me     the caller's token claims (requireAuth sets req.auth)
//   GET /notes  the caller's rows of `notes`, selected as that user, so the
//               table's row-level security decides what they see
//
// Configuration: AUTHSVC_TARGET (default localhost:50051), AUTHSVC_KEY (this
// app's caller key, required), HOST (default 127.0.0.1) and PORT (default
// 3000; 0 picks a free port). It prints "listening on http://HOST:PORT".

const express = require('express');

const { AuthsvcClient, AuthsvcError } = require('./authsvc');
const { requireAuth, CALLER_REASONS } = require('./require-auth');

const DEFAULT_HOST = '127.0.0.1';
const DEFAULT_PORT = 3000;
const NOTES_PAGE_SIZE = 50;

// gRPC status -> HTTP status for DataService failures the user can act on.
const HTTP_STATUS = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  FAILED_PRECONDITION: 409,
  RESOURCE_EXHAUSTED: 429,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
};

const authsvc = new AuthsvcClient();
const app = express();

app.get('/me', requireAuth(authsvc), (req, res) => {
  res.json(req.auth);
});

app.get('/notes', requireAuth(authsvc), async (req, res) => {
  const { rows } = await authsvc.select({
    mode: { user_token: req.authToken },
    target: { table: 'notes' },
    columns: ['id', 'body'],
    order: [{ column: 'id' }],
    limit: NOTES_PAGE_SIZE,
  });
  res.json(rows);
});

// Express 5 sends rejected promises of async handlers here.
app.use((error, req, res, next) => {
  if (!(error instanceof AuthsvcError)) {
    next(error);
    return;
  }
  // A refused caller key or missing scope is this app's misconfiguration:
  // log it for the operator, and tell the user only that it failed.
  // Only a refusal of the user's own request is explained to the user;
  // configuration and infrastructure details (caller key, addresses) stay in
  // the log.
  const appFault = CALLER_REASONS.has(error.reason) || !(error.codeName in HTTP_STATUS);
  console.error(`authsvc ${error.codeName} ${error.reason || '-'}: ${error.message}`);
  if (appFault) {
    res.status(500).json({ error: 'INTERNAL' });
    return;
  }
  const status = HTTP_STATUS[error.codeName];
  const explained = status < 500;
  res.status(status).json({
    error: error.codeName,
    ...(explained ? { reason: error.reason, message: error.message } : {}),
  });
});

const host = process.env.HOST || DEFAULT_HOST;
const port = Number(process.env.PORT ?? DEFAULT_PORT);
const server = app.listen(port, host, () => {
  console.log(`listening on http://${host}:${server.address().port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    server.close(() => authsvc.close());
    server.closeAllConnections();
  });
}
