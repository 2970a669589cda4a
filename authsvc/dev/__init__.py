"""The embedded default: a local issuer and JWKS so authsvc runs with no Supabase project."""

from authsvc.dev.issuer import DEV_ISSUER, DevIssuer, serve_jwks

__all__ = ["DEV_ISSUER", "DevIssuer", "serve_jwks"]
