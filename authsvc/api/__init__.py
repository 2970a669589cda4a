"""Servicers: proto messages in, calls on the core, proto messages out."""
