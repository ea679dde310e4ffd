"""How the service speaks HTTP: the app class, the envelope, errors, schemas, OpenAPI, the access log and views."""
