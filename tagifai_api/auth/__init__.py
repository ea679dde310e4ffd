"""API keys, identity-provider tokens, and the request check.

Keys: ``python -m tagifai_api keys create --name NAME --role predict|admin`` prints a new key once;
the state store (``TAGIFAI_DATABASE_URL``) keeps only its SHA-256, with its name, role and creation
time, and records each change in its audit log (:mod:`tagifai_api.auth.keys`). Every worker polls
the store every ``TAGIFAI_REGISTRY_POLL_S`` (0.5 s) and re-reads the keys when they changed, so new
keys and revocations need no restart; a request never waits for the store. A worker started while
the store is down serves the keys a worker of its host last read. An old keys file
(``TAGIFAI_API_KEYS_FILE``) is imported into an empty store once.

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. ``TAGIFAI_AUTH`` says what
needs one:

- ``admin`` (default): only views decorated with ``require_role("admin")``; everything else is open.
- ``all``: every route except ``/``, ``/health/*``, ``/metrics`` and the docs (``/docs``,
  ``/openapi.json``) needs a key of any role; ``require_role("admin")`` views need an admin key.
- ``off``: nothing needs a key, admin routes included (an explicit choice, e.g. behind a gateway
  that authenticates; logged as a warning at start).

Tokens: with ``TAGIFAI_OIDC_ISSUER`` and ``TAGIFAI_OIDC_AUDIENCE`` set, a bearer value that is a JWT
(two dots; keys start with ``tagifai_``) is checked against the issuer's published signing keys
(:mod:`tagifai_api.auth.oidc`); its role comes from the ``TAGIFAI_OIDC_ROLES_CLAIM`` claim. Tokens go
in ``Authorization`` only.

Failures answer in the envelope, 401 before 403: no credentials, an unknown key or a token not
accepted is 401 with ``WWW-Authenticate: Bearer`` (also while no admin key exists: the message then
says how to create one); valid credentials whose role is too low are 403; a token while the
provider's keys were never fetched is 503 with ``Retry-After``. The access line and the audit log
record the key's name or the token's subject (``key_name``), never the credential.

Interface for views (:mod:`tagifai_api.auth.guard`)::

    from tagifai_api.auth.guard import require_role, public

    @bp.put("/models/default")
    @require_role("admin")          # below the route decorator; OpenAPI marks it secured by itself
    def set_default(): ...

    @bp.get("/demo")
    @public                         # open in mode ``all`` too (a page a browser loads)
    def demo(): ...

``check_role("admin")`` does the same check inside a view (for a route whose methods differ), and
``g.api_key`` is the :class:`~tagifai_api.auth.keys.ApiKey` or
:class:`~tagifai_api.auth.oidc.TokenIdentity` that passed (both have ``name`` and ``role``; None
where no credentials were needed). ``create_app`` calls :func:`~tagifai_api.auth.guard.init_app`; tests build apps with
``AUTH`` in the config mapping and put keys in the app's store (``DATABASE_URL``).
"""
