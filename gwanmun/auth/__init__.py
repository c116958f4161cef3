"""Authentication library for the key-auth, basic-auth and jwt plugins: token and key verification, no proxying.

- ``jwt``: JWT verification (PyJWT + cryptography) with Kong's jwt-plugin semantics, and token extraction.
- ``jwks``: a cached, self-refreshing JWKS client for verifying tokens against an identity provider's keys.
- ``secrets``: password hashing (argon2, bcrypt), API key hashing and comparison, Basic header parsing.

Everything here is built once at config compile time (keys parsed, hashers configured) and is cheap per request.
The reference, with the security rules, is docs/auth.md.
"""
