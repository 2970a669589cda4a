"""authsvc: Supabase token verification and data access over gRPC."""

__version__ = "0.1.0"
