"""Who may call what: transport security, caller identities and roles.

- ``tls.py``: server credentials from certificate files, re-read when they change;
  client credentials for the bundled tools.
- ``identity.py``: the authenticated caller, available to servicers while they run.
- ``policy.py`` (+ ``policy.schema.json``): client certificate names mapped to roles.
- ``tokens.py`` (+ ``keys.py``): bearer tokens for callers without a certificate,
  stored only as hashes.
- ``roles.py``: the one table of which roles may call each method.
- ``guard.py``: the one server interceptor that authenticates and authorizes every call.
- ``certs.py``: a development CA and a certificate per role.
"""
