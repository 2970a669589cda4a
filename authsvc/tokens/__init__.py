"""Token verification: the key set and the verification policy."""

from authsvc.tokens.keys import KeySet, VerificationKey
from authsvc.tokens.verifier import TokenVerifier, VerifiedToken

__all__ = ["KeySet", "TokenVerifier", "VerificationKey", "VerifiedToken"]
