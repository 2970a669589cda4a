// The baseline authsvc replaces: the token check an app would otherwise run
// itself, as the Supabase-on-Fly guides write it. Express, jsonwebtoken, and
// jwks-rsa with its key cache; HS256 with the legacy secret.
//
//   GET /verify  (Authorization: Bearer <access token>) -> 200 + claims, or 401
//   GET /healthz -> 200 once the JWKS has been fetched
//
// Configuration from the environment: PORT, JWKS_URI, ISSUER, AUDIENCE,
// HS256_SECRET, WORKERS (processes; more than 1 uses node:cluster, which
// spreads connections over the workers the way most deployments do).
"use strict";

const cluster = require("node:cluster");
const express = require("express");
const jwt = require("jsonwebtoken");
const jwksClient = require("jwks-rsa");

const PORT = Number(process.env.PORT || 3000);
const WORKERS = Number(process.env.WORKERS || 1);
const JWKS_URI = process.env.JWKS_URI;
const ISSUER = process.env.ISSUER;
const AUDIENCE = process.env.AUDIENCE || "authenticated";
const HS256_SECRET = process.env.HS256_SECRET;
const JWKS_CACHE_MAX_AGE_MS = 10 * 60 * 1000;
const JWKS_RETRY_MS = 1000;

function serve() {
  const keys = jwksClient({
    jwksUri: JWKS_URI,
    cache: true,
    cacheMaxAge: JWKS_CACHE_MAX_AGE_MS,
    rateLimit: false,
  });
  // Ready once the JWKS has been fetched (and cached); retried until then.
  let ready = false;
  const load = () =>
    keys.getSigningKeys().then(
      () => {
        ready = true;
      },
      (error) => {
        console.error(`jwks fetch failed: ${error.message}`);
        setTimeout(load, JWKS_RETRY_MS);
      },
    );
  load();

  // jsonwebtoken's callback form: it asks for the key by the token's header.
  function keyFor(header, callback) {
    if (header.alg === "HS256") {
      callback(null, HS256_SECRET);
      return;
    }
    keys.getSigningKey(header.kid).then(
      (key) => callback(null, key.getPublicKey()),
      (error) => callback(error),
    );
  }

  const options = {
    algorithms: ["ES256", "RS256", "HS256"],
    issuer: ISSUER,
    audience: AUDIENCE,
  };

  const app = express();
  app.disable("x-powered-by");
  app.get("/healthz", (req, res) => {
    res.status(ready ? 200 : 503).json({ ready });
  });
  app.get("/verify", (req, res) => {
    const header = req.get("authorization") || "";
    const token = header.startsWith("Bearer ") ? header.slice(7) : "";
    jwt.verify(token, keyFor, options, (error, claims) => {
      if (error) {
        res.status(401).json({ error: error.name, message: error.message });
        return;
      }
      res.json(claims);
    });
  });
  app.listen(PORT, "127.0.0.1");
}

if (WORKERS > 1 && cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i += 1) {
    cluster.fork();
  }
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      for (const worker of Object.values(cluster.workers)) {
        worker.kill();
      }
      process.exit(0);
    });
  }
} else {
  serve();
}
