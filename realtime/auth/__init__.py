"""Who is connecting and what they may do: identities, JWT and JWKS, CouchDB sessions, the
authenticator, expiry, revocation, signed messages and the one-process stores."""
